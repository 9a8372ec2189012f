"""DiscoGAN: the nets' official sizes, the losses and their options, the G/D schedule, CLI."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import run_ddp_fit
from torch.utils.data import DataLoader, Dataset

from gan_suite.cli import cli_main
from gan_suite.losses import (
    discogan_reconstruction_loss,
    feature_matching_loss,
    recon_rate_schedule,
)
from gan_suite.models.discogan import DiscoGAN
from gan_suite.nets.dcgan import DCGANDiscriminator, EncoderDecoderGenerator

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# -- nets ---------------------------------------------------------------------------------
def test_parameter_counts_match_the_official_implementation():
    assert _n_params(EncoderDecoderGenerator(3, 3, 64)) == 5_513_856
    assert _n_params(DCGANDiscriminator(3, 64)) == 2_765_568


def test_shapes_64_to_64_and_one_logit_with_features():
    x = torch.randn(2, 3, 64, 64)
    g = EncoderDecoderGenerator(3, 3, ngf=8)
    y = g(x)
    assert y.shape == (2, 3, 64, 64) and y.abs().max() <= 1  # tanh output
    logits, feats = DCGANDiscriminator(3, ndf=8)(x)
    assert logits.shape == (2, 1, 1, 1)
    assert [f.shape for f in feats] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]


# -- losses -------------------------------------------------------------------------------
def test_feature_matching_is_zero_for_equal_means_and_positive_otherwise():
    feats = [torch.randn(4, 8, 4, 4), torch.randn(4, 16, 2, 2)]
    assert feature_matching_loss(feats, [f.clone() for f in feats]) == 0
    # a permuted batch has the same batch mean: still zero (it matches statistics)
    assert feature_matching_loss(feats, [f.flip(0) for f in feats]) == pytest.approx(0, abs=1e-6)
    shifted = [f + 1.0 for f in feats]
    assert feature_matching_loss(feats, shifted) == pytest.approx(2.0)  # 1^2 per map


def test_recon_rate_schedule_switches_after_the_curriculum():
    assert recon_rate_schedule(0) == 0.01 and recon_rate_schedule(9_999) == 0.01
    assert recon_rate_schedule(10_000) == 0.5
    model = DiscoGAN(ngf=4, ndf=4, recon_weight_schedule=True, recon_schedule_iters=5)
    assert model.current_recon_rate() == 0.01
    model.iteration.fill_(5)
    assert model.current_recon_rate() == 0.5
    assert DiscoGAN(ngf=4, ndf=4).current_recon_rate() is None  # paper eq. 5: no weighting


def _unit(x: torch.Tensor) -> torch.Tensor:  # [-1, 1] -> the official code's [0, 1]
    return (x + 1) / 2


@pytest.mark.parametrize(
    ("distance", "expected"),
    [
        ("mse", lambda x, y: ((_unit(x) - _unit(y)) ** 2).mean()),
        (
            "cosine",
            lambda x, y: 1 - F.cosine_similarity(_unit(x).flatten(1), _unit(y).flatten(1)).mean(),
        ),
        ("hinge", lambda x, y: (1 - x * y).clamp(min=0).mean()),
    ],
)
def test_recon_distance_is_wired_into_l_const(distance, expected):
    torch.manual_seed(0)
    real_A, real_B = torch.rand(2, 3, 4, 4) * 2 - 1, torch.rand(2, 3, 4, 4) * 2 - 1
    out = {"rec_A": torch.rand(2, 3, 4, 4) * 2 - 1, "rec_B": real_B.clone()}
    terms = DiscoGAN(ngf=4, ndf=4, recon_distance=distance)._recon_terms(real_A, real_B, out)
    assert terms["recon_A"] == pytest.approx(float(expected(out["rec_A"], real_A)), rel=1e-5)
    assert terms["recon_B"] == pytest.approx(float(expected(real_B, real_B)), abs=1e-5)


def test_recon_distance_is_on_the_official_unit_scale():
    """The official code feeds [0, 1] images to nn.MSELoss: a white reconstruction of a black
    image costs 1 there (4 on [-1, 1] values), half-grey vs black 0.25, a 0.5 step 0.0625."""
    white, black = torch.ones(2, 3, 4, 4), -torch.ones(2, 3, 4, 4)
    assert discogan_reconstruction_loss(white, black, "mse") == pytest.approx(1.0)
    assert discogan_reconstruction_loss(torch.zeros_like(black), black, "mse") == pytest.approx(
        0.25
    )
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    step = (x + 0.5).clamp(max=1)
    official = torch.nn.MSELoss()(_unit(step), _unit(x))
    assert discogan_reconstruction_loss(step, x, "mse") == pytest.approx(float(official))
    # cosine on [0, 1] images: [1, -1] vs [-1, 1] are orthogonal there (1; 2 on [-1, 1]);
    # [1, 1] vs [1, -1] give 1 - 1/sqrt(2) there (1 on [-1, 1])
    a, b = torch.tensor([[1.0, -1.0]]), torch.tensor([[-1.0, 1.0]])
    assert discogan_reconstruction_loss(a, b, "cosine") == pytest.approx(1.0)
    c = torch.tensor([[1.0, 1.0]])
    assert discogan_reconstruction_loss(c, a, "cosine") == pytest.approx(1 - 2**-0.5)
    # hinge keeps the signed values its margin needs: agreeing saturated pixels cost 0
    assert discogan_reconstruction_loss(white, white, "hinge") == 0
    assert discogan_reconstruction_loss(white, black, "hinge") == pytest.approx(2.0)
    # and in the model: L_CONST of the white/black pair is 1, not 4
    terms = DiscoGAN(ngf=4, ndf=4)._recon_terms(
        black, black, {"rec_A": white, "rec_B": black.clone()}
    )
    assert terms["recon_A"] == pytest.approx(1.0) and terms["recon_B"] == 0


def test_bad_options_are_rejected_by_name():
    with pytest.raises(ValueError, match="recon_distance"):
        DiscoGAN(recon_distance="l3")
    with pytest.raises(ValueError, match="d_update_interval"):
        DiscoGAN(d_update_interval=0)
    with pytest.raises(ValueError, match="d_loss_scale"):
        DiscoGAN(d_loss_scale=0)


# -- the training step --------------------------------------------------------------------
class _Noise(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {k: torch.rand(3, 64, 64, generator=g) * 2 - 1 for k in ("A", "B")}


class _Probe(DiscoGAN):
    """Records, at each optimizer step, which parameters hold a gradient."""

    def __init__(self, **kwargs) -> None:
        super().__init__(ngf=4, ndf=4, **kwargs)
        self.graded: list[tuple[str, set[str]]] = []

    def backward_and_step(self, optimizer, loss) -> None:
        self.manual_backward(loss)
        names = {n for n, p in self.named_parameters() if p.grad is not None}
        first = optimizer.param_groups[0]["params"][0]
        net = "G" if first is next(self.G_AB.parameters()) else "D"
        self.graded.append((net, names))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


class _Recorder(L.Callback):
    """Per batch: iteration, whether G / D weights moved, the logged terms."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    @staticmethod
    def _flat(net) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in net.parameters()]).clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = (
            int(pl_module.iteration),
            self._flat(pl_module.G_AB),
            self._flat(pl_module.D_A),
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        it, g, d = self._before
        row = {
            "iteration": it,
            "g_moved": not torch.equal(g, self._flat(pl_module.G_AB)),
            "d_moved": not torch.equal(d, self._flat(pl_module.D_A)),
        }
        row |= {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        self.rows.append(row)


def _fit(model: DiscoGAN, n_batches: int) -> _Recorder:
    recorder = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=n_batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[recorder],
    )
    trainer.fit(model, DataLoader(_Noise(), batch_size=4))
    return recorder


def test_d_updates_only_every_interval_and_iteration_is_checkpointed(tmp_path):
    model = DiscoGAN(ngf=4, ndf=4, d_update_interval=3)
    rows = _fit(model, 5).rows
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4]
    # the official alternation: D alone on every third batch, G alone on the others
    assert [r["d_moved"] for r in rows] == [True, False, False, True, False]
    assert [r["g_moved"] for r in rows] == [False, True, True, False, True]
    assert int(model.iteration) == 5
    # the counter is state: a checkpoint restores it, so schedules resume where they were
    restored = DiscoGAN(ngf=4, ndf=4, d_update_interval=3)
    restored.load_state_dict(model.state_dict())
    assert int(restored.iteration) == 5 and not restored.updates_discriminator()


