"""Building blocks of the labelled data module: one split's items, seeded stratified
sub-sampling (validation carve-out and the labelled/unlabelled split, proportional or even
over classes), the labelled-list file, and the Dataset.

Kept apart from the sources (``labelled_sources.py``) so every source - folders, MNIST, CelebA,
shapes, digits - only has to describe its items as a ``LabelledSplit``; splitting, hiding
labels and augmentation then happen once, here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from gan_suite.utils import atomic_write

from .io import check_images, check_masks, read_mask, read_rgb, read_text
from .labelled_celeba import AnnotationError
from .transforms import apply, build_transform, draw_seed

Normalize = Literal["tanh", "unit"]
LabelKind = Literal["class", "attributes"]

# ITU-R BT.601 luma weights (what Pillow's convert("L") uses); they sum to 1, so applying them
# after the [-1, 1] normalisation gives the same result as before it.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


@dataclass(frozen=True)
class LabelledSplit:
    """The items of one split of a labelled source, as aligned arrays.

    Attributes:
        images: Image files, or a uint8 array ``(N, H, W)`` (grayscale) / ``(N, H, W, 3)``.
        labels: int64 ``(N,)`` class indices or float32 ``(N, K)`` 0/1 attribute vectors.
        attributes: float32 ``(N, K)`` attribute vectors served beside a class label (shapes).
        masks: Semantic mask file per image (shapes), or None.
        domains: int64 ``(N,)`` style domain per item (shapes with ``domain="both"``), or None.
        groups: int64 ``(N,)``: items sharing a group (the A and B image of one scene) always
            land on the same side of every split, so no scene is both labelled and unlabelled.
        keys: Stable name of each item (see ``item_keys``), used by the labelled-list file.
    """

    images: tuple[Path, ...] | np.ndarray
    labels: np.ndarray
    attributes: np.ndarray | None = None
    masks: tuple[Path, ...] | None = None
    domains: np.ndarray | None = None
    groups: np.ndarray | None = None
    keys: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> LabelledSplit:
        """The items where the boolean mask (or index array) ``keep`` selects."""
        index = np.flatnonzero(keep) if keep.dtype == bool else keep

        def take(values: Any) -> Any:
            if values is None:
                return None
            if isinstance(values, tuple):
                return tuple(values[i] for i in index)
            return values[index]

        return replace(
            self,
            images=take(self.images),
            labels=take(self.labels),
            attributes=take(self.attributes),
            masks=take(self.masks),
            domains=take(self.domains),
            groups=take(self.groups),
            keys=take(self.keys),
        )

    def check(self) -> None:
        """Open every image file's and mask's header (not the pixels), so a broken file or a
        mask of the wrong size or mode fails at ``setup()``, naming the file; in-memory
        images (MNIST) need no check.

        Raises:
            ImageReadError: A file that cannot be served (see ``io.probe_image``).
            DatasetLayoutError: A listed file is gone, or a mask's size differs from its
                image's.
        """
        if not isinstance(self.images, tuple):
            return
        sizes = check_images(self.images)
        if self.masks is not None:
            check_masks(self.images, self.masks, sizes)

    def image(self, index: int) -> np.ndarray:
        """Item ``index`` as an ``(H, W, 3)`` uint8 array (grayscale replicated)."""
        if isinstance(self.images, tuple):
            return read_rgb(self.images[index])
        image = self.images[index]
        return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def strata(labels: np.ndarray) -> np.ndarray:
    """Stratum id per item: the class, or the full 0/1 pattern of an attribute vector."""
    if labels.ndim == 1:
        return labels.astype(np.int64)
    return np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1)


def stratified_choice(
    strata_ids: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
    at_least_one: bool = True,
) -> np.ndarray:
    """Boolean mask choosing ``round(fraction * count)`` groups of every stratum at random.

    Args:
        strata_ids: Stratum of each item (a group's stratum is that of its first item).
        fraction: Share of each stratum to choose.
        rng: Source of randomness; the choice depends only on it and the inputs.
        groups: Group of each item (all of a group is chosen or none); default one per item.
        at_least_one: Choose at least one group of every stratum even where the rounded
            share is 0 (a labelled subset must show every class).
    """
    groups = np.arange(len(strata_ids)) if groups is None else groups
    unique_groups, first = np.unique(groups, return_index=True)
    group_strata = strata_ids[first]
    chosen = []
    for stratum in np.unique(group_strata):  # sorted, so the draw order is fixed
        members = unique_groups[group_strata == stratum]
        # Half-up rounding: Python's round() would send 0.5 to 0 for even counts.
        quota = int(np.floor(fraction * len(members) + 0.5))
        if at_least_one:
            quota = max(quota, 1)
        chosen.append(rng.permutation(members)[:quota])
    picked = np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)
    return np.isin(groups, picked)


def carve_validation(
    train: LabelledSplit, fraction: float, seed: int
) -> tuple[LabelledSplit, LabelledSplit]:
    """Split a seeded, class-stratified ``fraction`` off ``train`` as the validation set.

    Used where a source ships no validation split. At least one item goes to validation when
    the train set has two or more, so a validation loop always has something to run on.
    """
    rng = np.random.default_rng([seed, 1])
    val = stratified_choice(
        strata(train.labels), fraction, rng, groups=train.groups, at_least_one=False
    )
    if fraction > 0 and not val.any() and len(train) > 1:
        groups = np.arange(len(train)) if train.groups is None else train.groups
        val = groups == groups[int(rng.integers(len(train)))]
    return train.subset(~val), train.subset(val)


def labelled_mask(train: LabelledSplit, fraction: float, seed: int) -> np.ndarray:
    """Which training items keep their labels: ``round(fraction * count)`` of every stratum
    (class, or attribute pattern), at least one each, chosen by ``seed``."""
    if fraction >= 1.0:
        return np.ones(len(train), dtype=bool)
    rng = np.random.default_rng([seed, 2])
    return stratified_choice(strata(train.labels), fraction, rng, groups=train.groups)


def even_labelled_mask(train: LabelledSplit, fraction: float, seed: int) -> np.ndarray:
    """Which training items keep their labels, drawn *evenly over strata* (MatchGAN's
    ``subsample.py``): each stratum's items in a seeded random order, then round-robin - pass
    0 takes the first item of every stratum, pass 1 the second of every stratum that still
    has one, ... - until ``round(fraction * n)`` are taken (at least one per stratum).

    Rare strata give all they have, common ones the same number each (e.g. strata of 50, 10
    and 2 items with 12 to take give 5, 5, 2). The strata of the last, partial pass are taken
    in a seeded order. With ``train.groups`` a group (the A and B image of one scene) is one
    unit: ``n`` counts groups and a group is taken whole.
    """
    if fraction >= 1.0:
        return np.ones(len(train), dtype=bool)
    groups = np.arange(len(train)) if train.groups is None else train.groups
    unique_groups, first = np.unique(groups, return_index=True)
    group_strata = strata(train.labels)[first]
    classes = np.unique(group_strata)
    # Half-up rounding, as in stratified_choice.
    count = max(int(np.floor(fraction * len(unique_groups) + 0.5)), len(classes))
    rng = np.random.default_rng([seed, 4])
    turn = rng.permutation(len(classes))  # place of each stratum within a pass
    passes = np.empty(len(unique_groups), dtype=np.int64)  # the pass that reaches each group
    places = np.empty(len(unique_groups), dtype=np.int64)
    for c, stratum in enumerate(classes):
        members = rng.permutation(np.flatnonzero(group_strata == stratum))
        passes[members] = np.arange(len(members))
        places[members] = turn[c]
    order = np.lexsort((places, passes))  # by pass, then by the stratum's place
    return np.isin(groups, unique_groups[order[:count]])


# ------------------------------------------------------------------ labelled-list files
def item_keys(split: LabelledSplit, name: str, root: Path | None) -> tuple[str, ...]:
    """A stable name per item: the image file relative to the dataset ``root`` (POSIX
    separators), or ``"<name>/<index>"`` (position in split ``name`` as the source ships it)
    for in-memory images."""
    if not isinstance(split.images, tuple):
        return tuple(f"{name}/{i}" for i in range(len(split)))
    return tuple(_relative(Path(path), root) for path in split.images)


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        for base, target in ((root, path), (root.resolve(), path.resolve())):
            if target.is_relative_to(base):
                return target.relative_to(base).as_posix()
    return path.as_posix()


def load_labelled_list(path: Path, keys: Sequence[str]) -> np.ndarray:
    """Boolean mask of the items named in ``path`` (one key per line; blank lines and
    ``#`` comments skipped). An entry that is not in ``keys`` raises, naming file and line."""
    where = {key: i for i, key in enumerate(keys)}
    mask = np.zeros(len(keys), dtype=bool)
    text = read_text(path, "one training item per line (data.init_args.labelled_list)")
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry not in where:
            example = f" (e.g. {keys[0]!r})" if len(keys) else ""
            raise AnnotationError(
                f"labelled list {str(path)!r} (data.init_args.labelled_list) line {number}: "
                f"{entry!r} is not an item of the training split; expected one training item "
                f"per line{example}"
            )
        mask[where[entry]] = True
    if not mask.any():
        raise AnnotationError(
            f"labelled list {str(path)!r} (data.init_args.labelled_list) names no training item"
        )
    return mask


def read_list_header(path: Path) -> dict[str, str]:
    """The ``key=value`` pairs of the first line of a labelled list, if it is a comment."""
    lines = read_text(path, "one training item per line").splitlines()
    first = lines[0].strip() if lines else ""
    if not first.startswith("#"):
        return {}
    pairs = (token.split("=", 1) for token in first[1:].split() if "=" in token)
    return dict(pairs)


def save_labelled_list(
    path: Path, keys: Sequence[str], mask: np.ndarray, header: Mapping[str, Any]
) -> None:
    """Write the keys where ``mask`` is True, one per line, under a ``# key=value ...``
    header line; atomically, so a concurrent reader (another rank) never sees half a list."""
    lines = ["# " + " ".join(f"{k}={v}" for k, v in header.items())]
    lines += [keys[i] for i in np.flatnonzero(mask)]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


class LabelledTransform:
    """Resize (+ optional flip) with the shared albumentations pipeline, then convert to the
    requested channels and value range.

    Reuses ``build_transform`` (RGB, [-1, 1]) with ``load_size == crop_size`` so the random
    crop is a no-op; grayscale and [0, 1] outputs are derived from its tensor, which keeps one
    pipeline for every data module.
    """

    def __init__(
        self,
        image_size: int,
        *,
        flip: bool,
        train: bool,
        channels: int,
        normalize: Normalize,
        center_crop: int | None = None,
    ) -> None:
        self.pipeline: A.Compose = build_transform(
            load_size=image_size,
            crop_size=image_size,
            flip=flip,
            train=train,
            center_crop=center_crop,
        )
        self.image_size, self.channels, self.normalize = image_size, channels, normalize
        self.center_crop = center_crop
        # train with load == crop: the random crop is a no-op, only the flip draws
        self.deterministic = not (train and flip)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        crop = self.center_crop
        if crop is not None and min(image.shape[:2]) < crop:
            raise ValueError(
                f"data.center_crop={crop} is larger than an image of "
                f"{image.shape[1]}x{image.shape[0]} px: give a side <= the smallest image side "
                "(StarGAN's CelebA: 178 of 178x218)"
            )
        targets = {"image": image} if mask is None else {"image": image, "mask": mask}
        # a deterministic pipeline draws nothing from the global stream: LabelledDataset then
        # serves cached items without a draw, and the stream must not depend on the cache
        # (a resumed run starts with an empty one)
        seed = 0 if self.deterministic else draw_seed()
        out = apply(self.pipeline, seed, **targets)
        tensor = out["image"]  # (3, H, W) in [-1, 1]
        if self.channels == 1:
            tensor = (tensor * _LUMA).sum(dim=0, keepdim=True)
        if self.normalize == "unit":
            tensor = (tensor + 1.0) / 2.0
        out["image"] = tensor.clamp_(-1.0 if self.normalize == "tanh" else 0.0, 1.0)
        return out


def _hidden(value: torch.Tensor) -> torch.Tensor:
    """What an unlabelled item shows in place of an annotation: -1 for a class index and
    for mask pixels (the usual ``ignore_index``), zeros for an attribute vector."""
    if value.is_floating_point():
        return torch.zeros_like(value)
    return torch.full_like(value, -1)


class LabelledDataset(Dataset):
    """Items of one ``LabelledSplit`` as batch dicts (keys: see ``datamodules.labelled``).

    Args:
        split: The items.
        transform: A ``LabelledTransform``.
        labelled: Boolean per item; False hides its annotations (``label``, ``attributes``,
            ``mask``) and keeps the truth only under ``<key>_true``. None = all labelled.
    """

    #: transformed images kept per dataset at most (bytes), see ``_cacheable``
    CACHE_LIMIT = 512 * 2**20

    def __init__(
        self,
        split: LabelledSplit,
        transform: LabelledTransform,
        labelled: np.ndarray | None = None,
    ) -> None:
        self.split, self.transform = split, transform
        self.labelled = np.ones(len(split), dtype=bool) if labelled is None else labelled
        self._cache: dict[int, torch.Tensor] | None = {} if self._cacheable() else None

    def _cacheable(self) -> bool:
        """Images under a deterministic transform are decoded and transformed once and kept
        while the split fits in ``CACHE_LIMIT`` (in-memory MNIST, the embedded digits): the
        per-item PNG decode and albumentations call cost more than a small MLP's training step
        (cGAN: 12 against 19 iterations/s). Masks, random flips and large splits (CelebA) are
        read every time."""
        split, tf = self.split, self.transform
        if split.masks is not None:
            return False
        if not getattr(tf, "deterministic", False):
            return False
        return len(split) * tf.channels * tf.image_size**2 * 4 <= self.CACHE_LIMIT

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        split = self.split
        mask = None if split.masks is None else read_mask(split.masks[index])
        cache = self._cache
        if cache is not None and index in cache:
            image = cache[index]
        else:
            out = self.transform(split.image(index), mask)
            image = out["image"]
            if cache is not None:
                cache[index] = image
        labelled = bool(self.labelled[index])
        item: dict[str, Any] = {"image": image.clone(), "index": index, "labelled": labelled}
        annotations = {"label": torch.as_tensor(split.labels[index])}
        if split.attributes is not None:
            annotations["attributes"] = torch.as_tensor(split.attributes[index])
        if mask is not None:  # never cached: ``out`` is this call's
            annotations["mask"] = out["mask"]
        for key, value in annotations.items():
            item[f"{key}_true"] = value
            item[key] = value if labelled else _hidden(value)
        if split.domains is not None:
            item["domain"] = int(split.domains[index])
        return item
