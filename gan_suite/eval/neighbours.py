"""Exact k-nearest-neighbour search by cosine similarity, in bounded memory.

IC-GAN (Casanova et al. 2021, section 2) models the data as a mixture of neighbourhoods: the
real samples of instance ``i`` are its k nearest neighbours ``A_i`` in a feature space, by
cosine similarity of the (L2-normalised) features; k = 50 on ImageNet. The paper searches with
faiss; here it is plain torch on one device, exact, and never forms the N x N similarity
matrix:

- :func:`knn_cosine` searches a set against itself. The similarity is symmetric, so only the
  blocks on and above the diagonal are computed (half the matmul FLOPs) and every block
  feeds the running top-k of both its row and its column block. Memory: the normalised
  features (N x D), the running top-k (N x k values + indices) and one chunk x chunk block.
- :func:`knn_cosine_query` searches queries (e.g. held-out images) against a database, one
  chunk of queries at a time: O(chunk x N) transient.

Self-matches: an instance is its own nearest neighbour. The official IC-GAN code
(facebookresearch/ic_gan, ``data_utils/datasets_common.py``, ``_obtain_nns``) searches the
k + 1 nearest neighbours of every training instance (faiss ``IndexFlatL2`` on the L2-normalised
features, the same order as cosine similarity) and deletes the instance itself from its list,
so A_i is the k nearest *other* instances. ``include_self=False`` (default) does the same;
``include_self=True`` keeps x_i in A_i instead, first even if duplicates tie with it.

Larger sets: :func:`knn_faiss` searches through faiss (the library the official code uses),
either exactly (``faiss_flat``: ``IndexFlatIP`` on the normalised features, the same neighbours
as :func:`knn_cosine` up to float ties, but without the symmetry saving: 2 N^2 D flops instead
of N^2 D) or approximately (``faiss_ivf``: an inverted file of ``nlist`` k-means cells, of which
``nprobe`` are scanned per query; recall < 1, cost ~ nprobe / nlist of the exact search plus
the k-means training). :func:`knn_search` picks one by the model's ``neighbour_search``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_k(n: int, k: int, include_self: bool) -> None:
    available = n if include_self else n - 1
    if not 1 <= k <= available:
        raise ValueError(
            f"k={k}: need 1 <= k <= {available} for {n} features "
            f"({'including' if include_self else 'excluding'} each instance itself)"
        )


def _normalised(features: Tensor, normalized: bool) -> Tensor:
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    x = features.float()
    return x if normalized else F.normalize(x, dim=1)


def _merge(best_val: Tensor, best_idx: Tensor, row0: int, sims: Tensor, col0: int, k: int) -> None:
    """Fold the block ``sims`` (rows row0.., columns col0..) into the running top-k in place."""
    rows = slice(row0, row0 + sims.shape[0])
    val, idx = torch.topk(sims, min(k, sims.shape[1]), dim=1)  # (r, k'), block-local columns
    val = torch.cat([best_val[rows], val], dim=1)
    idx = torch.cat([best_idx[rows], idx + col0], dim=1)
    top_val, pos = torch.topk(val, k, dim=1)
    best_val[rows] = top_val
    best_idx[rows] = torch.gather(idx, 1, pos)


@torch.no_grad()
def knn_cosine(
    features: Tensor,
    k: int,
    *,
    chunk_size: int = 4096,
    include_self: bool = False,
    normalized: bool = False,
) -> Tensor:
    """Indices of the k most cosine-similar rows of ``features`` for every row: IC-GAN's
    neighbourhoods A_i (section 2), by default without the instance i itself.

    Args:
        features: (N, D) features, any float dtype (searched in float32).
        k: neighbours per instance.
        chunk_size: side of the similarity blocks; transient memory is chunk_size^2 floats
            (4096 -> 64 MiB) plus the top-k of a block.
        include_self: whether instance i counts as one of its own neighbours (then it is
            always the first). Default False, the official code's choice.
        normalized: the rows already have unit L2 norm (skips a normalised N x D copy).

    Returns:
        (N, k) int64 indices, most similar first.

    Raises:
        ValueError: features not (N, D), or k outside [1, N] ([1, N - 1] without self).
    """
    x = _normalised(features, normalized)
    n = x.shape[0]
    _check_k(n, k, include_self)
    best_val = torch.full((n, k), float("-inf"), device=x.device)
    best_idx = torch.zeros((n, k), dtype=torch.int64, device=x.device)
    diagonal = float("inf") if include_self else float("-inf")
    for i0 in range(0, n, chunk_size):
        xi = x[i0 : i0 + chunk_size]
        for j0 in range(i0, n, chunk_size):
            sims = xi @ x[j0 : j0 + chunk_size].T  # (ci, cj) cosine similarities
            if j0 == i0:
                sims.fill_diagonal_(diagonal)  # force self first, or drop it
            _merge(best_val, best_idx, i0, sims, j0, k)
            if j0 != i0:  # the same block, read by columns, is block (j, i); a contiguous
                # copy: topk along rows of a transposed view is ~1.5x slower
                _merge(best_val, best_idx, j0, sims.T.contiguous(), i0, k)
    return best_idx


@torch.no_grad()
def knn_cosine_query(
    queries: Tensor, database: Tensor, k: int, *, chunk_size: int = 1024
) -> Tensor:
    """(Q, k) int64 indices of the k database rows most cosine-similar to each query row.

    Chunked over queries: O(chunk_size x N) transient memory, never Q x N.
    """
    q, db = _normalised(queries, False), _normalised(database, False)
    if not 1 <= k <= db.shape[0]:
        raise ValueError(f"k={k}: need 1 <= k <= {db.shape[0]} database rows")
    out = [
        torch.topk(q[i : i + chunk_size] @ db.T, k, dim=1).indices
        for i in range(0, q.shape[0], chunk_size)
    ]
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.int64)


@torch.no_grad()
def brute_force_knn(features: Tensor, k: int, *, include_self: bool = False) -> Tensor:
    """Reference for tests: the full N x N float64 similarity matrix, then top-k.

    O(N^2) memory: small N only.
    """
    x = F.normalize(features.double(), dim=1)
    _check_k(x.shape[0], k, include_self)
    sims = x @ x.T
    sims.fill_diagonal_(float("inf") if include_self else float("-inf"))
    return torch.topk(sims, k, dim=1).indices


def neighbour_similarities(features: Tensor, indices: Tensor, rows: Tensor) -> Tensor:
    """Cosine similarity of each of ``rows`` to its listed neighbours: (len(rows), k) float64.

    Used to compare two neighbour lists that may order exact ties differently.
    """
    x = F.normalize(features.double(), dim=1)
    return torch.einsum("rd,rkd->rk", x[rows], x[indices[rows]])


# ------------------------------------------------------------------ faiss (optional)
NEIGHBOUR_SEARCHES = ("exact", "faiss_flat", "faiss_ivf")


def import_faiss(option: str = "neighbour_search"):
    """The ``faiss`` module, or an ImportError that says which option needs it and how to get it."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            f"{option}=faiss_flat/faiss_ivf needs faiss: pip install faiss-cpu (or "
            f"pip install 'gan-suite[ann]'), or set {option}=exact"
        ) from err
    return faiss


