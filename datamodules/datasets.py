"""Map-style datasets over ``Domain`` pairs: unaligned (random B), aligned, single-domain.

Every item is a dict; see ``datamodules/__init__.py`` for the batch keys. Randomness (which B
is drawn, crops, flips) comes from torch's global generator, which Lightning seeds per worker
and per epoch, so it differs across workers and epochs yet is reproducible under
``seed_everything(workers=True)``.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import torch
from torch.utils.data import Dataset

from .domain import Domain, Sample
from .transforms import PAIR_IMAGE_KEY, PAIR_MASK_KEY, apply, item_seed


def _encode(side: str, sample: Sample, image: torch.Tensor, mask: Any | None) -> dict[str, Any]:
    """Batch entries of one side (``"A"`` or ``"B"``) of an item."""
    item: dict[str, Any] = {side: image, f"{side}_path": sample.path}
    if mask is not None:
        item[f"{side}_mask"] = mask
    if sample.label is not None:
        item[f"{side}_label"] = sample.label
    return item


def _transform_one(transform: A.Compose, side: str, sample: Sample) -> dict[str, Any]:
    targets = {"image": sample.image}
    if sample.mask is not None:
        targets["mask"] = sample.mask
    out = apply(transform, item_seed(transform), **targets)
    return _encode(side, sample, out["image"], out.get("mask"))


class SingleDomainDataset(Dataset):
    """All images of one domain, e.g. every test B image for FID; keys ``<side>*`` only."""

    def __init__(self, domain: Domain, transform: A.Compose, side: str = "A") -> None:
        self.domain, self.transform, self.side = domain, transform, side

    def __len__(self) -> int:
        return len(self.domain)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _transform_one(self.transform, self.side, self.domain.load(index))


class UnpairedDataset(Dataset):
    """CycleGAN's unaligned dataset: ``A[i % len(A)]`` with a B drawn at random.

    ``len = max(len(A), len(B))`` so one epoch visits every image of the larger domain.
    A and B are augmented independently (their own crop and flip), as in the paper.

    Args:
        domain_a: Images of domain A.
        domain_b: Images of domain B.
        transform: Single-image pipeline from ``build_transform(paired=False)``.
        serial_batches: Take ``B[i % len(B)]`` instead of a random B (CycleGAN's option).
    """

    def __init__(
        self,
        domain_a: Domain,
        domain_b: Domain,
        transform: A.Compose,
        serial_batches: bool = False,
    ) -> None:
        self.domain_a, self.domain_b = domain_a, domain_b
        self.transform = transform
        self.serial_batches = serial_batches

    def __len__(self) -> int:
        return max(len(self.domain_a), len(self.domain_b))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index_a = index % len(self.domain_a)
        if self.serial_batches:
            index_b = index % len(self.domain_b)
        else:
            # Drawn per call, not precomputed: a fixed permutation would pair the same A and B
            # in every epoch.
            index_b = int(torch.randint(len(self.domain_b), ()).item())
        item = _transform_one(self.transform, "A", self.domain_a.load(index_a))
        item.update(_transform_one(self.transform, "B", self.domain_b.load(index_b)))
        return item


class AlignedDataset(Dataset):
    """Pairs ``A[i]`` with ``B[i]`` and gives both the identical crop and flip.

    Length is ``min(len(A), len(B))``. When both domains read the same file (pix2pix ``AB``
    images) the file is decoded once.

    Args:
        domain_a: Images of domain A.
        domain_b: Images of domain B, in the same order.
        transform: Joint pipeline from ``build_transform(paired=True)``.
    """

    def __init__(self, domain_a: Domain, domain_b: Domain, transform: A.Compose) -> None:
        self.domain_a, self.domain_b = domain_a, domain_b
        self.transform = transform

    def __len__(self) -> int:
        return min(len(self.domain_a), len(self.domain_b))

    def __getitem__(self, index: int) -> dict[str, Any]:
        shared = self.domain_a.paths[index] == self.domain_b.paths[index]
        decoded = self.domain_a.read_image(index) if shared else None
        sample_a = self.domain_a.load(index, image=decoded)
        sample_b = self.domain_b.load(index, image=decoded)
        targets = {"image": sample_a.image, PAIR_IMAGE_KEY: sample_b.image}
        if sample_a.mask is not None:
            targets["mask"] = sample_a.mask
        if sample_b.mask is not None:
            targets[PAIR_MASK_KEY] = sample_b.mask
        out = apply(self.transform, item_seed(self.transform), **targets)
        item = _encode("A", sample_a, out["image"], out.get("mask"))
        item.update(_encode("B", sample_b, out[PAIR_IMAGE_KEY], out.get(PAIR_MASK_KEY)))
        return item