class _DLossProbe(DiscoGAN):
    """At the D step, recomputes the official code's D loss from the same nets and inputs."""

    def __init__(self, **kwargs) -> None:
        super().__init__(ngf=4, ndf=4, **kwargs)
        self.d_losses: list[tuple[float, float]] = []  # (ours, official)

    def _discriminator_step(self, opt_d, real_A, real_B, fake_A, fake_B) -> None:
        self._d_inputs = (real_A, real_B, fake_A, fake_B)
        super()._discriminator_step(opt_d, real_A, real_B, fake_A, fake_B)

    def backward_and_step(self, optimizer, loss) -> None:
        if optimizer.param_groups[0]["params"][0] is next(self.D_A.parameters()):
            real_A, real_B, fake_A, fake_B = self._d_inputs
            with torch.no_grad():  # image_translation.py: BCE(real) * 0.5 + BCE(fake) * 0.5

                def official(D, real, fake):
                    r, f = torch.sigmoid(D(real)[0]), torch.sigmoid(D(fake)[0])
                    bce = torch.nn.BCELoss()
                    return bce(r, torch.ones_like(r)) * 0.5 + bce(f, torch.zeros_like(f)) * 0.5

                expected = official(self.D_A, real_A, fake_A) + official(self.D_B, real_B, fake_B)
            self.d_losses.append((float(loss), float(expected)))
        super().backward_and_step(optimizer, loss)


