"""The on-disk layouts of segmentation datasets and their label maps (BDL's data).

GTA5 and Cityscapes label ids, and SYNTHIA's, map to the 19 Cityscapes training classes (ids
without a class -> 255, the ignore index); an id a dataset does not define raises
:class:`LabelError` naming the file. Each finder returns :class:`LabelledFiles`: the images of
a split, their label files and how to decode one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .io import (
    DatasetLayoutError,
    check_images,
    exif_orientation,
    is_image_file,
    is_system_entry,
    list_images,
    orient_array,
    read_mask,
    require_dir,
    size_mismatch,
)
from .transforms import cv2

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic_light",
    "traffic_sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
#: Cityscapes label id -> training id (cityscapesScripts); GTA5 labels use the same ids.
CITYSCAPES_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
#: SYNTHIA class id -> Cityscapes training id (the mapping of BDL's official SYNTHIA loader).
SYNTHIA_TRAIN_IDS = {
    3: 0,
    4: 1,
    2: 2,
    21: 3,
    5: 4,
    7: 5,
    15: 6,
    9: 7,
    6: 8,
    16: 9,
    1: 10,
    10: 11,
    17: 12,
    8: 13,
    18: 14,
    19: 15,
    20: 16,
    12: 17,
    11: 18,
}
IGNORE_INDEX = 255


class LabelError(ValueError):
    """A label map holds an id the dataset does not define, or does not fit its image."""


def lookup_table(mapping: dict[int, int], n_ids: int) -> np.ndarray:
    """A (65536,) id -> train-id table: mapped ids, 255 for known ids without a class, -1 for
    ids the dataset does not define (255 stays 255)."""
    table = np.full(65536, -1, dtype=np.int32)
    table[:n_ids] = IGNORE_INDEX
    table[IGNORE_INDEX] = IGNORE_INDEX
    for source_id, train_id in mapping.items():
        table[source_id] = train_id
    return table


@dataclass(frozen=True)
class LabelledFiles:
    """Images of one split, with their label files (None: unlabelled) and how to decode one.

    ``decode(path)`` returns the (H, W) int64 train-id map or raises :class:`LabelError`."""

    images: tuple[Path, ...]
    labels: tuple[Path, ...] | None
    decode: Callable[[Path], np.ndarray] | None = None
    #: labels are one-channel class-index PNGs (False: SYNTHIA's 16-bit colour PNGs)
    mask_labels: bool = True

    def __len__(self) -> int:
        return len(self.images)

    def label(self, index: int) -> np.ndarray:
        return self.decode(self.labels[index])


def id_decoder(table: np.ndarray, what: str, reader: Callable[[Path], np.ndarray] = read_mask):
    """A ``decode`` that reads a label file with ``reader`` and maps it through ``table``."""

    def decode(path: Path) -> np.ndarray:
        ids = reader(path).astype(np.int64)
        mapped = table[ids]
        if (mapped < 0).any():
            bad = sorted(set(np.unique(ids[mapped < 0]).tolist()))[:5]
            raise LabelError(
                f"label {str(path)!r} holds ids {bad} that {what} does not define; expected "
                f"{what} label ids (each mapped to a training class or to {IGNORE_INDEX})"
            )
        return mapped

    return decode


def read_synthia_label(path: Path) -> np.ndarray:
    """SYNTHIA's 16-bit label PNG: the class id is the first (red) channel.

    Read with OpenCV, as Pillow cuts 16-bit colour channels to 8 bits; OpenCV ignores the
    EXIF orientation with ``IMREAD_UNCHANGED``, so it is applied here as on every image."""
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise LabelError(f"cannot read label {str(path)!r}; expected a SYNTHIA GT/LABELS PNG")
    ids = array[:, :, 2] if array.ndim == 3 else array  # OpenCV gives BGR
    return orient_array(ids, exif_orientation(path))


def _with_labels(images: list[Path], label_of: Callable[[Path], Path], decode) -> LabelledFiles:
    labels = [label_of(p) for p in images]
    missing = [str(p) for p in labels if not p.is_file()]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} label file(s) missing, e.g. {missing[0]!r} for image "
            f"{str(images[labels.index(Path(missing[0]))])!r}"
        )
    return LabelledFiles(tuple(images), tuple(labels), decode)


def find_cityscapes(root: Path, split: str, labelled: bool) -> LabelledFiles:
    expected = (
        f"expected Cityscapes layout: {root}/leftImg8bit/{split}/<city>/*_leftImg8bit.png and "
        f"{root}/gtFine/{split}/<city>/*_gtFine_labelIds.png"
    )
    folder = require_dir(root / "leftImg8bit" / split, expected)
    # pathlib's glob matches hidden names too: skip macOS "._*" forks and system folders.
    images = sorted(
        p
        for p in folder.glob("*/*_leftImg8bit.png")
        if is_image_file(p) and not is_system_entry(p.parent)
    )
    if not images:
        raise DatasetLayoutError(f"no *_leftImg8bit.png under {str(folder)!r}; {expected}")
    if not labelled:
        return LabelledFiles(tuple(images), None)
    decode = id_decoder(lookup_table(CITYSCAPES_TRAIN_IDS, 34), "Cityscapes")

    def label_of(p: Path) -> Path:
        name = p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        return root / "gtFine" / split / p.parent.name / name

    return _with_labels(images, label_of, decode)


def find_flat(root: Path, image_dir: str, label_dir: str, decode, what: str) -> LabelledFiles:
    expected = f"expected {what} layout: {root}/{image_dir}/*.png and {root}/{label_dir}/*.png"
    images = list_images(root / image_dir, expected)
    files = _with_labels(images, lambda p: root / label_dir / f"{p.stem}.png", decode)
    return replace(files, mask_labels=label_dir != "GT/LABELS")


def find_embedded(root: Path, folder: str, split: str, n_classes: int | None) -> LabelledFiles:
    images = list_images(root / folder, f"expected the embedded layout under {root}")
    if n_classes is None:
        return LabelledFiles(tuple(images), None)
    table = np.full(65536, -1, dtype=np.int32)
    table[:n_classes] = np.arange(n_classes)
    decode = id_decoder(table, f"the embedded data ({n_classes} classes)")
    return _with_labels(images, lambda p: root / "masks" / split / f"{p.stem}.png", decode)


def check_files(files: LabelledFiles) -> None:
    """Open every image's and label's header (not the pixels): a broken, truncated or
    wrong-mode file, or a label whose size differs from its image's (as displayed, EXIF
    orientation applied), fails at setup, not at batch 300; the first label is decoded so
    that unknown ids in it fail now too (decoding every label would cost minutes on GTA5).

    Raises:
        ImageReadError: a file that cannot be served (see ``io.probe_image``), e.g. an RGB
            label where one-channel class indices are expected.
        LabelError: a size mismatch or an unknown id, naming the file.
    """
    sizes = check_images(files.images)
    if files.labels is None:
        return
    label_sizes = check_images(files.labels, mask=files.mask_labels)
    for image, size, label, label_size in zip(files.images, sizes, files.labels, label_sizes):
        if size != label_size:
            raise LabelError(size_mismatch(label, label_size, image, size))
    files.label(0)
