"""Faults of the model side: schedules outliving the run budget, input sizes a net cannot take,
and history-buffer state restored into a run of another image size."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from gan_suite.losses import (
    exponential_decay_lr,
    linear_decay_factor,
    linear_decay_to_zero,
    linear_momentum,
    poly_lr_factor,
)
from gan_suite.models.checks import check_input_sizes, check_schedule_budget, planned_iterations
from gan_suite.nets.sizes import InputSizes

TINY_CYCLE = dict(ngf=4, n_blocks=1, ndf=4)


# ------------------------------------------------------------------ schedules stay in range
def test_cyclegan_factor_is_clipped_past_the_schedule():
    # the user's run: lr 1e-4, 0, -1e-4, -2e-4 in the epochs after n_const + n_decay
    assert linear_decay_factor(199, 100, 100) == pytest.approx(1 / 101)  # last planned epoch
    assert [linear_decay_factor(e, 100, 100) for e in (200, 201, 202, 500)] == [0.0] * 4
    assert linear_decay_factor(0, 100, 100) == 1.0


@pytest.mark.parametrize(
    "factor",
    [
        lambda i: linear_decay_factor(i, 3, 2),
        lambda i: linear_decay_factor(i, 0, 0),
        lambda i: linear_decay_to_zero(i, 10, 4),
        lambda i: linear_decay_to_zero(i, 10, 0),
        lambda i: poly_lr_factor(i, 10, 0.9),
        lambda i: exponential_decay_lr(i, 0.1, 1.5, 1e-3) / 0.1,
        lambda i: exponential_decay_lr(i, 0.1, 0.9, 1e-3) / 0.1,  # a "decay" that would grow
    ],
    ids=["cyclegan", "cyclegan-no-decay", "stargan", "stargan-no-decay", "bdl-poly", "cgan",
         "cgan-growing"],
)  # fmt: skip
def test_every_schedule_factor_stays_in_0_1(factor):
    values = [factor(i) for i in range(-1, 40)]
    assert all(0.0 <= v <= 1.0 for v in values), values


def test_cgan_momentum_stays_between_its_ends():
    values = [linear_momentum(e, 0.5, 0.7, 1, 5) for e in range(0, 20)]
    assert min(values) == 0.5 and max(values) == pytest.approx(0.7)


def _lrs_after(model, n_steps: int) -> list[float]:
    opts, scheds = model.configure_optimizers()
    scheds = [s["scheduler"] if isinstance(s, dict) else s for s in scheds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() before optimizer.step()
        for _ in range(n_steps):
            for s in scheds:
                s.step()
    return [g["lr"] for o in opts for g in o.param_groups]


def test_paper_schedulers_never_reach_a_negative_rate():
    from gan_suite.models.cyclegan import CycleGAN
    from gan_suite.models.opgan import OPGAN
    from gan_suite.models.stargan import StarGAN

    cyc = CycleGAN(**TINY_CYCLE, n_epochs_constant=1, n_epochs_decay=1, lr=1e-4)
    op = OPGAN(**TINY_CYCLE, siamese_width=4, siamese_features=4, n_epochs_constant=1,
               n_epochs_decay=1)  # fmt: skip
    star = StarGAN(image_size=16, g_conv_dim=4, g_repeat_num=1, d_conv_dim=4, d_repeat_num=3,
                   n_iterations=4, n_iterations_decay=2)  # fmt: skip
    for model in (cyc, op, star):
        assert _lrs_after(model, 10) == [0.0] * len(_lrs_after(model, 10))
    assert _lrs_after(cyc, 1) == [pytest.approx(0.5e-4)] * 2  # the one decay epoch: lr / 2


# ------------------------------------------------------------------ run budget vs schedule
class _Budget:
    """Stands for the lead's IterationBudget: ``--trainer.max_steps N`` as N iterations."""

    def __init__(self, n: int) -> None:
        self.max_iterations = n


def _trainer(max_epochs=3, batches=2, callbacks=(), max_steps=-1):
    return SimpleNamespace(
        max_epochs=max_epochs,
        num_training_batches=batches,
        callbacks=list(callbacks),
        max_steps=max_steps,
    )


def test_planned_iterations_is_the_smallest_bound():
    assert planned_iterations(_trainer(3, 2)) == 6
    assert planned_iterations(_trainer(3, 2, [_Budget(5), _Budget(9)])) == 5
    assert planned_iterations(_trainer(-1, 2, [_Budget(50)])) == 50
    assert planned_iterations(_trainer(-1, 2)) is None
    assert planned_iterations(_trainer(3, math.inf)) is None  # loader not set up yet