@pytest.mark.parametrize("d_loss_scale", [None, 1.0])
def test_discriminator_loss_is_halved_as_in_the_official_code(d_loss_scale):
    kwargs = {} if d_loss_scale is None else {"d_loss_scale": d_loss_scale}
    model = _DLossProbe(**kwargs)
    _fit(model, 2)
    assert len(model.d_losses) == 2
    factor = 1.0 if d_loss_scale is None else 2.0  # eq. 6 as printed: twice the official
    for ours, official in model.d_losses:
        assert ours == pytest.approx(factor * official, rel=1e-5)


def test_interval_one_updates_both_every_batch():
    rows = _fit(DiscoGAN(ngf=4, ndf=4), 3).rows  # the paper: G then D on every batch
    assert all(r["d_moved"] and r["g_moved"] for r in rows)


@pytest.mark.parametrize("switch", [100, 0])
def test_recon_weight_schedule_weighs_gan_against_const(switch):
    model = DiscoGAN(ngf=4, ndf=4, recon_weight_schedule=True, recon_schedule_iters=switch)
    row = _fit(model, 1).rows[0]
    r = 0.01 if switch else 0.5
    assert row["train/recon_rate"] == pytest.approx(r)
    expected = (1 - r) * (row["train/adv_AB"] + row["train/adv_BA"]) + r * (
        row["train/recon_A"] + row["train/recon_B"]
    )
    assert row["train/g_loss"] == pytest.approx(expected, rel=1e-5)


def test_paper_objective_is_the_unweighted_sum_eq5():
    row = _fit(DiscoGAN(ngf=4, ndf=4), 1).rows[0]
    terms = ("adv_AB", "adv_BA", "recon_A", "recon_B")
    assert row["train/g_loss"] == pytest.approx(sum(row[f"train/{t}"] for t in terms), rel=1e-5)
    assert "train/recon_rate" not in row and "train/fm_AB" not in row


@pytest.mark.parametrize("fm_weight", [0.0, 0.9])
def test_every_parameter_gets_a_gradient_in_its_own_step_only(fm_weight):
    model = _Probe(fm_weight=fm_weight)
    rows = _fit(model, 1).rows
    g_names = {n for n, _ in model.named_parameters() if n.startswith("G_")}
    d_names = {n for n, _ in model.named_parameters() if n.startswith("D_")}
    assert [net for net, _ in model.graded] == ["G", "D"]
    assert model.graded[0][1] == g_names
    assert model.graded[1][1] == d_names
    if fm_weight:  # g_loss = sum over directions of (1 - w) L_GAN + w L_FM, + L_CONST
        row = rows[0]
        gan = sum(
            (1 - fm_weight) * row[f"train/adv_{d}"] + fm_weight * row[f"train/fm_{d}"]
            for d in ("AB", "BA")
        )
        assert row["train/fm_AB"] > 0
        expected = gan + row["train/recon_A"] + row["train/recon_B"]
        assert row["train/g_loss"] == pytest.approx(expected, rel=1e-5)


# -- the command line ---------------------------------------------------------------------
TINY = [
    "--model.init_args.ngf=4",
    "--model.init_args.ndf=4",
    "--data.init_args.load_size=64",
    "--data.init_args.crop_size=64",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_workers=0",
    "--data.init_args.embedded={n_train: 12, n_test: 6, image_size: 64}",
    "--trainer.accelerator=cpu",
    "--trainer.logger=[{class_path: lightning.pytorch.loggers.CSVLogger,"
    " init_args: {save_dir: runs}}]",
    "--trainer.enable_progress_bar=false",
]


def test_fit_fast_dev_run_through_the_cli():
    # only SampleGrid: the Evaluation callback trains the evaluator net on first use (its
    # metrics are covered by tests/test_cli.py), which would triple this test's time
    callbacks = "--trainer.callbacks=[{class_path: gan_suite.callbacks.SampleGrid}]"
    config = str(EXPERIMENTS / "discogan.yaml")
    cli = cli_main(["fit", "--config", config, *TINY, callbacks, "--trainer.fast_dev_run=1"])
    run_dir = Path(cli.trainer.default_root_dir)
    assert run_dir.parent == Path("runs") / "discogan"
    assert cli.trainer.global_step == 2  # one batch: a G step and a D step
    assert int(cli.model.iteration) == 1
    assert (run_dir / "samples" / "latest.png").is_file()
    assert "test/recon_A" in cli.trainer.callback_metrics  # test_after_fit ran the test loop


@pytest.mark.slow
def test_ddp_with_the_official_alternation_keeps_identical_weights(tmp_path):
    """2 CPU processes, the official options (feature matching, D alone on every third batch,
    G alone on the others): batches where one pair of nets sits out must not desynchronise
    the ranks, and every rank agrees on the iteration counter."""
    official = ["--model.init_args.fm_weight=0.9", "--model.init_args.d_update_interval=3"]
    report = run_ddp_fit("discogan.yaml", [*TINY, *official], tmp_path, "discogan", batchnorm=True)
    assert report["world_size"] == 2
    assert len(report["divergence"]) == 2 and max(report["divergence"]) < 1e-6
    ckpt = torch.load(report["run_dir"] / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(ckpt["state_dict"]["iteration"]) == 4  # 2 epochs x 2 batches
