"""Instance-conditioned training data (IC-GAN, Casanova et al. 2021, section 2.1, eq. 2).

Each training item i is an instance with features h_i and a neighbourhood A_i (the indices of
its k nearest training instances). :class:`NeighbourhoodDataset` serves, for instance i, h_i
and ``draws`` neighbours x_j with j drawn uniformly from A_i, so the loader workers read the
neighbour images instead of the training step (one fresh draw per D step when
``draws = n_d_steps``). The features and neighbourhoods are computed once, outside the data
module (they need the feature extractor), and handed over with
:meth:`~datamodules.LabelledDataModule.set_instance_neighbourhoods`.

Randomness: j comes from torch's global stream of the process serving the item, which is the
loader worker's (seeded per worker and rank by Lightning's ``seed_everything(workers=True)``)
or, with ``num_workers=0``, the main process's (offset per rank by the suite's GANModule).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


class NeighbourhoodDataset(Dataset):
    """Instance i -> h_i and ``draws`` neighbours drawn uniformly from A_i.

    Args:
        base: the training images; ``base[j]`` is a dict with ``"image"`` (C, H, W) and
            ``"label"`` (int, -1 when hidden).
        features: (N, D) instance features h (L2-normalised), N = len(base).
        neighbours: (N, k) int64 indices into ``base``: A_i for every i.
        draws: neighbours per item (the D steps of one iteration).

    Items: ``{"index": i, "instance_features": (D,), "image": (draws, C, H, W),
    "label": (draws,) int64, "neighbour_index": (draws,) int64}``.

    Raises:
        ValueError: ``features`` or ``neighbours`` do not have one row per item of ``base``,
            or a neighbour index is outside ``base``.
    """

    def __init__(self, base: Dataset, features: Tensor, neighbours: Tensor, draws: int = 1):
        if not len(features) == len(neighbours) == len(base):
            raise ValueError(
                f"instance neighbourhoods: {len(features)} feature rows and {len(neighbours)} "
                f"neighbourhoods for {len(base)} training items; they must agree (a stale "
                "feature cache? delete it)"
            )
        if neighbours.ndim != 2 or neighbours.shape[1] == 0:
            raise ValueError(
                f"instance neighbourhoods: expected (N, k) neighbour indices with k >= 1, got "
                f"shape {tuple(neighbours.shape)}"
            )
        if len(neighbours) and (int(neighbours.min()) < 0 or int(neighbours.max()) >= len(base)):
            raise ValueError(
                f"instance neighbourhoods: neighbour indices span {int(neighbours.min())}.."
                f"{int(neighbours.max())} but there are {len(base)} training items; expected "
                f"indices in 0..{len(base) - 1} (a stale feature cache? delete it)"
            )
        self.base, self.features, self.neighbours = base, features.cpu(), neighbours.cpu()
        self.draws = draws

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Tensor | int]:
        rows = torch.randint(0, self.neighbours.shape[1], (self.draws,))
        j = self.neighbours[i, rows]
        items = [self.base[int(t)] for t in j]
        return {
            "index": i,
            "instance_features": self.features[i],
            "image": torch.stack([torch.as_tensor(it["image"]) for it in items]),
            "label": torch.as_tensor([int(it["label"]) for it in items], dtype=torch.long),
            "neighbour_index": j,
        }
