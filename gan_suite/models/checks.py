"""Checks of a run's configuration against the model, before the first training step.

- **Run budget vs. schedules.** A paper's learning-rate schedule is defined over a number of
  epochs or iterations (CycleGAN: ``n_epochs_constant + n_epochs_decay`` epochs; StarGAN:
  ``n_iterations``). A run that outlives it would train at a learning rate of 0 (the factors
  are clipped to [0, 1]), so :func:`check_schedule_budget` refuses it, naming
  ``trainer.max_epochs`` / ``trainer.max_steps`` and the model options with their numbers;
  where the paper itself trains past its schedule's end (cGAN's exponential decay to a floor)
  it warns instead.
- **Input sizes vs. nets.** Each net states the sides it accepts
  (:class:`~gan_suite.nets.sizes.InputSizes`); :func:`check_input_sizes` compares them with
  the sizes the data module declares (``input_sizes()``, option name -> (H, W)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from gan_suite.nets.sizes import InputSizes


@dataclass(frozen=True)
class ScheduleHorizon:
    """The span over which a schedule is defined.

    Attributes:
        what: the schedule, in words (``"CycleGAN's linear learning-rate decay"``).
        unit: ``"epoch"`` or ``"iteration"`` (training batches).
        length: epochs or iterations the schedule is defined for.
        options: the options that set ``length``, with their values
            (``"model.init_args.n_epochs_constant=100 + model.init_args.n_epochs_decay=100"``).
        after: what happens past ``length`` (``"a learning rate of 0"``).
        paper_trains_past: the paper itself trains on past ``length``: warn, do not refuse.
    """

    what: str
    unit: str
    length: int
    options: str
    after: str = "a learning rate of 0"
    paper_trains_past: bool = False


def iteration_budget(trainer: Any) -> tuple[int, str] | None:
    """The smallest ``max_iterations`` of the trainer's callbacks (the suite's IterationBudget,
    which turns ``--trainer.max_steps N`` into N training batches) and the callback's name."""
    found = [
        (int(cb.max_iterations), type(cb).__name__)
        for cb in getattr(trainer, "callbacks", [])
        if isinstance(getattr(cb, "max_iterations", None), int) and cb.max_iterations >= 0
    ]
    return min(found) if found else None


def _batches_per_epoch(trainer: Any) -> int | None:
    n = getattr(trainer, "num_training_batches", math.inf)
    return int(n) if isinstance(n, (int, float)) and math.isfinite(n) else None


def _max_epochs(trainer: Any) -> int | None:
    n = trainer.max_epochs
    return None if n is None or n < 0 else int(n)


def planned_iterations(trainer: Any) -> int | None:
    """Training batches the trainer will run: min(max_epochs x batches per epoch, any
    callback's ``max_iterations``); None when neither bounds the run (``max_epochs=-1`` and no
    budget) or the batches per epoch are not known yet (before the train loader is set up)."""
    bounds = []
    epochs, per_epoch = _max_epochs(trainer), _batches_per_epoch(trainer)
    if epochs is not None and per_epoch is not None:
        bounds.append(epochs * per_epoch)
    budget = iteration_budget(trainer)
    if budget is not None:
        bounds.append(budget[0])
    return min(bounds) if bounds else None


