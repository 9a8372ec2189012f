"""One image collection of a dataset (e.g. ``trainA``) plus its optional side information.

Side information is looked up beside the layout root, by split and file stem:

- ``<root>/masks/<split>/<stem>.png`` semantic masks (used only if *every* image has one, so
  all items of a dataset carry the same keys and default collation works);
- ``<root>/scenes.json`` (the embedded shapes metadata) for an integer class ``label``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from .decoded import DecodedCache
from .io import (
    DatasetLayoutError,
    check_images,
    check_masks,
    is_image_file,
    list_images,
    read_mask,
    read_rgb,
    size_mismatch,
)

Half = Literal["left", "right"] | None


@dataclass(frozen=True)
class Sample:
    """One decoded image with whatever side information exists for it."""

    image: np.ndarray  # (H, W, 3) uint8
    path: str
    mask: np.ndarray | None = None  # (H, W) uint8
    label: int | None = None


@dataclass(frozen=True)
class Domain:
    """Sorted image files of one domain and split, with aligned side-information lists.

    Attributes:
        paths: Image files, sorted by name.
        masks: Mask file per image, or None when the dataset has no (complete) masks.
        labels: Class label per image, or None.
        half: For pix2pix ``AB`` images: which half of the side-by-side image this domain is.
        cache: Decoded images and masks kept in memory (``cache_images``), or None to decode
            every time.
    """

    paths: tuple[Path, ...]
    masks: tuple[Path, ...] | None = None
    labels: tuple[int, ...] | None = None
    half: Half = None
    cache: DecodedCache | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, n: int | None) -> Domain:
        """The first ``n`` items (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return replace(
            self,
            paths=self.paths[:n],
            masks=None if self.masks is None else self.masks[:n],
            labels=None if self.labels is None else self.labels[:n],
        )

    def check(self) -> list[tuple[int, int]]:
        """Open every image's and mask's header (not the pixels) so that a broken, truncated
        or wrong-mode file, or a mask whose size differs from its image, fails here - at a
        data module's ``setup()`` - naming the file, instead of in the middle of an epoch.

        Raises:
            ImageReadError: A file that cannot be served (see ``io.probe_image``).
            DatasetLayoutError: A listed file is gone, or a mask's size differs from its
                image's (both as displayed, EXIF orientation applied).

        Returns:
            The displayed ``(width, height)`` of every image, in order.
        """
        sizes = check_images(self.paths)
        if self.masks is not None:
            check_masks(self.paths, self.masks, sizes)
        return sizes

    def read_image(self, index: int) -> np.ndarray:
        """The whole decoded file of item ``index``, ``(H, W, 3)`` uint8 (a copy of the cached
        array when there is a cache)."""
        path = self.paths[index]
        return read_rgb(path) if self.cache is None else self.cache.read(path, read_rgb)

    def load(self, index: int, image: np.ndarray | None = None) -> Sample:
        """Decode item ``index``; ``image`` lets a caller pass an already decoded file."""
        path = self.paths[index]
        if image is None:
            image = self.read_image(index)
        mask = None
        if self.masks is not None:
            mask_path = self.masks[index]
            cache = self.cache
            mask = read_mask(mask_path) if cache is None else cache.read(mask_path, read_mask)
        if self.half is not None:
            image = _split_half(image, self.half)
        if mask is not None and mask.shape != image.shape[:2]:
            raise DatasetLayoutError(
                size_mismatch(self.masks[index], mask.shape[1::-1], path, image.shape[1::-1])
            )
        label = None if self.labels is None else self.labels[index]
        return Sample(image=image, path=str(path), mask=mask, label=label)


def _split_half(image: np.ndarray, half: Literal["left", "right"]) -> np.ndarray:
    width = image.shape[1] // 2
    return image[:, :width] if half == "left" else image[:, width : 2 * width]


def load_labels(root: Path) -> dict[str, dict[str, int]] | None:
    """``{split: {stem: label}}`` from ``<root>/scenes.json``, or None if there is none.

    Records without a ``label`` (the textures, the faces) are left out: such a dataset has
    scenes.json (and so an evaluator of its domains) but no class labels."""
    path = root / "scenes.json"
    if not path.is_file():
        return None
    with path.open() as f:
        meta = json.load(f)
    return {
        split: {r["id"]: int(r["label"]) for r in records if r.get("label") is not None}
        for split, records in meta.get("splits", {}).items()
    }


def scan_domain(
    root: Path,
    folder: str,
    split: str,
    *,
    expected: str,
    labels: dict[str, dict[str, int]] | None = None,
    half: Half = None,
) -> Domain:
    """List ``root/folder`` and attach masks/labels found for ``split``.

    Args:
        root: Layout root (the folder holding ``trainA`` etc.).
        folder: Image folder name relative to ``root``.
        split: Split name used to look up side information (``train``, ``val``, ``test``).
        expected: Layout description for error messages.
        labels: Output of ``load_labels(root)``.
        half: Which half of side-by-side images this domain reads.
    """
    paths = tuple(list_images(root / folder, expected))
    stems = [p.stem for p in paths]
    masks = None
    mask_dir = root / "masks" / split
    if half is None and mask_dir.is_dir():
        available = {p.stem: p for p in mask_dir.glob("*.png") if is_image_file(p)}
        if all(s in available for s in stems):
            masks = tuple(available[s] for s in stems)
    split_labels = (labels or {}).get(split)
    domain_labels = None
    if split_labels is not None and all(s in split_labels for s in stems):
        domain_labels = tuple(split_labels[s] for s in stems)
    return Domain(paths=paths, masks=masks, labels=domain_labels, half=half)
