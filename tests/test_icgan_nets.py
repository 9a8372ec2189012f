"""IC-GAN's BigGAN nets and neighbourhoods against the official code (facebookresearch/ic_gan:
``BigGAN_PyTorch/BigGAN.py``, ``BigGAN_PyTorch/layers.py``, ``BigGAN_PyTorch/utils.py``,
``data_utils/datasets_common.py``, ``BigGAN_PyTorch/config_files/ImageNet/*/``)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.nn.utils import parametrize

from gan_suite.eval.neighbours import brute_force_knn, knn_cosine
from gan_suite.nets.biggan import BigGANDiscriminator, BigGANGenerator

ROOT = Path(__file__).resolve().parents[1]

# The official tables, written out from BigGAN.py's G_arch / D_arch: multipliers of ch per block
# (the first D input is the 3 RGB channels). "px" is each block's output side as the blocks
# really compute it (G starts at 4x4; official "resolution" lists agree, except D at 32 px
# where that list, used only to place attention, reads 16, 16, 16, 16).
OFFICIAL_G = {
    32: dict(ins=[4, 4, 4], outs=[4, 4, 4], px=[8, 16, 32]),
    64: dict(ins=[16, 16, 8, 4], outs=[16, 8, 4, 2], px=[8, 16, 32, 64]),
    128: dict(ins=[16, 16, 8, 4, 2], outs=[16, 8, 4, 2, 1], px=[8, 16, 32, 64, 128]),
    256: dict(ins=[16, 16, 8, 8, 4, 2], outs=[16, 8, 8, 4, 2, 1], px=[8, 16, 32, 64, 128, 256]),
}
T, F_ = True, False
OFFICIAL_D = {
    32: dict(ins=[3, 4, 4, 4], outs=[4, 4, 4, 4], down=[T, T, F_, F_], px=[16, 8, 8, 8]),
    64: dict(ins=[3, 1, 2, 4, 8], outs=[1, 2, 4, 8, 16], down=[T] * 4 + [F_], px=[32, 16, 8, 4, 4]),
    128: dict(
        ins=[3, 1, 2, 4, 8, 16],
        outs=[1, 2, 4, 8, 16, 16],
        down=[T] * 5 + [F_],
        px=[64, 32, 16, 8, 4, 4],
    ),
    256: dict(
        ins=[3, 1, 2, 4, 8, 8, 16],
        outs=[1, 2, 4, 8, 8, 16, 16],
        down=[T] * 6 + [F_],
        px=[128, 64, 32, 16, 8, 4, 4],
    ),
}


def _channels(mult: int, ch: int, first: bool) -> int:
    return 3 if first else mult * ch


def _block_outputs(blocks: torch.nn.ModuleList, run) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for b in blocks]
    with torch.no_grad():
        run()
    for hook in hooks:
        hook.remove()
    return shapes


# ------------------------------------------------------------------ 1. architecture tables
@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_generator_blocks_follow_the_official_table(size):
    ch, table = 2, OFFICIAL_G[size]
    G = BigGANGenerator(size, z_dim=120, ch=ch, feature_dim=8, feature_embed_dim=4)
    assert [b.conv1.in_channels for b in G.blocks] == [m * ch for m in table["ins"]]
    assert [b.conv2.out_channels for b in G.blocks] == [m * ch for m in table["outs"]]
    assert G.linear.out_features == 4 * 4 * table["ins"][0] * ch  # bottom width 4
    # hierarchical z: 1 + n_blocks chunks of z_dim // slots; BigGAN drops the remainder
    assert G.z_chunk == 120 // (len(table["ins"]) + 1) and G.z_dim == G.z_chunk * (
        len(table["ins"]) + 1
    )
    z, h = torch.randn(2, 120), torch.randn(2, 8)
    shapes = _block_outputs(G.blocks, lambda: G(z, h))
    assert shapes == [(2, m * ch, p, p) for m, p in zip(table["outs"], table["px"])]


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_discriminator_blocks_follow_the_official_table(size):
    """At 64 px: four downsampling blocks, features from a 4x4 map (not 2x2)."""
    ch, table = 2, OFFICIAL_D[size]
    D = BigGANDiscriminator(size, ch=ch, feature_dim=8)
    ins = [_channels(m, ch, i == 0) for i, m in enumerate(table["ins"])]
    outs = [m * ch for m in table["outs"]]
    assert [b.conv1.in_channels for b in D.blocks] == ins
    assert [b.conv1.out_channels for b in D.blocks] == outs  # wide D: hidden = out
    assert [b.downsample for b in D.blocks] == table["down"]
    # learnable 1x1 shortcut where in != out or the block downsamples
    assert [b.shortcut is not None for b in D.blocks] == [
        i != o or d for i, o, d in zip(ins, outs, table["down"])
    ]
    x = torch.randn(2, 3, size, size)
    shapes = _block_outputs(D.blocks, lambda: D(x, torch.randn(2, 8)))
    assert shapes == [(2, o, p, p) for o, p in zip(outs, table["px"])]


def _official_g_params(size: int, ch: int, z_dim: int, feat: int, feat_dim: int, classes: int):
    """Parameter count of the official G (no attention), from the table: see layers.py."""
    t = OFFICIAL_G[size]
    slots = len(t["ins"]) + 1
    chunk = z_dim // slots
    cond = chunk + feat_dim + (128 if classes else 0)  # shared_dim 128
    n = feat * feat_dim + feat_dim  # shared_feat: SNLinear(2048, shared_dim_feat), bias
    n += classes * 128  # shared: nn.Embedding(n_classes, shared_dim)
    c0 = t["ins"][0] * ch
    n += chunk * 16 * c0 + 16 * c0  # first linear, z_0 -> ch0 x 4 x 4
    for i, o in zip(t["ins"], t["outs"]):
        ci, co = i * ch, o * ch
        n += 9 * ci * co + co + 9 * co * co + co  # conv1, conv2 (3x3, bias)
        n += ci * co + co  # conv_sc 1x1 (every G block upsamples)
        n += 2 * cond * ci + 2 * cond * co  # ccbn gain + bias: SNLinear(cond, C, bias=False)
    c = t["outs"][-1] * ch
    return n + 2 * c + 9 * c * 3 + 3  # output bn (gain, bias) and conv to RGB


def _official_d_params(size: int, ch: int, feat: int, classes: int):
    t = OFFICIAL_D[size]
    n = 0
    for k, (i, o, d) in enumerate(zip(t["ins"], t["outs"], t["down"])):
        ci, co = _channels(i, ch, k == 0), o * ch
        n += 9 * ci * co + co + 9 * co * co + co  # conv1, conv2 (wide: hidden = out)
        n += ci * co + co if (ci != co or d) else 0  # conv_sc
    c = t["outs"][-1] * ch
    n += c + 1  # linear -> 1
    proj = c // 2 if classes else c
    return n + feat * proj + proj + classes * proj  # linear_feat (bias) and SNEmbedding


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("classes", [0, 1000])
def test_parameter_counts_of_the_official_64px_configs(classes):
    """icgan_res64 / cc_icgan_res64: G_ch = D_ch = 64, dim_z 120 (hier), shared_dim_feat 512,
    2048-d features, shared_dim 128; built on the meta device (no weights materialised).

    By hand from the table (no attention): G = 1,049,088 (h embedding) + 409,600 (linear)
    + 22,121,472 + 9,250,304 + 2,724,608 + 887,168 (blocks) + 3,715 (output) = 36,445,955;
    D = 19,541,696 (blocks) + 1,025 (linear) + 2,098,176 (linear_feat) = 21,640,897.
    The official nets have attention at 32 px on top (G: 81,921 parameters, D: 5,121)."""
    with torch.device("meta"):
        G = BigGANGenerator(64, 120, 64, 2048, 512, n_classes=classes, class_embed_dim=128)
        D = BigGANDiscriminator(64, 64, 2048, n_classes=classes)
    assert _count(G) == _official_g_params(64, 64, 120, 2048, 512, classes)
    assert _count(D) == _official_d_params(64, 64, 2048, classes)
    if not classes:
        assert (_count(G), _count(D)) == (36_445_955, 21_640_897)
    else:  # G: + 128,000 class embedding + 1,212,416 wider CBN inputs; D: half-width heads
        assert (_count(G), _count(D)) == (37_786_371, 21_103_809)


@pytest.mark.parametrize("size", [32, 128, 256])
@pytest.mark.parametrize("classes", [0, 5])
def test_parameter_counts_at_every_resolution(size, classes):
    with torch.device("meta"):
        G = BigGANGenerator(size, 120, 4, 32, 16, n_classes=classes, class_embed_dim=128)
        D = BigGANDiscriminator(size, 4, 32, n_classes=classes)
    assert _count(G) == _official_g_params(size, 4, 120, 32, 16, classes)
    assert _count(D) == _official_d_params(size, 4, 32, classes)


# ------------------------------------------------------------------ 2. G's embeddings
def _is_sn(module: torch.nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight")


def test_generator_embeds_h_with_an_orthogonal_spectrally_normalised_linear():
    G = BigGANGenerator(
        32, 20, 4, feature_dim=128, feature_embed_dim=64, n_classes=3, class_embed_dim=8
    )
    assert _is_sn(G.embed_h) and G.embed_h.bias is not None  # SNLinear(2048, 512), bias
    w = G.embed_h.weight  # (64, 128), orthonormal rows, sigma 1: SN leaves it unchanged
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-5)
    # the class embedding stays a plain nn.Embedding, orthogonally initialised
    assert isinstance(G.embed_y, torch.nn.Embedding) and not _is_sn(G.embed_y)
    e = G.embed_y.weight  # (3, 8)
    assert torch.allclose(e @ e.T, torch.eye(3), atol=1e-5)
    # CBN input order: [class embedding, h embedding] then the z chunk (official forward)
    h, y = torch.randn(2, 128), torch.tensor([0, 2])
    G.eval()  # no power iteration per call: the same SN weight in both calls
    cond = G.condition(h, y)
    assert torch.equal(cond[:, :8], G.embed_y(y))
    assert torch.allclose(cond[:, 8:], G.embed_h(h))


def test_h_moves_the_output_of_a_random_init_generator():
    """At the quick preset's size, changing h moves G's output by ~1/5 of what changing z
    does (measured 0.084 vs 0.386 here): h reaches the CBN layers, weaker than z but usable."""
    torch.manual_seed(0)
    G = BigGANGenerator(32, z_dim=120, ch=8, feature_dim=128, feature_embed_dim=64)
    g = torch.Generator().manual_seed(0)
    z, z2 = torch.randn(64, 120, generator=g), torch.randn(64, 120, generator=g)
    h, h2 = (F.normalize(torch.randn(64, 128, generator=g), dim=1) for _ in range(2))
    with torch.no_grad():
        base = G(z, h)
        d_h = float((G(z, h2) - base).abs().mean())
        d_z = float((G(z2, h) - base).abs().mean())
    assert d_h > 0.1 * d_z, (d_h, d_z)


# ------------------------------------------------------------------ 3. class-conditional D
def test_class_conditional_discriminator_concatenates_half_width_projections():
    """D(x, h, y) = w^T phi + b + <[E y, P_h h + b_h], phi> with E y and P_h h each C/2."""
    D = BigGANDiscriminator(32, ch=4, feature_dim=8, n_classes=5).eval()  # C = 16
    assert _is_sn(D.embed_h) and _is_sn(D.embed_y) and _is_sn(D.linear)
    assert D.embed_h.weight.shape == (8, 8) and D.embed_h.bias.shape == (8,)
    assert D.embed_y.weight.shape == (5, 8)
    x, h, y = torch.randn(3, 3, 32, 32), torch.randn(3, 8), torch.tensor([0, 4, 2])
    with torch.no_grad():
        phi = D.features(x)  # (3, 16)
        expected = D.linear(phi)[:, 0] + (D.embed_y(y) * phi[:, :8]).sum(1)
        expected += (D.embed_h(h) * phi[:, 8:]).sum(1)
        assert torch.allclose(D(x, h, y), expected, atol=1e-5)
    unconditional = BigGANDiscriminator(32, ch=4, feature_dim=8).eval()
    assert unconditional.embed_y is None and unconditional.embed_h.weight.shape == (16, 8)
    with pytest.raises(ValueError, match="pass labels"):
        D(x, h)


# ------------------------------------------------------------------ 4. neighbourhoods
# ten points on a circle (radius 3) at angles 0.02 x a Golomb ruler (all gaps distinct: no ties);
# cosine similarity = cos(angle gap), so the neighbours are the nearest marks, by hand:
MARKS = [0, 1, 6, 10, 23, 26, 34, 41, 53, 55]
TWO_NEAREST_OTHERS = [
    [1, 2],
    [0, 2],
    [3, 1],
    [2, 1],
    [5, 6],
    [4, 6],
    [7, 5],
    [6, 8],
    [9, 7],
    [8, 7],
]


def _circle_points() -> torch.Tensor:
    angles = 0.02 * torch.tensor(MARKS, dtype=torch.float64)
    return 3.0 * torch.stack([angles.cos(), angles.sin()], dim=1)  # norm 3: normalised inside


@pytest.mark.parametrize("chunk", [3, 4096])
def test_neighbourhoods_exclude_the_instance_by_default(chunk):
    x = _circle_points()
    nn_idx = knn_cosine(x, 2, chunk_size=chunk)
    assert nn_idx.tolist() == TWO_NEAREST_OTHERS  # exact sets, most similar first
    assert brute_force_knn(x, 2).tolist() == TWO_NEAREST_OTHERS
    assert not (nn_idx == torch.arange(10)[:, None]).any()
    with pytest.raises(ValueError, match="k=10"):
        knn_cosine(x, 10)  # only 9 other instances


def test_include_self_remains_an_option():
    x = _circle_points()
    with_self = knn_cosine(x, 2, chunk_size=3, include_self=True)
    assert with_self.tolist() == [[i, first] for i, (first, _) in enumerate(TWO_NEAREST_OTHERS)]


# ------------------------------------------------------------------ 4-5. defaults and YAML
def test_icgan_defaults_and_yaml_follow_the_official_code():
    from gan_suite.models.icgan import ICGAN

    defaults = {name: p.default for name, p in inspect.signature(ICGAN.__init__).parameters.items()}
    assert defaults["include_self"] is False  # k + 1 neighbours, the instance dropped
    assert defaults["ema_start"] == 20_000  # BigGAN_PyTorch/utils.py --ema_start
    config = yaml.safe_load((ROOT / "experiments" / "icgan.yaml").read_text())
    args = config["model"]["init_args"]
    assert args["include_self"] is False and args["ema_start"] == 20_000
