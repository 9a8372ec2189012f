"""Declared training phases: which optimizer steps on which iteration.

A paper names its phases once (``Gmain``, ``Dmain``, ``Smain``, ...), each with the optimizer
it steps and how often it runs, in the paper's (or official code's) own terms:

- every iteration: ``Phase("Dmain", optimizer=1)``;
- every n-th iteration: ``Phase.every_nth("Gmain", 0, n)`` runs on iterations n-1, 2n-1, ...
  (StarGAN: the generator after every ``n_critic`` critic updates);
- on the iterations another phase skips: ``Phase.except_every_nth("Gmain", 0, n)`` runs when
  ``iteration % n != 0`` (the official DiscoGAN alternation, D on ``iteration % n == 0``);
- n steps per iteration: ``Phase("Dmain", 1, repeats=n)`` (BigGAN's ``num_D_steps``).

The iteration counter lives in :class:`~gan_suite.models.base.GANModule` (one per run, saved in
checkpoints); callbacks that change the regime (BDL's K x N loop) switch phases on and off with
``GANModule.set_phases_enabled`` instead of reaching into a model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a training iteration.

    Attributes:
        name: the phase's name (``Gmain``, ``Dmain``, ...), as the paper's algorithm box says.
        optimizer: index of its optimizer in ``configure_optimizers``' list.
        interval: the phase's period in iterations (1 = every iteration).
        offsets: the residues ``iteration % interval`` on which it runs.
        repeats: optimizer steps per iteration it runs on (n critic steps per G step).

    Raises:
        ValueError: ``interval`` or ``repeats`` below 1, or an offset outside [0, interval).
    """

    name: str
    optimizer: int
    interval: int = 1
    offsets: tuple[int, ...] = (0,)
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.interval < 1 or self.repeats < 1:
            raise ValueError(
                f"phase {self.name!r}: interval={self.interval} and repeats={self.repeats} "
                "must be integers >= 1"
            )
        if not self.offsets or any(not 0 <= o < self.interval for o in self.offsets):
            raise ValueError(
                f"phase {self.name!r}: offsets {self.offsets} must lie in [0, {self.interval})"
            )

    def runs_at(self, iteration: int) -> bool:
        """Whether the phase runs on ``iteration`` (0-based, batches trained before it)."""
        return iteration % self.interval in self.offsets

    @classmethod
    def every_nth(cls, name: str, optimizer: int, n: int) -> Phase:
        """Runs once every ``n`` iterations, after the other phases' first n - 1 (StarGAN's
        ``(i + 1) % n_critic == 0``)."""
        return cls(name, optimizer, interval=n, offsets=(n - 1,))

    @classmethod
    def except_every_nth(cls, name: str, optimizer: int, n: int) -> Phase:
        """Runs on every iteration but each n-th (``i % n != 0``); every iteration when n = 1."""
        if n == 1:
            return cls(name, optimizer)
        return cls(name, optimizer, interval=n, offsets=tuple(range(1, n)))


def check_phases(phases: list[Phase], n_optimizers: int | None) -> dict[str, Phase]:
    """Index ``phases`` by name, checking names are unique and (when ``n_optimizers`` is
    known) that their optimizers exist.

    Raises:
        ValueError: a repeated name or an optimizer index outside [0, n_optimizers).
    """
    out: dict[str, Phase] = {}
    for phase in phases:
        if phase.name in out:
            raise ValueError(f"phase {phase.name!r} is declared twice")
        if n_optimizers is not None and not 0 <= phase.optimizer < n_optimizers:
            raise ValueError(
                f"phase {phase.name!r} steps optimizer {phase.optimizer}, but "
                f"configure_optimizers returns {n_optimizers}"
            )
        out[phase.name] = phase
    return out
