"""Declared training phases: the schedule table, switching phases, per-iteration schedules."""

from __future__ import annotations

import pytest
import torch
from conftest_data import tiny_unpaired_data

from gan_suite.models.cyclegan import CycleGAN
from gan_suite.models.phases import Phase, check_phases


def _runs(phase: Phase, n: int = 10) -> list[int]:
    return [i for i in range(n) if phase.runs_at(i)]


def test_phase_intervals_read_like_the_papers():
    assert _runs(Phase("Dmain", 1)) == list(range(10))
    # StarGAN: G after every n_critic = 5 critic updates, on (i + 1) % 5 == 0
    assert _runs(Phase.every_nth("Gmain", 0, 5)) == [4, 9]
    # official DiscoGAN: D on i % 3 == 0, G on the others
    assert _runs(Phase("Dmain", 1, interval=3)) == [0, 3, 6, 9]
    assert _runs(Phase.except_every_nth("Gmain", 0, 3)) == [1, 2, 4, 5, 7, 8]
    assert _runs(Phase.except_every_nth("Gmain", 0, 1)) == list(range(10))
    assert Phase("Dmain", 1, repeats=5).repeats == 5


@pytest.mark.parametrize(
    "kwargs", [{"interval": 0}, {"repeats": 0}, {"interval": 3, "offsets": (3,)}, {"offsets": ()}]
)
def test_bad_phase_declarations_name_the_phase(kwargs):
    with pytest.raises(ValueError, match="Gmain"):
        Phase("Gmain", 0, **kwargs)


def test_check_phases_refuses_duplicates_and_missing_optimizers():
    with pytest.raises(ValueError, match="declared twice"):
        check_phases([Phase("G", 0), Phase("G", 1)], 2)
    with pytest.raises(ValueError, match="optimizer 2"):
        check_phases([Phase("S", 2)], 2)
    assert list(check_phases([Phase("G", 0), Phase("D", 1)], None)) == ["G", "D"]


def _tiny_data():
    return tiny_unpaired_data()


def _tiny_cyclegan(**kw) -> CycleGAN:
    return CycleGAN(ngf=4, n_blocks=1, ndf=4, n_layers_d=1, **kw)


def test_switching_phases_off_and_on_survives_a_checkpoint():
    model = _tiny_cyclegan()
    assert model.runs("Gmain") and model.runs("Dmain")
    model.set_phases_enabled({"Gmain": False})
    assert not model.runs("Gmain") and model.runs("Dmain")
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    restored = _tiny_cyclegan()
    restored.on_load_checkpoint(checkpoint)
    assert not restored.runs("Gmain")
    restored.set_phases_enabled({"Gmain": True})
    assert restored.runs("Gmain")
    with pytest.raises(KeyError, match="Fmain"):
        model.set_phases_enabled({"Fmain": True})


def test_a_disabled_generator_phase_leaves_g_untouched_and_d_still_trains(make_trainer):
    """The K x N callbacks' lever: with Gmain off, an iteration steps D only (on translations
    computed without a graph), and the iteration counter still advances."""
    model = _tiny_cyclegan()
    model.set_phases_enabled({"Gmain": False})
    g_before = [p.detach().clone() for p in model.G_AB.parameters()]
    d_before = [p.detach().clone() for p in model.D_A.parameters()]
    dm = _tiny_data()
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert all(torch.equal(a, b) for a, b in zip(g_before, model.G_AB.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d_before, model.D_A.parameters()))
    assert int(model.iteration) == 2 and trainer.global_step == 2  # two D steps only


def test_per_iteration_and_per_epoch_schedules_step_in_their_own_unit(make_trainer):
    """CycleGAN's decay is per epoch; a schedule declared with interval "step" (BDL's poly
    decay, cGAN's 1.00004 per batch) steps once per iteration (batch), whatever the number
    of optimizer steps in it."""

    class PerIteration(CycleGAN):
        def configure_optimizers(self):
            (opt_g, opt_d), _ = super().configure_optimizers()
            scheds = [
                {
                    "scheduler": torch.optim.lr_scheduler.LambdaLR(o, lambda i: 0.5**i),
                    "interval": "step",
                }
                for o in (opt_g, opt_d)
            ]
            return [opt_g, opt_d], scheds

    dm = _tiny_data()
    model = PerIteration(ngf=4, n_blocks=1, ndf=4, n_layers_d=1, lr=1.0)
    trainer = make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    # 3 iterations (6 optimizer steps): lr = 0.5^3
    assert model.optimizers()[0].param_groups[0]["lr"] == pytest.approx(0.125)

    per_epoch = _tiny_cyclegan(lr=1.0, n_epochs_constant=0, n_epochs_decay=3)
    trainer = make_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(per_epoch, datamodule=dm)
    # two epoch steps: the factor of epoch index 2, 1 - (2 + 1) / (3 + 1) (per batch, four
    # steps, it would have gone negative)
    assert per_epoch.optimizers()[0].param_groups[0]["lr"] == pytest.approx(0.25)
