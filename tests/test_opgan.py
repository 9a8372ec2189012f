"""OP-GAN: patch grid, pair sampling, Siamese heads, L_cc / L_dc, S's content registration, the
paper's objective, the G -> S/D order, CLI, DDP."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from cli_helpers import EXPERIMENTS, TINY_TWO_DOMAIN, run_ddp_fit

from gan_suite.cli import cli_main
from gan_suite.losses import (
    content_consistency_loss,
    content_registration_loss,
    domain_classification_loss,
    patch_map_distances,
)
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


# -- content registration ------------------------------------------------------------------
def test_patch_map_distances_are_l_cc_for_every_pair_of_positions():
    att_s, att_t = torch.rand(2, 9, 1, 5, 5), torch.rand(2, 9, 1, 5, 5)
    dist = patch_map_distances(att_s, att_t)
    assert dist.shape == (2, 9, 9)
    for b, i, j in [(0, 0, 0), (1, 3, 7), (1, 8, 2)]:
        expected = content_consistency_loss(att_s[b, i : i + 1], att_t[b, j : j + 1])
        assert torch.allclose(dist[b, i, j], expected)
    with pytest.raises(ValueError, match="patch_map_distances"):
        patch_map_distances(att_s, att_t[:, :4])


def test_registration_loss_is_log_k_for_constant_maps_and_small_for_registered_ones():
    k = 9
    constant = torch.zeros(3, k, k)  # all maps alike: no position can be told apart
    assert content_registration_loss(constant, 50.0) == pytest.approx(math.log(k))
    registered = 0.1 * (1 - torch.eye(k)).expand(3, k, k)  # C1 agree, C2 differ by 0.1
    bound = math.log(1 + (k - 1) * math.exp(-50.0 * 0.1))
    assert content_registration_loss(registered, 50.0) == pytest.approx(bound, rel=1e-5)
    assert bound < 0.06
    swapped = registered.flip(2)  # every patch nearest to another position: worse than chance
    assert content_registration_loss(swapped, 50.0) > math.log(k)
    with pytest.raises(ValueError, match="scale"):
        content_registration_loss(constant, 0.0)


def _s_objective_with_maps(model: OPGAN, make_maps, real_A, real_B, fake_A, fake_B) -> dict:
    """Smain's terms when S's content attention maps are replaced by ``make_maps(patches)``
    (domain features and pair draws unchanged)."""
    encode = model.S.encode

    def patched(patches):
        _, domain = encode(patches)
        return make_maps(patches), domain

    model.S.encode = patched
    model.pair_generator.manual_seed(0)
    try:
        return model.siamese_objective(real_A, real_B, fake_A, fake_B)
    finally:
        del model.S.encode


def _constant_maps(patches):
    return torch.full_like(patches[:, :1], 0.5)


def _content_maps(patches):  # a function of the patch content only: same content, same map
    return torch.sigmoid(5 * patches.mean(dim=1, keepdim=True))


@pytest.mark.parametrize("directions", [("AtoB",), ("AtoB", "BtoA")])
def test_constant_content_maps_no_longer_minimise_s_objective(directions):
    torch.manual_seed(0)
    real_A, real_B = torch.rand(2, 3, 30, 30) * 2 - 1, torch.rand(2, 3, 30, 30) * 2 - 1
    fake_A, fake_B = real_B.clone(), real_A.clone()  # content-preserving "translations"
    kwargs = {"ngf": 4, "n_blocks": 1, "ndf": 4, "siamese_width": 4, "siamese_depth": 2}
    kwargs |= {"siamese_features": 8, "siamese_directions": directions}
    images = (real_A, real_B, fake_A, fake_B)

    model = OPGAN(**kwargs)
    constant = _s_objective_with_maps(model, _constant_maps, *images)
    registered = _s_objective_with_maps(model, _content_maps, *images)
    # both satisfy L_cc exactly (same-position maps agree) and classify the same pairs ...
    assert constant["l_cc"] == registered["l_cc"] == 0
    assert torch.equal(constant["l_dc"], registered["l_dc"])
    # ... but only registering maps tell same-position patches from different ones
    assert constant["reg_acc"] == pytest.approx(1 / 9)
    assert registered["reg_acc"] == 1
    assert constant["cc_different"] == 0 < registered["cc_different"]
    n = len(directions)
    assert constant["l_reg"] == pytest.approx(n * math.log(9))
    assert constant["s_loss"] > registered["s_loss"] + n * 2.0

    # the paper's text alone (L_S = L_cc + L_dc) is indifferent: constant maps are a minimum
    literal = OPGAN(**kwargs, registration_weight=0.0)
    literal.load_state_dict(model.state_dict())
    constant = _s_objective_with_maps(literal, _constant_maps, *images)
    registered = _s_objective_with_maps(literal, _content_maps, *images)
    assert constant["s_loss"] <= registered["s_loss"]
    assert not constant["l_reg"].requires_grad  # diagnostics only, no graph


def _train_s_alone(registration_weight: float, steps: int = 60) -> tuple[dict, dict]:
    """Smain alone on fixed pairs of smooth images and content-keeping "translations" (a
    contrast and brightness change); S's terms before and after."""
    torch.manual_seed(0)
    model, (_, _, opt_s), _ = _tiny_model_and_opts(
        siamese_lr=1e-3, registration_weight=registration_weight
    )

    def smooth(b: int) -> torch.Tensor:
        return torch.tanh(2 * F.interpolate(torch.randn(b, 3, 6, 6), size=30, mode="bilinear"))

    real_A, real_B = smooth(4), smooth(4)
    fake_A, fake_B = 0.5 * real_B - 0.3, 0.5 * real_A + 0.3
    first = model.siamese_objective(real_A, real_B, fake_A, fake_B)
    for _ in range(steps):
        model._siamese_step(opt_s, real_A, real_B, fake_A, fake_B)
    return first, model.siamese_objective(real_A, real_B, fake_A, fake_B)