def planned_epochs(trainer: Any) -> int | None:
    """Epochs the trainer will start: ``max_epochs``, or fewer when an iteration budget ends
    the run first (ceil(budget / batches per epoch)); None when unbounded."""
    bounds = []
    epochs = _max_epochs(trainer)
    if epochs is not None:
        bounds.append(epochs)
    budget, per_epoch = iteration_budget(trainer), _batches_per_epoch(trainer)
    if budget is not None and per_epoch:
        bounds.append(-(-budget[0] // per_epoch))
    return min(bounds) if bounds else None


def _budget_source(trainer: Any, unit: str) -> str:
    """Which trainer options give the planned amount, in the user's words."""
    per_epoch, budget = _batches_per_epoch(trainer), iteration_budget(trainer)
    epochs = f"trainer.max_epochs={trainer.max_epochs}"
    if unit == "iteration" and per_epoch is not None and _max_epochs(trainer) is not None:
        epochs += f" x {per_epoch} batches per epoch"
    if budget is not None:
        return f"{epochs}; trainer.max_steps={budget[0]} iterations ({budget[1]})"
    return epochs


def check_schedule_budget(model: str, horizons: list[ScheduleHorizon], trainer: Any) -> None:
    """Refuse (or, where the paper trains past it, warn about) a run that outlives a schedule.

    Call it once the train loader is set up (``on_train_start``): the batches per epoch are
    needed for per-iteration schedules.

    Raises:
        ValueError: the planned epochs/iterations exceed a schedule's ``length``, or the run
            has no end; the message names the trainer and model options with their numbers.
    """
    for h in horizons:
        per_epoch = _batches_per_epoch(trainer)
        if h.unit == "epoch":
            planned = planned_epochs(trainer)
        else:
            planned = planned_iterations(trainer)
        units = f"{h.unit}s"
        if planned is None:
            steps = getattr(trainer, "max_steps", -1)
            if steps is not None and steps > 0:
                # Lightning's own max_steps counts optimizer steps (1-3 per iteration): an
                # upper bound on iterations only, too loose to refuse a run on
                if h.unit == "iteration" and steps > h.length and not h.paper_trains_past:
                    rank_zero_warn(
                        f"{model}: trainer.max_steps={steps} optimizer steps may outlive "
                        f"{h.what} ({h.options} = {h.length} iterations): past it the run "
                        f"trains at {h.after}"
                    )
                continue
            if h.paper_trains_past:
                continue
            raise ValueError(
                f"{model}: trainer.max_epochs={trainer.max_epochs} and no iteration budget: "
                f"the run has no end, but {h.what} is defined for {h.options} = {h.length} "
                f"{units} only (past it the run would train at {h.after}); set "
                f"trainer.max_epochs (or trainer.max_steps) to at most that"
            )
        if planned <= h.length:
            continue
        source = _budget_source(trainer, h.unit)
        if h.paper_trains_past:
            rank_zero_warn(
                f"{model}: the run's {planned} {units} ({source}) go past {h.what} "
                f"({h.options} = {h.length} {units}); the last {planned - h.length} train at "
                f"{h.after}, as the paper's schedule does"
            )
            continue
        fix = f"trainer.max_epochs <= {h.length}"
        if h.unit == "iteration":
            fix = f"trainer.max_steps <= {h.length} (iterations)"
            if per_epoch:
                fix = f"trainer.max_epochs <= {h.length // per_epoch} (at {per_epoch} batches "
                fix += f"per epoch) or trainer.max_steps <= {h.length} (iterations)"
        raise ValueError(
            f"{model}: the run's {planned} {units} ({source}) outlive {h.what}, which is "
            f"defined for {h.options} = {h.length} {units}: {units} {h.length + 1}-{planned} "
            f"would train at {h.after}. Set {fix}, or lengthen the schedule"
        )


def check_input_sizes(
    model: str, requirements: list[tuple[str, InputSizes]], declared: dict, values: dict
) -> None:
    """Refuse data sizes a net cannot take.

    Args:
        model: the model's name, for the message.
        requirements: (net in words, its accepted sides) for every net that sees the images.
        declared: the data module's ``input_sizes()``: option name -> (H, W) in pixels.
        values: option name -> the option's value as the user wrote it (for the message).

    Raises:
        ValueError: naming the option, the size given, each net that refuses it and what it
            accepts, and the sides that every net accepts.
    """
    if not requirements:
        return
    combined = requirements[0][1]
    for _, sizes in requirements[1:]:
        combined = combined & sizes
    for option, (height, width) in declared.items():
        refusing = [
            f"{net} (accepted: {sizes.describe()})"
            for net, sizes in requirements
            if not (sizes.accepts(height) and sizes.accepts(width))
        ]
        if not refusing:
            continue
        value = values.get(option, (height, width))
        shown = list(value) if isinstance(value, (tuple, list)) else value
        near = [s for s in combined.nearest(min(height, width))]
        hint = (
            f". Sizes all of {model}'s nets accept: {combined.describe()}"
            + (f" (e.g. {', '.join(map(str, near))})" if near else "")
            if combined.smallest() is not None
            else f". No size suits all of {model}'s nets"
        )
        raise ValueError(f"{option}={shown} does not suit " + ", nor ".join(refusing) + hint)
