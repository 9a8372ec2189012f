"""FID/KID: agreement with an independent numpy/scipy computation, sanity, weights, DDP."""

from __future__ import annotations

import json
import socket
import urllib.request

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gan_suite.eval import features as feats_mod
from gan_suite.eval.features import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    FeatureWrapper,
    InceptionWeightsNotFoundError,
    load_inception,
    make_feature_extractor,
    write_random_inception_weights,
)
from gan_suite.eval.fid import FIDKID

# ---------------------------------------------------------------- independent references


def frechet_distance_ref(x: np.ndarray, y: np.ndarray) -> float:
    """FID between the Gaussians fitted to x and y (N, D), via scipy.linalg.sqrtm."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_x @ s_y).real
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x + s_y - 2 * covmean))


def kid_ref(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3 over all samples (equal set sizes)."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / d + 1.0) ** 3

    k_xx, k_yy, k_xy = k(x, x), k(y, y), k(x, y)
    off_diag = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_diag - 2 * k_xy.sum() / m**2)


# ---------------------------------------------------------------- helpers


def identity_metric(dim: int, n: int) -> FIDKID:
    """FIDKID over precomputed features: one KID subset holding every sample."""
    return FIDKID(FeatureWrapper(nn.Identity(), num_features=dim), kid_subsets=1, kid_subset_size=n)


def make_evaluator() -> nn.Module:
    """A small deterministic random-conv 'evaluator' network: (N, 3, H, W) -> (N, 16)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )


def make_images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """Smooth random images in [-1, 1], (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def scores(metric: FIDKID, real: torch.Tensor, fake: torch.Tensor, batch: int = 32) -> dict:
    for i in range(0, len(real), batch):
        metric.update_real(real[i : i + batch])
    for i in range(0, len(fake), batch):
        metric.update_fake(fake[i : i + batch])
    return metric.compute()


# ---------------------------------------------------------------- agreement and sanity


def test_matches_numpy_scipy_reference():
    g = torch.Generator().manual_seed(1)
    n, d = 200, 8
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.3 + 0.4
    out = scores(identity_metric(d, n), x, y, batch=64)
    assert out["fid"] == pytest.approx(frechet_distance_ref(x.numpy(), y.numpy()), rel=1e-3)
    assert out["kid_mean"] == pytest.approx(kid_ref(x.numpy(), y.numpy()), rel=1e-6)
    assert (out["n_real"], out["n_fake"], out["extractor"]) == (n, n, "evaluator")


def test_fid_kid_zero_on_same_set_and_grow_with_noise():
    real = make_images(128, seed=0)
    metric = FIDKID(make_feature_extractor("evaluator", make_evaluator(), input_size=(3, 16, 16)))
    for i in range(0, 128, 32):
        metric.update_real(real[i : i + 32])
    results = []
    g = torch.Generator().manual_seed(5)
    for sigma in (0.0, 0.3, 0.6, 1.0):
        metric.reset_fake()
        metric.update_fake(real + sigma * torch.randn(real.shape, generator=g))
        results.append(metric.compute())
    fids = [r["fid"] for r in results]
    kids = [r["kid_mean"] for r in results]
    assert abs(fids[0]) < 1e-6 * fids[1]
    # the unbiased MMD of a set against itself is not exactly 0 (diagonal terms): ~1e-5 here
    assert abs(kids[0]) < 0.1 * kids[1]
    assert fids[0] < fids[1] < fids[2] < fids[3]
    assert kids[0] < kids[1] < kids[2] < kids[3]
    # reset_fake kept the 128 real features: nothing was recomputed or lost
    assert metric.has_real and all(r["n_real"] == 128 for r in results)


def test_reset_fake_reuses_real_features_and_clips_kid_subset():
    g = torch.Generator().manual_seed(2)
    x, y, z = (torch.randn(40, 4, generator=g, dtype=torch.float64) for _ in range(3))
    metric = FIDKID(FeatureWrapper(nn.Identity(), num_features=4), kid_subset_size=1000)
    scores(metric, x, y)
    metric.reset_fake()
    metric.update_fake(z)
    again = metric.compute()
    fresh = scores(FIDKID(FeatureWrapper(nn.Identity(), num_features=4)), x, z)
    assert again == pytest.approx(fresh)
    metric.reset()
    assert not metric.has_real
    # subsets smaller than the sets are drawn with a fixed seed: reruns give the same KID
    sub = [scores(FIDKID(FeatureWrapper(nn.Identity(), 4), kid_subset_size=10), x, y) for _ in "ab"]
    assert sub[0]["kid_mean"] == sub[1]["kid_mean"] and sub[0]["kid_std"] > 0


def test_unknown_kind_and_missing_evaluator():
    with pytest.raises(ValueError, match="inception"):
        make_feature_extractor("vgg")
    with pytest.raises(ValueError, match="evaluator"):
        make_feature_extractor("evaluator")


# ---------------------------------------------------------------- inception weights


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """Point the torch hub cache and the env var at empty folders; forbid any network use."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(tfi, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return hub


def test_missing_inception_weights_raise_with_file_name(empty_hub, tmp_path, monkeypatch):
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "nothing_here"))
    with pytest.raises(InceptionWeightsNotFoundError) as info:
        make_feature_extractor("inception")
    message = str(info.value)
    assert INCEPTION_WEIGHTS_FILE in message and str(empty_hub) in message
    assert "nothing_here" in message and "https://" in message
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILE):
        load_inception(tmp_path / "missing.pth")


def test_inception_loads_local_file_without_network(empty_hub, tmp_path, monkeypatch):
    write_random_inception_weights(empty_hub / "checkpoints" / INCEPTION_WEIGHTS_FILE)
    extractor = make_feature_extractor("inception")
    images = make_images(3, seed=3, size=64)
    features = extractor(images)
    assert features.shape == (3, 2048) and torch.isfinite(features).all()
    assert extractor.num_features == 2048 and features.std(0).mean() > 0
    # [-1, 1] floats are quantised exactly as the uint8 images torch-fidelity expects
    as_uint8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    torch.testing.assert_close(features, extractor.net(as_uint8)[0])
    # the env var (a folder) is found too
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(empty_hub / "checkpoints"))
    assert feats_mod.find_inception_weights().parent == empty_hub / "checkpoints"


# ---------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_metric() -> FIDKID:
    """Evaluator features; KID subsets of 16 of the 64 images, so subset sampling is exercised."""
    extractor = make_feature_extractor("evaluator", make_evaluator())
    return FIDKID(extractor, kid_subsets=5, kid_subset_size=16)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        real, fake = make_images(64, seed=10), make_images(64, seed=11)
        half = slice(rank * 32, (rank + 1) * 32)
        metric = ddp_metric()
        result = scores(metric, real[half], fake[half], batch=16)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    real, fake = make_images(64, seed=10), make_images(64, seed=11)
    single = scores(
        ddp_metric(),
        real,
        fake,
        batch=16,
    )
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        ddp = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert (ddp["n_real"], ddp["n_fake"]) == (64, 64)
        assert ddp["fid"] == pytest.approx(single["fid"], rel=1e-4)
        assert ddp["kid_mean"] == pytest.approx(single["kid_mean"], rel=1e-4, abs=1e-9)