def test_siamese_step_learns_to_register_patches():
    """With L_reg, S's maps come to register the patches (chance is 1/9) and keep L_cc
    informative; on the paper's literal L_S the same S lets its maps fade towards constants."""
    first, last = _train_s_alone(1.0)
    assert last["reg_acc"] > 0.9
    assert last["cc_different"] > 5 * last["cc_same"]
    assert last["l_reg"] < first["l_reg"] - 1.0
    _, literal = _train_s_alone(0.0)
    assert literal["cc_different"] < last["cc_different"] / 10
    assert literal["cc_different"] < first["cc_different"]


# -- the paper's objective ------------------------------------------------------------------
def test_paper_yaml_states_the_paper_objective_and_the_code_defaults_agree():
    config = yaml.safe_load((EXPERIMENTS / "opgan.yaml").read_text())["model"]["init_args"]
    assert config["identity_weight"] == 0  # L_LSGAN + alpha L_cyc + beta L_S: no identity term
    assert config["siamese_directions"] == ["AtoB"]  # S on source -> target only
    assert config["siamese_weight"] == 1 and config["cycle_weight_A"] == 10
    defaults = {
        name: p.default
        for name, p in inspect.signature(OPGAN.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for name, default in defaults.items():
        if name in config:
            value = config[name]
            assert (list(default) if isinstance(default, tuple) else default) == value, name
    model = OPGAN(ngf=4, n_blocks=1, ndf=4, siamese_width=4, siamese_depth=2, siamese_features=8)
    assert model.hparams.identity_weight == 0
    real = torch.rand(1, 3, 32, 32)
    terms = model._cycle_terms(real, real, {"rec_A": real, "rec_B": real})
    assert "idt_A" not in terms and "idt_B" not in terms


def test_the_variant_adds_identity_and_the_second_direction():
    kwargs = {"ngf": 4, "n_blocks": 1, "ndf": 4, "siamese_width": 4, "siamese_depth": 2}
    kwargs["siamese_features"] = 8
    paper = OPGAN(**kwargs)
    variant = OPGAN(**kwargs, identity_weight=0.5, siamese_directions=("AtoB", "BtoA"))
    variant.load_state_dict(paper.state_dict())
    torch.manual_seed(0)
    real_A, real_B = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    fake_A, fake_B = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = {"rec_A": real_A, "rec_B": real_B}
    assert {"idt_A", "idt_B"} <= set(variant._cycle_terms(real_A, real_B, out))
    # S on both directions sums two L_S; the paper's draws only the A -> B pairs
    paper.pair_generator.manual_seed(0)
    variant.pair_generator.manual_seed(0)
    one = paper.siamese_terms(real_A, real_B, fake_A, fake_B)
    both = variant.siamese_terms(real_A, real_B, fake_A, fake_B)
    variant.pair_generator.manual_seed(0)
    variant.hparams.siamese_directions = ("AtoB",)
    again = variant.siamese_terms(real_A, real_B, fake_A, fake_B)
    assert torch.allclose(again["l_s"], one["l_s"])
    assert not torch.allclose(both["l_s"], one["l_s"])


# -- the optimisation order ----------------------------------------------------------------
class _FakeTrainer:
    """Just what toggle_optimizer and log_terms need from a Trainer."""

    global_step = 0
    world_size = 1

    def __init__(self, optimizers):
        self.optimizers = optimizers


NETS = ("G_AB", "G_BA", "D_A", "D_B", "S")


def _has_grad(net: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def _tiny_model_and_opts(**kwargs):
    tiny = {"ngf": 4, "n_blocks": 1, "ndf": 4, "siamese_width": 4, "siamese_depth": 2}
    model = OPGAN(**tiny, siamese_features=8, **kwargs)
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
    # no Evaluation callback: its evaluator is trained on first use (tests/test_cli.py covers it)
    callbacks = (
        "--trainer.callbacks=[{class_path: gan_suite.callbacks.HistoryBuffer},"
        " {class_path: gan_suite.callbacks.SampleGrid}]"
    )
    cli = cli_main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "opgan.yaml"),
            *TINY,
            callbacks,
            "--trainer.fast_dev_run=1",
            "--test_after_fit=false",
        ]
    )
    assert Path(cli.trainer.default_root_dir).parent == Path("runs") / "opgan"
    assert cli.trainer.global_step == 3  # one batch: G, S and D steps
    metrics = cli.trainer.callback_metrics
    logged = ("l_cc", "l_dc", "l_s", "s_acc", "g_l_s", "g_loss", "d_loss")
    registration = ("l_reg", "s_loss", "cc_same", "cc_different", "reg_acc")
    for term in logged + registration:
        assert f"train/{term}" in metrics
    assert "train/idt_A" not in metrics  # the paper's objective: no identity term
    assert 0 <= float(metrics["train/s_acc"]) <= 1
    assert 0 <= float(metrics["train/reg_acc"]) <= 1


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path):
    report = run_ddp_fit("opgan.yaml", TINY, tmp_path, "opgan")
    assert report["world_size"] == 2
    assert len(report["divergence"]) == 2 and max(report["divergence"]) < 1e-6
    assert (report["run_dir"] / "checkpoints" / "last.ckpt").is_file()
