"""A registry of the papers, timm-style: every GAN config in ``experiments/`` is a test case.

For each paper YAML the model and data are built as the YAML builds them (``class_path`` +
``init_args``), shrunk by the overrides in :data:`TINY`, and trained for a few batches by a
real ``Trainer.fit`` with a spy on ``GANModule.backward_and_step``. The spy records, at every
optimizer step, the phase that stepped (its declared optimizer), the iteration, and which
parameters hold a non-zero gradient. The tests then check:

- the optimizers partition the trainable parameters, and each phase's optimizer holds exactly
  the nets the paper's algorithm box gives it (:data:`OWNERS`);
- in every step, the parameters with a gradient are exactly that step's optimizer's (the other
  nets are frozen by ``toggled_optimizer`` or fed detached inputs), and across the phases every
  trainable parameter gets one;
- the phases run as declared (``Phase.runs_at``, ``repeats``, in declaration order), the
  iteration counter counts batches across epochs, and ``global_step`` counts optimizer steps.

A new YAML in ``experiments/`` fails :func:`test_every_paper_yaml_is_registered` until it has
an entry in :data:`TINY` and :data:`OWNERS`.

The ``fast_dev_run`` of each YAML through the CLI lives with each paper's tests
(test_cli.py, test_cgan.py, test_discogan.py, test_opgan.py, test_icgan.py);
:func:`test_every_paper_yaml_has_a_cli_fast_dev_run_test` checks that none is missing.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from gan_suite.models.base import GANModule

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
# the evaluator net, the identity baseline, and BDL: its phases are switched by the K x N
# schedule callback, so the one-regime checks below do not apply (test_bdl.py runs its loop,
# the CLI fast_dev_run and a DDP fit)
NOT_GANS = {"evaluator", "identity", "bdl"}
PAPERS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem not in NOT_GANS)

# ---------------------------------------------------------------------------- the registry
# 32 px scenes, 12 train / 6 test: the CycleGAN family's and IC-GAN's embedded data shrunk
EMBEDDED_32 = {"n_train": 12, "n_test": 6, "image_size": 32}
TWO_DOMAIN_DATA = {
    "load_size": 36,
    "crop_size": 32,
    "batch_size": 2,
    "num_workers": 0,
    "embedded": EMBEDDED_32,
}
CYCLEGAN_NETS = {"ngf": 4, "n_blocks": 1, "ndf": 4}
# StarGAN's nets at 16 px; 3 attributes of the shapes scenes (colours exclusive)
STARGAN_NETS = {
    "image_size": 16,
    "g_conv_dim": 4,
    "g_repeat_num": 1,
    "d_conv_dim": 4,
    "d_repeat_num": 3,
    "attributes": ["red", "green", "warm_background"],
    "exclusive_groups": [["red", "green"]],
}
STARGAN_DATA = {
    "image_size": 16,
    "batch_size": 4,
    "num_workers": 0,
    "attributes": ["red", "green", "warm_background"],
    "embedded": {"n_train": 40, "n_test": 6, "image_size": 24},
}

# the cGAN case reads the embedded digits: link the session copy instead of writing it again
pytestmark = pytest.mark.usefixtures("shared_digits")


def _stub_features(model: nn.Module) -> None:
    """IC-GAN's f: a fixed random projection to ``feature_dim`` instead of the Evaluator
    (which would be trained on first use)."""
    torch.manual_seed(0)
    dim = model.hparams.feature_dim
    model.set_feature_extractor(
        nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, dim))
    )


@dataclass(frozen=True)
class Tiny:
    """A paper's YAML shrunk: overrides of ``model`` / ``data`` ``init_args``, and a hook run
    on the built model (e.g. a stub feature extractor)."""

    model: dict[str, Any]
    data: dict[str, Any]
    prepare: Any = None


TINY: dict[str, Tiny] = {
    "cyclegan": Tiny(CYCLEGAN_NETS, TWO_DOMAIN_DATA),
    "opgan": Tiny(
        {**CYCLEGAN_NETS, "siamese_width": 4, "siamese_depth": 2, "siamese_features": 8},
        TWO_DOMAIN_DATA,
    ),
    # DiscoGAN's nets are built for 64 x 64 images
    "discogan": Tiny(
        {"ngf": 4, "ndf": 4},
        {
            **TWO_DOMAIN_DATA,
            "load_size": 64,
            "crop_size": 64,
            "embedded": {**EMBEDDED_32, "image_size": 64},
        },
    ),
    "cgan": Tiny(
        {
            "g_z_hidden": 16,
            "g_cond_hidden": 16,
            "g_joint_hidden": 32,
            "d_x_units": 8,
            "d_cond_units": 4,
            "d_joint_units": 8,
        },
        # the UCI digits (as before the embedded MNIST existed): on MNIST the final bias of
        # this 8-unit D was seen with an exactly zero gradient in one test order
        {"batch_size": 8, "num_workers": 0, "domain": "B"},
    ),
    "icgan": Tiny(
        {
            "image_size": 32,
            "g_ch": 4,
            "d_ch": 4,
            "z_dim": 20,
            "feature_embed_dim": 8,
            "class_embed_dim": 8,
            "feature_dim": 16,
            "k": 3,
        },
        {"image_size": 32, "batch_size": 4, "num_workers": 0, "embedded": EMBEDDED_32},
        _stub_features,
    ),
    "stargan": Tiny(STARGAN_NETS, STARGAN_DATA),
    # 4 attribute patterns x 4 images in the labelled batches; half the scenes labelled
    "matchgan": Tiny(
        {**STARGAN_NETS, "classes_per_batch": 2},
        {**STARGAN_DATA, "batch_size": 8, "classes_per_batch": 2, "labelled_fraction": 0.5},
    ),
}

# phase -> the nets (attribute names) its optimizer trains, as each paper's algorithm box says
OWNERS: dict[str, dict[str, tuple[str, ...]]] = {
    "cyclegan": {"Gmain": ("G_AB", "G_BA"), "Dmain": ("D_A", "D_B")},
    "opgan": {"Gmain": ("G_AB", "G_BA"), "Smain": ("S",), "Dmain": ("D_A", "D_B")},
    "discogan": {"Gmain": ("G_AB", "G_BA"), "Dmain": ("D_A", "D_B")},
    "cgan": {"Gmain": ("G",), "Dmain": ("D",)},
    "icgan": {"Gmain": ("G",), "Dmain": ("D",)},
    "stargan": {"Gmain": ("G",), "Dmain": ("D",)},
    "matchgan": {"Gmain": ("G",), "Dmain": ("D",)},
}
# parameters whose gradient may be exactly zero in a step of that phase, by an exact
# cancellation on the given batch: the bias b of a hinge D's logit gets
# d(loss)/db = (#fakes with logit > -1 - #reals with logit < 1) / B, zero when the two
# counts tie (it happens on IC-GAN's 4-image batches).
MAY_CANCEL: dict[str, dict[str, set[str]]] = {"icgan": {"Dmain": {"D.linear.bias"}}}
# heads whose terms need a label: MatchGAN's unlabelled batches skip D's classification and
# matching of real images (the official code's choice), so those heads get no gradient there
MAY_SKIP: dict[str, dict[str, set[str]]] = {
    "matchgan": {"Dmain": {"D.cls.weight", "D.match.weight"}}
}
# phases with a hinge loss that can saturate on a whole batch: every real logit > 1 and every
# fake one < -1 give a loss of exactly 0 and no gradient at all (IC-GAN's BigGAN D sum-pools
# its features and starts with logits of ~100)
MAY_SATURATE: dict[str, set[str]] = {"icgan": {"Dmain"}}
# nets with parameters no optimizer trains: IC-GAN's EMA copy of G (updated by averaging)
FROZEN = {"icgan": ("G_ema",)}

# the YAMLs' callbacks that only observe or write files; any other (a history buffer, a
# training-regime or data callback) is part of training and is kept in the fits below
OBSERVERS = {
    "gan_suite.callbacks.Evaluation",
    "gan_suite.callbacks.SampleGrid",
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "gan_suite.callbacks.RunSafety",  # checkpoints on SIGTERM / non-finite: tests/test_safety.py
}


@dataclass(frozen=True)
class Case:
    """One fit: a paper's YAML plus extra model overrides (a variant of its options), for
    ``epochs`` epochs of ``batches`` batches (None: the fewest in which every phase runs)."""

    paper: str
    model: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    epochs: int = 2
    batches: int | None = None

    @property
    def id(self) -> str:
        return self.paper + (f"-{self.label}" if self.label else "")


# the official DiscoGAN options: D alone every 3rd batch, G alone on the others, feature
# matching through D's features, the reconstruction curriculum; 3 epochs of 2 batches, so
# that an alternation on batch_idx instead of the iteration counter would show
DISCOGAN_OFFICIAL = Case(
    "discogan",
    {"d_update_interval": 3, "fm_weight": 0.9, "recon_weight_schedule": True},
    "official",
    epochs=3,
    batches=2,
)
CASES = [Case(paper) for paper in PAPERS] + [
    DISCOGAN_OFFICIAL,
    # two D steps per iteration (Phase repeats) and the class-conditional embeddings
    Case("icgan", {"n_d_steps": 2, "n_classes": 4}, "classes-2dsteps"),
]


def test_every_paper_yaml_is_registered():
    assert PAPERS == ["cgan", "cyclegan", "discogan", "icgan", "matchgan", "opgan", "stargan"], (
        "experiments/ has a new (or lost a) paper YAML: give it tiny overrides in TINY and its "
        f"phases' nets in OWNERS (found {PAPERS})"
    )
    assert set(TINY) == set(OWNERS) == set(PAPERS)
    for paper in PAPERS:  # every paper is a GANModule: declared phases, one iteration counter
        assert issubclass(_import(_config(paper)["model"]["class_path"]), GANModule), paper


# ---------------------------------------------------------------------------- building
def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _instantiate(spec: dict, overrides: dict | None = None):
    args = copy.deepcopy({**(spec.get("init_args") or {}), **(overrides or {})})
    return _import(spec["class_path"])(**args)


def _config(paper: str) -> dict:
    return yaml.safe_load((EXPERIMENTS / f"{paper}.yaml").read_text())


def build(case: Case):
    """(model, datamodule, training callbacks) of ``case``, as its YAML builds them."""
    config, tiny = _config(case.paper), TINY[case.paper]
    model = _instantiate(config["model"], {**tiny.model, **case.model})
    if tiny.prepare is not None:
        tiny.prepare(model)
    data = _instantiate(config["data"], tiny.data)
    callbacks = [
        _instantiate(spec if isinstance(spec, dict) else {"class_path": spec})
        for spec in (config.get("trainer") or {}).get("callbacks") or []
        if (spec["class_path"] if isinstance(spec, dict) else spec) not in OBSERVERS
    ]
    return model, data, callbacks


def batches_until_every_phase_ran(model) -> int:
    """The fewest iterations in which every declared phase runs at least once."""
    phases = list(model.phases.values())
    for n in range(1, 1000):
        if all(any(p.runs_at(i) for i in range(n)) for p in phases):
            return n
    raise AssertionError(f"a phase never runs in 1000 iterations: {phases}")


# ---------------------------------------------------------------------------- the spy
@dataclass
class Step:
    iteration: int  # model.iteration at the step (batches trained before it)
    phase: str
    loss: float
    graded: set[str]  # parameters holding a non-zero gradient after the backward


class StepSpy:
    """Replaces ``model.backward_and_step``: backward, record, step, clear (as the base does)."""

    def __init__(self, model) -> None:
        self.model = model
        self.steps: list[Step] = []
        self.names = {id(p): n for n, p in model.named_parameters()}
        model.backward_and_step = self  # an instance attribute shadows the method

    def __call__(self, optimizer, loss: torch.Tensor) -> None:
        model = self.model
        model.manual_backward(loss)
        raw = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer -> torch
        index = next(i for i, o in enumerate(model.trainer.optimizers) if o is raw)
        phases = [name for name, p in model.phases.items() if p.optimizer == index]
        assert len(phases) == 1, f"optimizer {index} steps phases {phases}: tell them apart"
        phase = phases[0]
        # non-zero means exactly non-zero: gradient scales span orders of magnitude (cGAN's G
        # gets ~1e-9 through a D initialised in U(-0.005, 0.005)), so no threshold fits all.
        # Hence conv biases right before a normalisation (CycleGAN's InstanceNorm, as in the
        # official code; BigGAN's BatchNorm), whose gradient is analytically zero, count by
        # their ~1e-8 float noise: this test cannot tell them apart and does not try.
        graded = {
            n
            for n, p in model.named_parameters()
            if p.grad is not None and bool(p.grad.ne(0).any())
        }
        self.steps.append(Step(int(model.iteration), phase, float(loss.detach()), graded))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def optimizer_params(self) -> dict[str, set[str]]:
        """Phase -> names of the parameters its optimizer holds."""
        model = self.model
        opts = model.trainer.optimizers
        return {
            name: {self.names[id(q)] for g in opts[p.optimizer].param_groups for q in g["params"]}
            for name, p in model.phases.items()
        }


@dataclass
class Fit:
    model: Any
    trainer: Any
    spy: StepSpy
    trainable: set[str]  # parameters with requires_grad before training
    n_batches: int  # training batches run (all epochs)


def fit(case: Case, make_trainer) -> Fit:
    """Train ``case`` through a real Trainer.fit with the spy in place."""
    model, data, callbacks = build(case)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    spy = StepSpy(model)
    batches = case.batches or batches_until_every_phase_ran(model)
    trainer = make_trainer(
        max_epochs=case.epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.num_training_batches == batches, "the tiny data has too few batches"
    return Fit(model, trainer, spy, trainable, case.epochs * batches)


_FITS: dict[str, Fit] = {}


def fitted(case: Case, make_trainer) -> Fit:
    """The default fit of ``case``, run once for the tests below (which only read its records
    and counters, never train it further): half the runtime."""
    if case.id not in _FITS:
        _FITS[case.id] = fit(case, make_trainer)
    return _FITS[case.id]


def _net_params(model, nets: tuple[str, ...]) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.split(".")[0] in nets}


# ---------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_parameter_gets_a_gradient_from_its_own_phase_and_no_other(case, make_trainer):
    run = fitted(case, make_trainer)
    model, steps = run.model, run.spy.steps
    owned = run.spy.optimizer_params()

    # the frozen parameters are exactly the declared frozen nets (the EMA copy of G)
    frozen = {n for n, _ in model.named_parameters()} - run.trainable
    assert frozen == _net_params(model, FROZEN.get(case.paper, ()))

    # each phase's optimizer holds its nets, and the optimizers partition the trainable ones
    assert set(owned) == set(OWNERS[case.paper])
    for phase, nets in OWNERS[case.paper].items():
        assert owned[phase] == _net_params(model, nets), phase
    counted = [n for params in owned.values() for n in params]
    assert sorted(counted) == sorted(run.trainable), "a parameter is in 0 or 2+ optimizers"

    # in every step exactly the parameters of the stepping optimizer have a gradient: other
    # nets are frozen by toggled_optimizer or fed detached fakes. The only subsets allowed are
    # MAY_CANCEL's and the empty one of a saturated hinge loss (MAY_SATURATE); no other is
    # needed on these inputs: every layer (Maxout pieces, dropout, the class embeddings) is
    # reached by a batch.
    for step in steps:
        if step.phase in MAY_SATURATE.get(case.paper, ()) and step.loss == 0.0:
            assert not step.graded, f"iteration {step.iteration}: a zero loss with gradients"
            continue
        may_cancel = MAY_CANCEL.get(case.paper, {}).get(step.phase, set())
        may_cancel = may_cancel | MAY_SKIP.get(case.paper, {}).get(step.phase, set())
        assert owned[step.phase] - may_cancel <= step.graded <= owned[step.phase], (
            f"iteration {step.iteration}, {step.phase}: "
            f"missing {sorted(owned[step.phase] - step.graded)[:5]}, "
            f"foreign {sorted(step.graded - owned[step.phase])[:5]}"
        )
    # every phase ran, so every trainable parameter got a gradient from its own phase
    assert {s.phase for s in steps} == set(model.phases)
    assert set().union(*(s.graded for s in steps)) == run.trainable


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_phases_run_as_declared_and_iteration_counts_batches(case, make_trainer):
    run = fitted(case, make_trainer)
    model = run.model
    # every iteration steps its running phases, in declaration order, `repeats` times each
    expected = [
        (i, p.name)
        for i in range(run.n_batches)
        for p in model.phases.values()
        if p.runs_at(i)
        for _ in range(p.repeats)
    ]
    assert [(s.iteration, s.phase) for s in run.spy.steps] == expected
    # the counter counts training batches across epochs; global_step counts optimizer steps
    assert int(model.iteration) == run.n_batches
    assert run.trainer.global_step == len(run.spy.steps)


def test_discogan_official_alternation_runs_d_then_g_twice(make_trainer):
    run = fitted(DISCOGAN_OFFICIAL, make_trainer)
    assert run.model.hparams.d_update_interval == 3
    # 3 epochs of 2 batches: an alternation on batch_idx would give D, G, D, G, D, G
    assert [s.phase for s in run.spy.steps] == ["Dmain", "Gmain", "Gmain"] * 2
    assert [s.iteration for s in run.spy.steps] == list(range(6))
    assert int(run.model.iteration) == 6 and run.trainer.global_step == 6


# ---------------------------------------------------------------------------- the CLI
def test_every_paper_yaml_has_a_cli_fast_dev_run_test():
    """Each paper's own tests run its YAML through ``cli_main`` with ``fast_dev_run``."""
    sources = [
        p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name
    ]
    for paper in PAPERS:
        covered = any(
            f'"{paper}.yaml"' in text and "cli_main" in text and "fast_dev_run=1" in text
            for text in sources
        )
        assert covered, f"no test runs experiments/{paper}.yaml with --trainer.fast_dev_run"