def test_cyclegan_budget_past_its_decay_is_refused_with_the_numbers():
    from gan_suite.models.cyclegan import CycleGAN

    model = CycleGAN(**TINY_CYCLE, n_epochs_constant=2, n_epochs_decay=1)
    check_schedule_budget("CycleGAN", model.schedule_horizons(), _trainer(3, 2))  # = 3: fine
    with pytest.raises(ValueError) as err:
        check_schedule_budget("CycleGAN", model.schedule_horizons(), _trainer(5, 2))
    msg = str(err.value)
    for part in ("trainer.max_epochs=5", "n_epochs_constant=2", "n_epochs_decay=1",
                 "= 3 epochs", "epochs 4-5", "trainer.max_epochs <= 3"):  # fmt: skip
        assert part in msg, msg
    # an iteration budget that ends the run inside the schedule: 5 iterations = 3 epochs of 2
    check_schedule_budget("CycleGAN", model.schedule_horizons(), _trainer(9, 2, [_Budget(5)]))
    with pytest.raises(ValueError, match="no end"):
        check_schedule_budget("CycleGAN", model.schedule_horizons(), _trainer(-1, 2))


def test_stargan_and_matchgan_iteration_budgets_are_checked():
    from gan_suite.models.stargan import StarGAN

    model = StarGAN(image_size=16, g_conv_dim=4, g_repeat_num=1, d_conv_dim=4, d_repeat_num=3,
                    n_iterations=6, n_iterations_decay=3)  # fmt: skip
    check_schedule_budget("StarGAN", model.schedule_horizons(), _trainer(3, 2))
    with pytest.raises(ValueError) as err:
        check_schedule_budget("StarGAN", model.schedule_horizons(), _trainer(4, 2))
    msg = str(err.value)
    for part in ("8 iterations", "trainer.max_epochs=4 x 2 batches per epoch",
                 "model.init_args.n_iterations=6", "trainer.max_epochs <= 3"):  # fmt: skip
        assert part in msg, msg
    with pytest.raises(ValueError, match=r"trainer.max_steps=7 iterations \(_Budget\)"):
        check_schedule_budget("StarGAN", model.schedule_horizons(), _trainer(9, 2, [_Budget(7)]))


def test_cgan_training_past_its_decay_floor_is_warned_not_refused():
    from gan_suite.models.cgan import CGAN

    model = CGAN(lr=0.1, lr_decay_factor=2.0, min_lr=0.1 / 8)  # the floor after 3 batches
    (horizon,) = model.schedule_horizons()
    assert horizon.length == 3 and horizon.paper_trains_past
    with pytest.warns(UserWarning, match="the last 3 train at the floor min_lr=0.0125"):
        check_schedule_budget("CGAN", [horizon], _trainer(3, 2))


def test_bdl_without_its_schedule_callback_is_held_to_stage_m0():
    from gan_suite.models.bdl import BDL

    model = BDL(n_classes=3, backbone_layers=(1, 1, 1, 1), ngf=4, n_blocks=1, ndf=4, d_out_ndf=4)
    (horizon,) = model.schedule_horizons()  # no trainer: no BDLSchedule
    assert horizon.length == 1 and "BDLSchedule" in horizon.what
    with pytest.raises(ValueError, match="trainer.max_epochs=2"):
        check_schedule_budget("BDL", [horizon], _trainer(2, 2))


def test_a_real_fit_is_refused_before_its_first_step(make_trainer):
    from gan_suite.models.cyclegan import CycleGAN

    model = CycleGAN(**TINY_CYCLE, n_layers_d=1, n_epochs_constant=1, n_epochs_decay=1)
    trainer = make_trainer(max_epochs=3, limit_train_batches=1, limit_val_batches=0)
    with pytest.raises(ValueError, match="trainer.max_epochs=3"):
        trainer.fit(model, datamodule=_unpaired(16))
    assert int(model.iteration) == 0


# ------------------------------------------------------------------ input sizes
def _unpaired(crop: int, n_train: int = 4):
    from datamodules import UnpairedDataModule

    return UnpairedDataModule(
        load_size=crop + 4,
        crop_size=crop,
        batch_size=2,
        num_workers=0,
        embedded={"n_train": n_train, "n_test": 2, "image_size": 32},
    )


def _cyclegan(**kw):
    from gan_suite.models.cyclegan import CycleGAN

    return CycleGAN(**TINY_CYCLE, **kw)


def _opgan(**kw):
    from gan_suite.models.opgan import OPGAN

    return OPGAN(**TINY_CYCLE, siamese_width=4, siamese_features=4, **kw)


def _discogan():
    from gan_suite.models.discogan import DiscoGAN

    return DiscoGAN(ngf=4, ndf=4)