def default_nlist(n: int) -> int:
    """IVF cells for n vectors: ~sqrt(n) (faiss's guideline is 4 sqrt(n) to 16 sqrt(n) for
    millions; at 10^4-10^5 vectors of 2048 dims, sqrt(n) keeps the k-means training at a few
    seconds), and at least 39 training points per cell (faiss warns below that)."""
    return max(1, min(round(n**0.5), n // 39))


@torch.no_grad()
def knn_faiss(
    features: Tensor,
    k: int,
    *,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int = 4,
    include_self: bool = False,
    normalized: bool = False,
) -> Tensor:
    """:func:`knn_cosine` through faiss: inner product of the L2-normalised features (= cosine).

    Args:
        features: (N, D) features, any float dtype (searched in float32 on the CPU).
        k: neighbours per instance.
        index: ``flat`` (exact, ``IndexFlatIP``) or ``ivf`` (approximate, ``IndexIVFFlat``
            with an inner-product k-means quantizer; its k-means is seeded, so the result is
            the same on every run and rank).
        nlist: IVF cells (default :func:`default_nlist`). nprobe: cells scanned per query.
        include_self / normalized: as in :func:`knn_cosine`.

    Returns:
        (N, k) int64 indices, most similar first. Without ``include_self`` the instance is
        dropped from its k + 1 results (the official code's rule) or, where an IVF probe
        missed it, the (k + 1)-th result is.

    Raises:
        ImportError: faiss is not installed (names the option and ``pip install faiss-cpu``).
        ValueError: bad shape, k, index, nlist or nprobe; or an IVF search that found fewer
            than k neighbours for some instance (the message says to raise nprobe).
    """
    if index not in ("flat", "ivf"):
        raise ValueError(f"index={index!r}: expected 'flat' or 'ivf'")
    faiss = import_faiss()
    x = _normalised(features, normalized).detach().cpu().contiguous().numpy()
    n, dim = x.shape
    _check_k(n, k, include_self)
    if index == "flat":
        search = faiss.IndexFlatIP(dim)
    else:
        nlist = default_nlist(n) if nlist is None else nlist
        if not 1 <= nlist <= n or nprobe < 1:
            raise ValueError(
                f"neighbour_nlist={nlist}, neighbour_nprobe={nprobe}: need 1 <= nlist <= "
                f"{n} (the number of features) and nprobe >= 1"
            )
        search = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        search.cp.seed = 0  # deterministic k-means: every DDP rank builds the same cells
        search.train(x)
        search.nprobe = min(nprobe, nlist)
    search.add(x)
    _, found = search.search(x, min(k + 1, n))
    idx = torch.from_numpy(found).long()  # (N, k + 1); -1 where an IVF probe found too few
    rows = torch.arange(n)[:, None]
    is_self = idx == rows
    if include_self:  # self first, then the others in order
        others = _drop_one_per_row(idx, is_self)
        out = torch.cat([rows, others[:, : k - 1]], dim=1)
    else:
        out = _drop_one_per_row(idx, is_self)[:, :k]
    if (out < 0).any():
        short = int((out < 0).any(dim=1).sum())
        raise ValueError(
            f"faiss_ivf found fewer than k={k} neighbours for {short} of {n} instances "
            f"(nlist={nlist}, nprobe={nprobe}): raise neighbour_nprobe or lower neighbour_nlist"
        )
    return out


def _drop_one_per_row(idx: Tensor, is_self: Tensor) -> Tensor:
    """(N, m) -> (N, m - 1): removes the instance itself where found, else the last column."""
    drop = is_self.clone()
    drop[~is_self.any(dim=1), -1] = True
    return idx[~drop].view(idx.shape[0], idx.shape[1] - 1)


def knn_search(
    features: Tensor,
    k: int,
    *,
    search: str = "exact",
    chunk_size: int = 4096,
    nlist: int | None = None,
    nprobe: int = 4,
    include_self: bool = False,
    normalized: bool = False,
) -> Tensor:
    """IC-GAN's neighbourhoods by the chosen ``search`` (one of :data:`NEIGHBOUR_SEARCHES`):
    ``exact`` = :func:`knn_cosine` (torch), ``faiss_flat`` / ``faiss_ivf`` = :func:`knn_faiss`.

    Returns (N, k) int64 indices on the features' device. Raises ValueError for an unknown
    ``search`` (names the option), and whatever the chosen search raises.
    """
    if search == "exact":
        return knn_cosine(
            features, k, chunk_size=chunk_size, include_self=include_self, normalized=normalized
        )
    if search not in NEIGHBOUR_SEARCHES:
        raise ValueError(f"neighbour_search={search!r}: expected one of {NEIGHBOUR_SEARCHES}")
    out = knn_faiss(
        features,
        k,
        index=search.removeprefix("faiss_"),
        nlist=nlist,
        nprobe=nprobe,
        include_self=include_self,
        normalized=normalized,
    )
    return out.to(features.device)


# ------------------------------------------------------------------ instance features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNet50Features(torch.nn.Module):
    """torchvision ResNet-50 trunk: [-1, 1] images -> (N, 2048) globally pooled features.

    IC-GAN conditions on the pooled features of a self-supervised (SwAV) ResNet-50 at 224 px;
    images are resized to ``input_size`` and normalised with the ImageNet statistics.
    """

    num_features = 2048

    def __init__(self, net: torch.nn.Module, input_size: int = 224) -> None:
        super().__init__()
        self.net, self.input_size = net.eval(), input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> ResNet50Features:
        return super().train(False)  # frozen: BN statistics must not move

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = (images.float() + 1) / 2
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        return self.net((x - self.mean) / self.std)


def load_resnet50_features(weights: str | None, input_size: int = 224) -> ResNet50Features:
    """A ResNet-50 feature extractor with weights from a local file (never downloaded).

    Accepts a plain torchvision state dict or a training checkpoint holding one under
    ``state_dict`` (SwAV/MoCo style, ``module.`` prefixes stripped); heads other than the
    trunk (``fc``, projection heads, prototypes) are ignored.

    Raises:
        FileNotFoundError: ``weights`` is not an existing file (the message names it).
        ValueError: no path given, or the file lacks trunk weights (names the missing keys).
    """
    from pathlib import Path

    from torchvision.models import resnet50

    if not weights:
        raise ValueError(
            "feature_extractor='resnet50' needs feature_weights: the path of a local ResNet-50 "
            "state dict (e.g. SwAV's swav_800ep_pretrain.pth.tar, as IC-GAN uses)"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ResNet-50 weights file {str(path)!r} not found (feature_weights); nothing is "
            "downloaded at run time: copy the file there, or use feature_extractor='evaluator'"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = resnet50(weights=None)
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.") and k in net.state_dict()}
    missing = [k for k in net.state_dict() if not k.startswith("fc.") and k not in trunk]
    if missing:
        raise ValueError(f"{str(path)!r} is not a ResNet-50 state dict: missing {missing[:5]}...")
    net.load_state_dict(trunk, strict=False)
    net.fc = torch.nn.Identity()
    return ResNet50Features(net, input_size)


@torch.no_grad()
def extract_features(
    extractor: torch.nn.Module, dataset, batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """L2-normalised features of every item of ``dataset`` (in order) and its labels.

    Returns (N, D) float32 features on ``device`` and (N,) int64 true labels on CPU (-1 where
    the items carry no class label). One pass, batched, no gradients.
    """
    from torch.utils.data import DataLoader

    feats, labels = [], []
    for batch in DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=0, generator=torch.Generator()
    ):
        feats.append(F.normalize(extractor(batch["image"].to(device)).float(), dim=1))
        label = batch.get("label_true", batch.get("label"))
        if label is None or label.dim() != 1:  # attribute vectors are not classes
            label = torch.full((batch["image"].shape[0],), -1)
        labels.append(label.long().cpu())
    return torch.cat(feats), torch.cat(labels)
