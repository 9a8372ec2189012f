"""What every paper's LightningModule shares: declared phases, one iteration counter, per-rank
random streams, per-iteration or per-epoch LR schedules, manual-optimisation plumbing, logging.

A paper's module declares its phases (:meth:`GANModule.declare_phases`, see
:mod:`gan_suite.models.phases`) and writes its ``training_step`` like the paper's algorithm box:

    def training_step(self, batch, batch_idx):
        if self.runs("Gmain"):
            with self.phase("Gmain") as opt_g:
                ...  # forward, losses, self.log_terms(...), self.backward_and_step(opt_g, loss)
        if self.runs("Dmain"):
            ...

Learning-rate schedules are returned by ``configure_optimizers`` in Lightning's own format,
``{"scheduler": s, "interval": "step" | "epoch"}`` (a bare scheduler is per epoch); the base
steps each after every iteration ("step": one training batch, not one optimizer step) or
every epoch, so the schedule reads in the paper's unit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from gan_suite.eval.metrics import Translation, two_way_translations
from gan_suite.losses import check_finite, nonfinite_terms
from gan_suite.models import checks, speed
from gan_suite.models.phases import Phase, check_phases
from gan_suite.nets.sizes import InputSizes
from gan_suite.utils.rng_state import collect_rng_states, restore_rng_states

#: checkpoint key of the per-rank global RNG states (a list indexed by global rank)
RNG_STATES_KEY = "gan_suite_rng_states"


class GANModule(L.LightningModule):
    """Base of the suite's papers.

    ``iteration`` (a buffer: saved in checkpoints) counts training batches; Lightning's
    ``global_step`` counts optimizer steps (2-3 per GAN batch) and is not used for schedules.
    Under DDP, :meth:`setup` offsets the global torch random stream by the rank once, so every
    rank draws its own noise and samples (``seed_everything`` gives all ranks the same seed).
    """

    def __init__(
        self, channels_last: bool = False, compile: bool = False, adam_impl: str = "auto"
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.channels_last = channels_last
        # speed switches (gan_suite.models.speed): nets compiled at setup; Adam's kernel
        self.compile_nets = compile
        self.adam_impl = speed.check_adam_impl(adam_impl)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._phases: dict[str, Phase] | None = None
        self._disabled_phases: set[str] = set()

    # -- phases ---------------------------------------------------------------------------
    def declare_phases(self) -> list[Phase]:
        """The paper's phases in the order of its algorithm box (see :mod:`.phases`)."""
        raise NotImplementedError

    @property
    def phases(self) -> dict[str, Phase]:
        """Name -> :class:`Phase`, declared once (hyperparameters are fixed by then)."""
        if self._phases is None:
            n_optimizers = None
            if self._trainer is not None and self.trainer.optimizers:
                n_optimizers = len(self.trainer.optimizers)
            self._phases = check_phases(self.declare_phases(), n_optimizers)
        return self._phases

    def set_phases_enabled(self, enabled: dict[str, bool]) -> None:
        """Switch phases on or off (a training-regime callback, e.g. BDL's K x N loop).

        Raises:
            KeyError: a name that is not a declared phase.
        """
        for name, on in enabled.items():
            if name not in self.phases:
                raise KeyError(f"no phase {name!r}; declared: {', '.join(self.phases)}")
            (self._disabled_phases.discard if on else self._disabled_phases.add)(name)

    def runs(self, name: str) -> bool:
        """Whether phase ``name`` steps in the current iteration."""
        phase = self.phases[name]
        return name not in self._disabled_phases and phase.runs_at(int(self.iteration))

    def phase_optimizer(self, name: str):
        """The (Lightning-wrapped) optimizer of phase ``name``."""
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return opts[self.phases[name].optimizer]

    @contextmanager
    def phase(self, name: str) -> Iterator:
        """Toggle phase ``name``'s optimizer (the other nets are frozen) and yield it."""
        opt = self.phase_optimizer(name)
        with self.toggled_optimizer(opt):
            yield opt

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """One iteration done: count it and step the per-iteration LR schedules."""
        self.iteration += 1
        self._step_schedulers("step")

    def on_train_epoch_end(self) -> None:
        """Step the per-epoch LR schedules (CycleGAN's linear decay is per epoch)."""
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        configs = self.trainer.lr_scheduler_configs if self._trainer is not None else []
        stepped = False
        for config in configs:
            if config.interval == interval:
                with warnings.catch_warnings():
                    # a phase that skips iterations (StarGAN's G: every n_critic-th) has not
                    # stepped its optimizer yet; the schedule still follows the iteration
                    # count by design, which is what PyTorch's order warning is about
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                    config.scheduler.step()
                stepped = True
        if stepped and interval == "epoch":
            first = self.optimizers(use_pl_optimizer=False)
            first = first[0] if isinstance(first, list) else first
            self.log("train/lr", first.param_groups[0]["lr"])

    # -- checkpoints: what Lightning does not restore by itself ----------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Add the switched-off phases and every rank's global RNG states (torch, NumPy,
        Python; see :mod:`gan_suite.utils.rng_state`) to ``checkpoint``.

        Lightning runs this hook on every rank before rank 0 writes the file, so under DDP
        the ranks' states are gathered here (a collective: each rank must save together, as
        ``Trainer.save_checkpoint`` and ModelCheckpoint do)."""
        checkpoint["gan_suite_disabled_phases"] = sorted(self._disabled_phases)
        mine = collect_rng_states()
        trainer = self._trainer
        states = [mine]
        if trainer is not None and trainer.world_size > 1 and dist.is_initialized():
            states = [None] * trainer.world_size
            dist.all_gather_object(states, mine)
        checkpoint[RNG_STATES_KEY] = states

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Take back the switched-off phases; keep this rank's RNG states for
        :meth:`on_train_start` (checkpoints written before they were saved resume with the
        streams ``seed_everything`` gives)."""
        self._disabled_phases = set(checkpoint.get("gan_suite_disabled_phases", []))
        states = checkpoint.get(RNG_STATES_KEY)
        if not states:
            self._rng_states_to_restore = None
            return
        rank, world_size = 0, 1
        if self._trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        if len(states) == world_size:
            self._rng_states_to_restore = states[rank]
            return
        # another number of processes than the run that saved: each rank continues rank 0's
        # streams, offset by its rank as setup() does, so that ranks still draw apart
        warnings.warn(
            f"checkpoint holds RNG states of {len(states)} process(es), this run has "
            f"{world_size}: rank {rank} continues rank 0's streams offset by its "
            "rank, so the resumed run does not repeat the uninterrupted one exactly",
            stacklevel=2,
        )
        self._rng_states_to_restore = {**states[0], "offset_by_rank": rank}

    _rng_states_to_restore: dict | None = None

    def on_train_start(self) -> None:
        """Restore the global RNG states of a resumed run here, right before the first
        training batch, not at checkpoint loading: between the two, a resumed run runs hooks
        (callbacks' on_fit_start building an evaluator net, the data loader set-up) that the
        uninterrupted run ran at its start, and their draws must not shift the streams."""
        states, self._rng_states_to_restore = self._rng_states_to_restore, None
        if states is None:
            return
        restore_rng_states(states)
        if states.get("offset_by_rank"):
            torch.manual_seed(int(torch.randint(2**62, ())) + 1_000_003 * states["offset_by_rank"])

    # -- plumbing -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_nets:
            speed.compile_nets(self, **self.compile_options)
        trainer = self._trainer
        if stage == "fit" and trainer is not None and trainer.world_size > 1:
            # one place for per-rank streams: noise, neighbour rows, patch pairs, ...
            torch.manual_seed(torch.initial_seed() + 1_000_003 * trainer.global_rank)
        self.check_input_sizes()
        if stage == "fit":
            self._budget_checked = False

    # -- the run's configuration against the model ----------------------------------------
    def input_size_requirements(self) -> list[tuple[str, InputSizes]]:
        """(net in words, the sides it accepts) for every net that sees the data's images;
        checked against the data module's ``input_sizes()`` at setup."""
        return []

    def check_input_sizes(self) -> None:
        """Compare the data module's declared image sizes with :meth:`input_size_requirements`.

        Raises:
            ValueError: a size a net cannot take, naming the data option, the size and what
                each refusing net accepts.
        """
        dm = self.trainer.datamodule if self._trainer is not None else None
        declared = getattr(dm, "input_sizes", None)
        if declared is None:
            return
        sizes = declared()
        values = {k: getattr(dm, k.rsplit(".", 1)[-1], v) for k, v in sizes.items()}
        checks.check_input_sizes(type(self).__name__, self.input_size_requirements(), sizes, values)

    def schedule_horizons(self) -> list[checks.ScheduleHorizon]:
        """The spans over which the paper's schedules are defined (none by default)."""
        return []

    def planned_iterations(self) -> int | None:
        """Training iterations (batches) the trainer will run: min(max_epochs x batches per
        epoch, the ``max_iterations`` of any trainer callback that has one, e.g. the
        IterationBudget that turns ``--trainer.max_steps N`` into N iterations). None when
        the run is unbounded, or before the train loader is set up (``on_train_start`` on)."""
        return checks.planned_iterations(self.trainer) if self._trainer is not None else None

    def on_train_epoch_start(self) -> None:
        """Before the first training step of a fit (the batches per epoch are known by then),
        refuse a run budget that outlives a schedule (:func:`checks.check_schedule_budget`)."""
        if not self._budget_checked:
            self._budget_checked = True
            checks.check_schedule_budget(
                type(self).__name__, self.schedule_horizons(), self.trainer
            )

    _budget_checked: bool = False

    #: keyword arguments of ``torch.compile`` when ``compile`` is on (default: inductor, the
    #: default mode); a test or a benchmark may set e.g. ``{"backend": "aot_eager"}``
    compile_options: dict = {}

    def adam(self, params, **kwargs) -> torch.optim.Adam:
        """``torch.optim.Adam(params, **kwargs)`` with the ``adam_impl`` option's kernel
        (:func:`gan_suite.models.speed.adam_kwargs`): every paper's Adam is built here."""
        return speed.make_adam(params, self.adam_impl, **kwargs)

    def prepare_images(self, x: Tensor) -> Tensor:
        """Put an input batch in the memory format the nets were converted to."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def backward_and_step(self, optimizer, loss: Tensor) -> None:
        """Backward, step and clear ``optimizer``'s nets. Call it inside
        ``with self.toggled_optimizer(optimizer):`` opened *before* the forward pass, so the
        nets of the other optimizers are frozen while the graph is built and get no gradient.

        When the phase's :meth:`log_terms` found a non-finite term and the run skips such steps
        (``RunSafety(on_nonfinite="skip")``), there is no backward and no optimizer step."""
        if self._skip_nonfinite_step:
            self._skip_nonfinite_step = False
            optimizer.zero_grad(set_to_none=True)
            return
        self.manual_backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # set by the RunSafety callback: decides whether a non-finite training step is skipped
    nonfinite_handler = None
    _skip_nonfinite_step: bool = False

    def log_terms(self, prefix: str, terms: dict[str, Tensor], prog_bar: tuple = ()) -> None:
        """Check every term is finite, then log each as ``<prefix>/<name>``.

        Call it before the phase's :meth:`backward_and_step`. A NaN/inf term raises
        FloatingPointError naming the term, the iteration and the global step, unless the
        ``nonfinite_handler`` (the RunSafety callback) says to skip: then the phase's next
        :meth:`backward_and_step` takes no step and the terms are not logged. Under DDP every
        rank takes the same decision (one rank's NaN stops or skips all), so no rank is left
        waiting in a gradient all-reduce.
        """
        bad = nonfinite_terms(terms)
        synced = False
        if prefix == "train" and self._trainer is not None and self.trainer.world_size > 1:
            # training steps run in lockstep on every rank, so this collective is matched
            synced = True
            any_bad = self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False)
            if any_bad and not bad:
                bad = ["<a term on another rank>"]
        if bad:
            handler = self.nonfinite_handler
            if prefix == "train" and handler is not None and handler.skip_step(self, bad):
                self._skip_nonfinite_step = True
                return
            try:
                check_finite(terms, self.global_step, int(self.iteration))
                raise FloatingPointError(
                    f"a loss term on another rank is non-finite at iteration "
                    f"{int(self.iteration)} (global step {self.global_step}): training diverged"
                )
            except FloatingPointError as err:
                err.all_ranks = synced or self._trainer is None or self.trainer.world_size == 1
                raise
        for name, value in terms.items():
            self.log(
                f"{prefix}/{name}",
                value.detach(),
                prog_bar=name in prog_bar,
                sync_dist=prefix != "train",
                batch_size=self._batch_size,
            )

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_size = next(v.shape[0] for v in batch.values() if isinstance(v, Tensor))

    _batch_size: int = 1

    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.on_train_batch_start(batch, batch_idx)

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.on_train_batch_start(batch, batch_idx)

    # -- what callbacks ask of a paper ----------------------------------------------------
    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        """Panels for :class:`~gan_suite.callbacks.SampleGrid`: name -> image columns."""
        raise NotImplementedError

    def sample_panels_caption(self) -> list[str]:
        return list(self.sample_panels_names)

    sample_panels_names: tuple[str, ...] = ()


class TwoDomainTranslator(GANModule):
    """Shared plumbing of the A <-> B translators (CycleGAN, OP-GAN, DiscoGAN): nets named
    ``G_AB`` and ``G_BA``, a ``_translate_cycle`` giving fakes and reconstructions, and an
    ``_eval_terms`` giving the validation/test loss terms."""

    sample_panels_names = ("A | G_AB(A) | G_BA(G_AB(A))", "B | G_BA(B) | G_AB(G_BA(B))")

    def forward(self, x: Tensor, direction: str = "AtoB") -> Tensor:
        """Translate a batch: ``AtoB`` uses G_AB, ``BtoA`` uses G_BA."""
        return (self.G_AB if direction == "AtoB" else self.G_BA)(self.prepare_images(x))

    def _translate_cycle(self, real_A: Tensor, real_B: Tensor) -> dict[str, Tensor]:
        fake_B = self.G_AB(real_A)  # G(x)
        fake_A = self.G_BA(real_B)  # F(y)
        return {
            "fake_B": fake_B,
            "rec_A": self.G_BA(fake_B),
            "fake_A": fake_A,
            "rec_B": self.G_AB(fake_A),
        }

    @torch.no_grad()
    def translate_without_grad(self, real_A: Tensor, real_B: Tensor) -> tuple[Tensor, Tensor]:
        """(G_BA(B), G_AB(A)) for an iteration whose generator phase does not run."""
        return self.G_BA(real_B), self.G_AB(real_A)

    def generator_phase(self, real_A: Tensor, real_B: Tensor) -> tuple[Tensor, Tensor]:
        """Gmain if it runs this iteration, else the translations without a graph; returns
        the detached fakes (G_BA(B), G_AB(A)) that the other phases see."""
        if self.runs("Gmain"):
            return self._generator_step(self.phase_optimizer("Gmain"), real_A, real_B)
        return self.translate_without_grad(real_A, real_B)

    def _eval_terms(self, real_A: Tensor, real_B: Tensor, out: dict) -> dict[str, Tensor]:
        raise NotImplementedError

    def _eval_step(self, batch: dict, prefix: str) -> dict[str, Tensor]:
        real_A, real_B = self.prepare_images(batch["A"]), self.prepare_images(batch["B"])
        out = self._translate_cycle(real_A, real_B)
        self.log_terms(prefix, self._eval_terms(real_A, real_B, out))
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = {}
        if "A" in batch:
            out["fake_B"] = self(batch["A"], "AtoB")
        if "B" in batch:
            out["fake_A"] = self(batch["B"], "BtoA")
        return out

    def evaluation_outputs(self, batch: dict) -> list[Translation]:
        """Both directions, for the Evaluation callback."""
        real_A, real_B = self.prepare_images(batch["A"]), self.prepare_images(batch["B"])
        return two_way_translations(batch, fake_B=self.G_AB(real_A), fake_A=self.G_BA(real_B))

    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        real_A, real_B = self.prepare_images(batch["A"]), self.prepare_images(batch["B"])
        out = self._translate_cycle(real_A, real_B)
        return {
            "A->B": [real_A, out["fake_B"], out["rec_A"]],
            "B->A": [real_B, out["fake_A"], out["rec_B"]],
        }