def _stargan():
    from gan_suite.models.stargan import StarGAN

    return StarGAN(image_size=32, g_conv_dim=4, g_repeat_num=1, d_conv_dim=4, d_repeat_num=4)


def _icgan():
    from gan_suite.models.icgan import ICGAN

    return ICGAN(image_size=32, g_ch=4, d_ch=4, z_dim=8, feature_dim=8, ema_decay=0)


def _cgan():
    from gan_suite.models.cgan import CGAN

    return CGAN()  # the paper's MNIST MLPs: 784 = 28 x 28 inputs


def _bdl():
    from gan_suite.models.bdl import BDL

    return BDL(n_classes=3, backbone_layers=(1, 1, 1, 1), ngf=4, n_blocks=1, ndf=4, d_out_ndf=4)


CROP, IMAGE = "data.init_args.crop_size", "data.init_args.image_size"
SIZE_CASES = [
    # (model, option, size given, what the message must say)
    (_cyclegan, CROP, 16, "CycleGAN's PatchGANs with n_layers_d=3 (accepted: >= 24 px)"),
    (_cyclegan, CROP, 30, "ResNet generators with 2 stride-2 convs (accepted: multiples of 4 "
     "from 8 px)"),
    (_opgan, CROP, 16, "OPGAN's PatchGANs with n_layers_d=3 (accepted: >= 24 px)"),
    (lambda: _opgan(siamese_norm="instance"), CROP, 24, "3x3 patch grid with siamese_depth=3 "
     "and siamese_norm=instance (accepted: >= 27 px)"),
    (_discogan, CROP, 32, "DiscoGAN's discriminators with 4 stride-2 convs and a 4x4 head "
     "(accepted: >= 64 px)"),
    (_discogan, CROP, 72, "encoder-decoder generators (accepted: multiples of 16 from 16 px)"),
    (_stargan, IMAGE, 16, "StarGAN's discriminator built for image_size=32 with d_repeat_num=4 "
     "(accepted: 32 to 47 px)"),
    (_icgan, IMAGE, 64, "IC-GAN's generator built for image_size=32 (accepted: exactly 32 px)"),
    (_cgan, IMAGE, 32, "cGAN's MLP discriminator (accepted: exactly 28 px)"),
    (_bdl, "data.init_args.source_size", (16, 16), "BDL's output-space discriminator with 5 "
     "stride-2 convs (accepted: >= 32 px)"),
]  # fmt: skip


@pytest.mark.parametrize("make, option, size, expected", SIZE_CASES)
def test_sizes_a_net_cannot_take_are_refused_naming_the_option(make, option, size, expected):
    model = make()
    side = size if isinstance(size, int) else size[0]
    with pytest.raises(ValueError) as err:
        check_input_sizes(type(model).__name__, model.input_size_requirements(),
                          {option: (side, side)}, {option: size})  # fmt: skip
    msg = str(err.value)
    shown = size if isinstance(size, int) else list(size)
    assert msg.startswith(f"{option}={shown} does not suit "), msg
    assert expected in msg, msg


def test_the_message_proposes_sizes_every_net_accepts():
    model = _cyclegan()
    with pytest.raises(ValueError) as err:
        check_input_sizes("CycleGAN", model.input_size_requirements(), {CROP: (30, 30)}, {})
    assert "all of CycleGAN's nets accept: multiples of 4 from 24 px (e.g. 28, 32)" in str(
        err.value
    )


@pytest.mark.parametrize(
    "make, option, size",
    [(_cyclegan, CROP, 24), (_opgan, CROP, 256), (_discogan, CROP, 64), (_stargan, IMAGE, 32),
     (_icgan, IMAGE, 32), (_cgan, IMAGE, 28), (_bdl, "data.init_args.source_size", 32)],
)  # fmt: skip
def test_a_size_every_net_takes_passes(make, option, size):
    model = make()
    check_input_sizes("m", model.input_size_requirements(), {option: (size, size)}, {})


def test_a_fit_at_16_px_is_refused_at_setup(make_trainer):
    dm = _unpaired(16)
    assert dm.input_sizes() == {CROP: (16, 16)}
    model = _cyclegan()
    with pytest.raises(ValueError, match=r"^data.init_args.crop_size=16 does not suit .*>= 24 px"):
        make_trainer(max_epochs=1, limit_train_batches=1).fit(model, datamodule=dm)
    assert int(model.iteration) == 0


def _fails(net, side: int, *extra) -> bool:
    try:
        with torch.no_grad():
            net(torch.randn(2, 3, side, side), *extra)
    except (RuntimeError, ValueError):
        return True
    return False


