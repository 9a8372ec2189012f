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
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        feats.append(F.normalize(extractor(batch["image"].to(device)).float(), dim=1))
        label = batch.get("label_true", batch.get("label"))
        if label is None or label.dim() != 1:  # attribute vectors are not classes
            label = torch.full((batch["image"].shape[0],), -1)
        labels.append(label.long().cpu())
    return torch.cat(feats), torch.cat(labels)
