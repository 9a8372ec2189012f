"""OP-GAN: patch grid, pair sampling, Siamese heads, L_cc / L_dc, the G -> S/D order, CLI, DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import EXPERIMENTS, TINY_TWO_DOMAIN, run_ddp_fit

from gan_suite.cli import cli_main
from gan_suite.losses import content_consistency_loss, domain_classification_loss
from gan_suite.models.opgan import OPGAN
from gan_suite.nets.siamese import D1, D2, C, SiameseNet, grid_patches, sample_patch_pairs

# the paper's YAML with every size shrunk (as the CycleGAN tests) and a tiny S
TINY = [
    *TINY_TWO_DOMAIN,
    "--model.init_args.siamese_width=4",
    "--model.init_args.siamese_depth=2",
    "--model.init_args.siamese_features=8",
]


# -- patch grid and pairs -----------------------------------------------------------------
@pytest.mark.parametrize("size", [33, 35])  # divisible by 3, and with a cropped remainder
def test_grid_patches_cut_nine_row_major_regions(size):
    images = torch.randn(2, 3, size, size + 3)
    patches = grid_patches(images, 3)
    h, w = size // 3, (size + 3) // 3
    assert patches.shape == (2, 9, 3, h, w)
    for k in range(9):
        row, col = divmod(k, 3)
        region = images[:, :, row * h : (row + 1) * h, col * w : (col + 1) * w]
        assert torch.equal(patches[:, k], region)


def _distinct_patch_grids(b: int = 3, k: int = 9):
    # every patch is a constant whose value encodes (translated?, image, position)
    def grid(t: int) -> torch.Tensor:
        code = (t * 1000 + torch.arange(b)[:, None] * 10 + torch.arange(k)).float()  # (b, k)
        return code[..., None, None, None].expand(b, k, 3, 4, 4).clone()

    return grid(0), grid(1)


def _decode(patch: torch.Tensor) -> tuple[bool, int, int]:
    v = int(patch[0, 0, 0])
    return v >= 1000, (v % 1000) // 10, v % 10


def test_pair_sampler_labels_positions_and_reproducibility():
    source, translated = _distinct_patch_grids()
    pairs = sample_patch_pairs(
        source, translated, 6, (1, 1, 1), 0.5, torch.Generator().manual_seed(1)
    )
    assert pairs.first.shape == (18, 3, 4, 4)
    assert pairs.labels.tolist() == [D1, D1, D2, D2, C, C] * 3
    for i in range(18):
        (t1, im1, p1), (t2, im2, p2) = _decode(pairs.first[i]), _decode(pairs.second[i])
        assert im1 == im2 == int(pairs.image_index[i])
        assert [p1, p2] == pairs.positions[i].tolist()
        assert [t1, t2] == pairs.translated[i].tolist()
        label = int(pairs.labels[i])
        if label == D1:
            assert not t1 and not t2 and p1 != p2
        elif label == D2:
            assert t1 and t2 and p1 != p2
        else:
            assert t1 != t2
            assert (p1 == p2) == bool(pairs.c1_mask[i])  # C1 same position, C2 different
    assert not pairs.c1_mask[pairs.labels != C].any()
    assert int(pairs.c1_mask.sum()) == 3  # half of the 6 C pairs
    again = sample_patch_pairs(
        source, translated, 6, (1, 1, 1), 0.5, torch.Generator().manual_seed(1)
    )
    assert torch.equal(again.positions, pairs.positions)
    assert torch.equal(again.c1_mask, pairs.c1_mask)


def test_pair_sampler_passes_gradient_into_the_translation():
    source, translated = _distinct_patch_grids(2)
    translated.requires_grad_(True)
    pairs = sample_patch_pairs(source, translated, 3, generator=torch.Generator().manual_seed(0))
    (pairs.first.sum() + pairs.second.sum()).backward()
    assert translated.grad.abs().sum() > 0


# -- S and its losses --------------------------------------------------------------------
def test_siamese_attention_maps_are_patch_sized_and_logits_three_way():
    net = SiameseNet(width=4, depth=3, feature_channels=8)
    a, b = torch.randn(5, 3, 28, 28), torch.randn(5, 3, 28, 28)
    content, domain = net.encoder(a)
    assert content.shape == domain.shape == (5, 8, 4, 4)  # stride 8
    att_1, att_2, logits = net(a, b)
    assert att_1.shape == att_2.shape == (5, 1, 28, 28)
    assert logits.shape == (5, 3)
    assert net.encoder(torch.randn(1, 3, 85, 85))[0].shape[-2:] == (11, 11)  # the paper's 11x11


def test_content_consistency_loss_zero_for_identical_patches_positive_otherwise():
    net = SiameseNet(width=4, depth=2, feature_channels=8)
    patch = torch.randn(4, 3, 10, 10)
    att_1, att_2, _ = net(patch, patch.clone())
    # zero up to float rounding (one batched pass may order the sums differently per row)
    assert content_consistency_loss(att_1, att_2) < 1e-12
    att_1, att_2, _ = net(patch, torch.randn(4, 3, 10, 10))
    assert content_consistency_loss(att_1, att_2) > 0
    mask = torch.tensor([True, False, False, False])
    expected = (att_1[0] - att_2[0]).pow(2).mean()
    assert torch.allclose(content_consistency_loss(att_1, att_2, mask), expected)
    assert content_consistency_loss(att_1, att_2, torch.zeros(4, dtype=torch.bool)) == 0


def test_domain_classification_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    by_hand = (
        -(
            torch.log(torch.exp(logits[0, 0]) / torch.exp(logits[0]).sum())
            + torch.log(torch.exp(logits[1, 2]) / torch.exp(logits[1]).sum())
        )
        / 2
    )
    assert torch.allclose(domain_classification_loss(logits, labels), by_hand)
    assert torch.allclose(
        domain_classification_loss(logits, labels), F.cross_entropy(logits, labels)
    )


# -- the optimisation order ----------------------------------------------------------------
class _FakeTrainer:
    """Just what toggle_optimizer and log_terms need from a Trainer."""

    global_step = 0

    def __init__(self, optimizers):
        self.optimizers = optimizers


NETS = ("G_AB", "G_BA", "D_A", "D_B", "S")


def _has_grad(net: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def _tiny_model_and_opts():
    model = OPGAN(ngf=4, n_blocks=1, ndf=4, siamese_width=4, siamese_depth=2, siamese_features=8)
    opts, _ = model.configure_optimizers()
    model.trainer = _FakeTrainer(opts)
    model.log = lambda *args, **kwargs: None  # no trainer loop to log into
    model.manual_backward = lambda loss: loss.backward()
    grads = {}

    def recorder(name):
        def record(opt, *args, **kwargs):  # before the step: which nets got a gradient
            grads[name] = {net: _has_grad(getattr(model, net)) for net in NETS}
            grads[name + "_every_S_param"] = all(p.grad is not None for p in model.S.parameters())

        return record

    for name, opt in zip(("g", "d", "s"), opts, strict=True):
        opt.register_step_pre_hook(recorder(name))
    return model, opts, grads


def test_generator_step_trains_only_g_and_siamese_step_only_s():
    model, (opt_g, opt_d, opt_s), grads = _tiny_model_and_opts()
    real_A, real_B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)

    fake_A, fake_B = model._generator_step(opt_g, real_A, real_B)
    assert grads["g"] == {"G_AB": True, "G_BA": True, "D_A": False, "D_B": False, "S": False}
    assert all(p.grad is None for p in model.parameters())  # stepped and cleared
    assert not fake_A.requires_grad and not fake_B.requires_grad

    model._siamese_step(opt_s, real_A, real_B, fake_A, fake_B)
    assert grads["s"] == {"G_AB": False, "G_BA": False, "D_A": False, "D_B": False, "S": True}
    assert grads["s_every_S_param"]  # every part of S is used (no unused parameters in DDP)
    model._discriminator_step(opt_d, real_A, real_B, fake_A, fake_B)
    assert grads["d"] == {"G_AB": False, "G_BA": False, "D_A": True, "D_B": True, "S": False}


def test_generator_gets_the_siamese_gradient_through_s():
    model, (opt_g, _, _), _ = _tiny_model_and_opts()
    real_A, real_B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with model.toggled_optimizer(opt_g):
        fake_B = model.G_AB(real_A)
        terms = model.siamese_terms(real_A, real_B, real_A.clone(), fake_B)
        terms["l_s"].backward()
    assert _has_grad(model.G_AB)
    assert all(p.grad is None for p in model.S.parameters())


# -- end to end ------------------------------------------------------------------------------
def test_fit_fast_dev_run_through_the_cli():
    cli = cli_main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "opgan.yaml"),
            *TINY,
            "--trainer.fast_dev_run=1",
            "--test_after_fit=false",
        ]
    )
    assert Path(cli.trainer.default_root_dir).parent == Path("runs") / "opgan"
    assert cli.trainer.global_step == 3  # one batch: G, S and D steps
    metrics = cli.trainer.callback_metrics
    for term in ("l_cc", "l_dc", "l_s", "s_acc", "g_l_s", "g_loss", "d_loss", "idt_A"):
        assert f"train/{term}" in metrics
    assert 0 <= float(metrics["train/s_acc"]) <= 1


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path):
    report = run_ddp_fit("opgan.yaml", TINY, tmp_path, "opgan")
    assert report["world_size"] == 2
    assert len(report["divergence"]) == 2 and max(report["divergence"]) < 1e-6
    assert (report["run_dir"] / "checkpoints" / "last.ckpt").is_file()