def _nets():
    from gan_suite.nets import PatchDiscriminator, ResnetGenerator
    from gan_suite.nets.dcgan import DCGANDiscriminator, EncoderDecoderGenerator
    from gan_suite.nets.deeplab import OutputDiscriminator
    from gan_suite.nets.siamese import SiameseNet, grid_patches
    from gan_suite.nets.stargan import StarGANDiscriminator, StarGANGenerator

    siamese = SiameseNet(3, 4, 3, 4, "instance")
    star_g = StarGANGenerator(2, 4, 1, 3)
    star_d = StarGANDiscriminator(32, 2, 4, 4)
    cond = torch.zeros(2, 2)
    return {
        "resnet": (ResnetGenerator(3, 3, 4, 1), None, True),
        "patchgan-3": (PatchDiscriminator(3, 4, 3), None, False),
        "patchgan-1": (PatchDiscriminator(3, 4, 1), None, False),
        "disco-g": (EncoderDecoderGenerator(3, 3, 4), None, True),
        "disco-d": (DCGANDiscriminator(3, 4), None, False),
        "stargan-g": (star_g, lambda x: star_g(x, cond), True),
        # one (N, c_dim) logit row per image, not a map of them
        "stargan-d": (star_d, lambda x: star_d(x)[1].view(2, 2), False),
        "siamese-3x3": (siamese, lambda x: (lambda p: siamese(p, p))(grid_patches(x, 3)[:, 0]),
                        False),
        "output-d": (OutputDiscriminator(3, 4), lambda x: OutputDiscriminator(3, 4)(x), False),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(_nets()))
def test_stated_sizes_are_the_nets_true_limits(name):
    """The smallest stated side works and keeps a generator's size; the side below fails."""
    net, call, same_size = _nets()[name]
    net.eval()
    sizes: InputSizes = net.input_sizes(3) if name.startswith("siamese") else net.input_sizes()
    call = call or net
    first = sizes.smallest()
    with torch.no_grad():
        out = call(torch.randn(2, 3, first, first))
    if same_size:
        assert out.shape[-1] == first
    below = first - 1
    assert not sizes.accepts(below)
    if same_size:  # a non-multiple either fails or gives another size
        with torch.no_grad():
            try:
                assert call(torch.randn(2, 3, first + 1, first + 1)).shape[-1] != first + 1
            except RuntimeError:
                pass
    assert _fails(call, sizes.min_size - 1 if sizes.multiple == 1 else first - sizes.multiple)
    if sizes.max_size is not None:
        assert not _fails(call, sizes.max_size) and _fails(call, sizes.max_size + 1)


# ------------------------------------------------------------------ history buffer on resume
def test_resume_at_another_crop_size_drops_the_stale_pool(make_trainer, tmp_path):
    from gan_suite.callbacks import HistoryBuffer

    model = _cyclegan(n_layers_d=1, n_epochs_constant=2, n_epochs_decay=0)
    history = HistoryBuffer(pool_size=4)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                           callbacks=[history])  # fmt: skip
    trainer.fit(model, datamodule=_unpaired(32))
    assert history.pools["A"].stored_shape() == (3, 32, 32)
    ckpt = tmp_path / "at32.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed_history = HistoryBuffer(pool_size=4)
    trainer2 = make_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0,
                            callbacks=[resumed_history])  # fmt: skip
    resumed = _cyclegan(n_layers_d=1, n_epochs_constant=2, n_epochs_decay=0)
    with pytest.warns(UserWarning) as record:
        trainer2.fit(resumed, datamodule=_unpaired(24), ckpt_path=str(ckpt))
    msgs = [str(w.message) for w in record if "HistoryBuffer" in str(w.message)]
    assert len(msgs) == 2, msgs  # one per domain
    assert "data.init_args.crop_size=24" in msgs[0] and "32x32" in msgs[0], msgs[0]
    assert int(resumed.iteration) == 4
    assert resumed_history.pools["A"].stored_shape() == (3, 24, 24)
    assert len(resumed_history.pools["A"].images) == 4


def test_resumed_pool_keeps_the_new_runs_pool_size():
    from gan_suite.callbacks import HistoryBuffer

    old = HistoryBuffer(pool_size=6)
    old.query("A", torch.randn(6, 3, 8, 8))
    small = HistoryBuffer(pool_size=2)
    small.load_state_dict(old.state_dict())
    assert small.pools["A"].pool_size == 2 and len(small.pools["A"].images) == 2
    off = HistoryBuffer(pool_size=0)
    off.load_state_dict(old.state_dict())
    fakes = torch.randn(3, 3, 8, 8)
    assert torch.equal(off.query("A", fakes), fakes)  # pool_size 0 stays a passthrough
