"""IC-GAN's neighbourhoods through faiss: exact flat index, IVF recall, the model option, and the
error without faiss."""

from __future__ import annotations

import sys

import pytest
import torch

from gan_suite.eval import neighbours as nbr
from gan_suite.models.icgan import ICGAN


def _clustered(n: int, dim: int, centres: int, noise: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Gaussian clusters: structure an inverted file can exploit, unlike isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, dim, generator=g)
    labels = torch.randint(0, centres, (n,), generator=g)
    return c[labels] + noise * torch.randn(n, dim, generator=g)


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth))
    return hits / truth.numel()


@pytest.mark.parametrize("include_self", [False, True])
def test_faiss_flat_equals_the_exact_search(include_self):
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))  # no ties
    flat = nbr.knn_search(x, 7, search="faiss_flat", include_self=include_self)
    exact = nbr.knn_search(x, 7, search="exact", chunk_size=64, include_self=include_self)
    assert flat.shape == (300, 7) and flat.dtype == torch.int64
    assert [set(r) for r in flat.tolist()] == [set(r) for r in exact.tolist()]
    if include_self:
        assert torch.equal(flat[:, 0], torch.arange(300))  # the instance itself first
    else:
        assert not (flat == torch.arange(300)[:, None]).any()  # the official k + 1, self dropped


def test_faiss_ivf_recall_on_clustered_features():
    x = _clustered(3000, 64, centres=100, noise=1.0)  # clusters overlap: cells cut them
    truth = nbr.knn_cosine(x, 10)
    ivf = nbr.knn_search(x, 10, search="faiss_ivf", nlist=40, nprobe=8)
    assert ivf.shape == (3000, 10) and not (ivf == torch.arange(3000)[:, None]).any()
    assert _recall(ivf, truth) > 0.95  # measured 0.976
    # one cell per query is visibly worse (measured 0.878): nprobe reaches the index
    assert _recall(nbr.knn_search(x, 10, search="faiss_ivf", nlist=40, nprobe=1), truth) < 0.92


def test_ivf_that_finds_too_few_neighbours_says_raise_nprobe():
    x = _clustered(400, 8, centres=40, noise=0.01)  # 40 tight cells of ~10 points
    with pytest.raises(ValueError, match="raise neighbour_nprobe"):
        nbr.knn_faiss(x, 30, index="ivf", nlist=40, nprobe=1)


def test_missing_faiss_names_the_option_and_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(ImportError, match=r"neighbour_search.*pip install faiss-cpu"):
        nbr.knn_search(torch.randn(20, 4), 3, search="faiss_flat")
    assert nbr.knn_search(torch.randn(20, 4), 3).shape == (20, 3)  # exact needs no faiss


def test_unknown_search_is_refused_by_the_model():
    with pytest.raises(ValueError, match="neighbour_search='annoy'"):
        ICGAN(image_size=32, g_ch=4, d_ch=4, neighbour_search="annoy")


@pytest.mark.usefixtures("shared_digits")
def test_the_option_reaches_the_neighbourhood_callback(monkeypatch, tmp_path):
    """The callback searches with the model's neighbour_search / nlist / nprobe, and the cache
    key tells a faiss search from the exact one."""
    from test_icgan import _digits, _model, _prepare

    calls = []
    real = nbr.knn_faiss

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(nbr, "knn_faiss", spy)
    dm = _digits()
    model = _model(
        feature_cache="auto", neighbour_search="faiss_ivf", neighbour_nlist=8, neighbour_nprobe=8
    )
    _prepare(model, dm, tmp_path)
    assert [(c["index"], c["nlist"], c["nprobe"]) for c in calls] == [("ivf", 8, 8)]
    # nprobe = nlist scans every cell: the IVF search is then exact
    exact = nbr.knn_cosine(model.instance_features, 5)
    assert _recall(dm.train_set.neighbours, exact) > 0.99
    stored = torch.load(tmp_path / "instance_features.pt", weights_only=True)
    assert stored["key"]["search"] == ["faiss_ivf", 8, 8]
