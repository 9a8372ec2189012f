"""Segmentation domain adaptation data (BDL): labelled source, unlabelled target, and labelled
target validation.

Layouts, as the datasets ship::

    gta5        <source_dir>/images/*.png   <source_dir>/labels/<same name>.png  (Cityscapes ids)
    synthia     <source_dir>/RGB/*.png      <source_dir>/GT/LABELS/<same name>.png  (16-bit,
                class in the first channel; SYNTHIA-RAND-CITYSCAPES)
    cityscapes  <dir>/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
                <dir>/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png

Label ids are mapped to the 19 Cityscapes training classes (ids without a class -> 255, the
ignore index); an id outside the dataset's id range raises, naming the file. With no
``source_dir``/``target_dir`` the embedded data is used (``embedded: {dataset: shapes|digits}``):
the source is domain A with its masks, the target domain B; B's masks serve only validation.

Batch keys. Training: ``source`` (N, 3, Hs, Ws) in [-1, 1], ``source_mask`` (N, Hs, Ws) int64,
``target`` (N, 3, Ht, Wt), ``target_pseudo`` (N, Ht, Wt) once pseudo labels exist, and
``source_path``/``target_path``. Validation/test: ``target`` and ``target_mask`` at the
label's own size (predictions are upsampled to it), ``target_path``.

BDL's loop swaps the source images for their translation F(S) (``use_translated_source``) and
adds pseudo labels (``use_pseudo_labels``), both folders of PNGs named by the image stem. The
training loader does not keep its workers between epochs, so a swap made at an epoch's end is
what the next epoch's workers read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from .base import SplitLoaders
from .catalog import check_embedded, embedded_dataset, materialize_embedded
from .io import IMAGE_EXTENSIONS, DatasetLayoutError, list_images, read_mask, read_rgb, require_dir
from .transforms import A, ToTensorV2, apply, cv2, draw_seed

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
LAYOUTS = ("embedded", "gta5", "synthia", "cityscapes")


class LabelError(ValueError):
    """A label map holds an id the dataset does not define, or does not fit its image."""


def _lookup(mapping: dict[int, int], n_ids: int) -> np.ndarray:
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
    """SYNTHIA's 16-bit label PNG: the class id is the first (red) channel."""
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise LabelError(f"cannot read label {str(path)!r}; expected a SYNTHIA GT/LABELS PNG")
    return array[:, :, 2] if array.ndim == 3 else array  # OpenCV gives BGR


def _with_labels(images: list[Path], label_of: Callable[[Path], Path], decode) -> LabelledFiles:
    labels = [label_of(p) for p in images]
    missing = [str(p) for p in labels if not p.is_file()]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} label file(s) missing, e.g. {missing[0]!r} for image "
            f"{str(images[labels.index(Path(missing[0]))])!r}"
        )
    return LabelledFiles(tuple(images), tuple(labels), decode)


def _cityscapes(root: Path, split: str, labelled: bool) -> LabelledFiles:
    expected = (
        f"expected Cityscapes layout: {root}/leftImg8bit/{split}/<city>/*_leftImg8bit.png and "
        f"{root}/gtFine/{split}/<city>/*_gtFine_labelIds.png"
    )
    folder = require_dir(root / "leftImg8bit" / split, expected)
    images = sorted(folder.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetLayoutError(f"no *_leftImg8bit.png under {str(folder)!r}; {expected}")
    if not labelled:
        return LabelledFiles(tuple(images), None)
    decode = id_decoder(_lookup(CITYSCAPES_TRAIN_IDS, 34), "Cityscapes")

    def label_of(p: Path) -> Path:
        name = p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        return root / "gtFine" / split / p.parent.name / name

    return _with_labels(images, label_of, decode)


def _flat(root: Path, image_dir: str, label_dir: str, decode, what: str) -> LabelledFiles:
    expected = f"expected {what} layout: {root}/{image_dir}/*.png and {root}/{label_dir}/*.png"
    images = list_images(root / image_dir, expected)
    return _with_labels(images, lambda p: root / label_dir / f"{p.stem}.png", decode)


def _embedded_files(root: Path, folder: str, split: str, n_classes: int | None) -> LabelledFiles:
    images = list_images(root / folder, f"expected the embedded layout under {root}")
    if n_classes is None:
        return LabelledFiles(tuple(images), None)
    table = np.full(65536, -1, dtype=np.int32)
    table[:n_classes] = np.arange(n_classes)
    decode = id_decoder(table, f"the embedded data ({n_classes} classes)")
    return _with_labels(images, lambda p: root / "masks" / split / f"{p.stem}.png", decode)


def _transform(size: Sequence[int], flip: bool) -> A.Compose:
    ops: list[Any] = [A.Resize(int(size[0]), int(size[1]), interpolation=cv2.INTER_CUBIC)]
    if flip:
        ops.append(A.HorizontalFlip(p=0.5))
    ops += [A.Normalize(mean=(0.5,) * 3, std=(0.5,) * 3, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(ops, mask_interpolation=cv2.INTER_NEAREST)


class SegmentationTrainSet(Dataset):
    """Source item ``i % len(source)`` with a random target item (fresh draw per access);
    ``len = max(len(source), len(target))``. See the module docstring for the keys."""

    def __init__(
        self, source: LabelledFiles, target: LabelledFiles, source_size, target_size, flip: bool
    ) -> None:
        self.source, self.target = source, target
        self.source_transform = _transform(source_size, flip)
        self.target_transform = _transform(target_size, flip)
        self.translated_dir: Path | None = None
        self.pseudo_dir: Path | None = None

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = index % len(self.source)
        path = self.source.images[s]
        image_path = (
            path if self.translated_dir is None else self.translated_dir / f"{path.stem}.png"
        )
        out = apply(
            self.source_transform,
            draw_seed(),
            image=read_rgb(image_path),
            mask=self.source.label(s).astype(np.uint8),
        )
        item = {"source": out["image"], "source_mask": out["mask"], "source_path": str(image_path)}
        t = int(torch.randint(len(self.target), ()).item())
        t_path = self.target.images[t]
        targets = {"image": read_rgb(t_path)}
        if self.pseudo_dir is not None:
            targets["mask"] = read_mask(self.pseudo_dir / f"{t_path.stem}.png")
        out = apply(self.target_transform, draw_seed(), **targets)
        item.update(target=out["image"], target_path=str(t_path))
        if "mask" in out:
            item["target_pseudo"] = out["mask"]
        return item


class ImagesOnly(Dataset):
    """Images of one set at a fixed size, no augmentation: ``{"image", "stem"}`` items (what
    BDL's loop translates or pseudo-labels)."""

    def __init__(self, files: LabelledFiles, size: Sequence[int]) -> None:
        self.files, self.transform = files, _transform(size, flip=False)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files.images[index]
        image = apply(self.transform, 0, image=read_rgb(path))["image"]
        return {"image": image, "stem": path.stem}


class LabelledTargetSet(ImagesOnly):
    """Target validation: ``target`` at ``size`` and ``target_mask`` at the label's own size."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        mask = torch.from_numpy(self.files.label(index)).long()
        return {
            "target": item["image"],
            "target_mask": mask,
            "target_path": str(self.files.images[index]),
        }


class SegmentationDataModule(SplitLoaders, L.LightningDataModule):
    """Labelled source + unlabelled target (+ labelled target validation) for BDL.

    Args:
        source: source layout: ``embedded`` (default), ``gta5``, ``synthia``, ``cityscapes``.
        source_dir: root of the source dataset (not for ``embedded``).
        target: target layout: ``embedded`` or ``cityscapes``.
        target_dir: root of the target dataset (not for ``embedded``).
        embedded: options of the embedded data: ``{dataset: shapes | digits, ...}``.
        source_size: [height, width] the source images (and labels, nearest) are resized to
            (GTA5 in the paper: [720, 1280]).
        target_size: [height, width] of the target images ([512, 1024]); validation labels
            keep their own size.
        flip: random horizontal flips in training (the official code: none).
        target_supervised: train on the *target's* labelled training images instead of the
            source (the ceiling: target-supervised M). Needs target training labels.
        batch_size: images per domain per batch (1 in the paper).
        num_workers: DataLoader workers (not kept between epochs; see the module docstring).
        val_size: target validation images used by validation and evaluation (None: all).
        seed: seed of the training loader's shuffle generator.
        pin_memory: page-locked batches.

    Raises:
        ValueError: an unknown layout, a missing ``*_dir``, or ``target_supervised`` on an
            unlabelled target.
        DatasetLayoutError: a missing folder, image or label file (named).
        LabelError: a label id the dataset does not define, or a label whose size differs
            from its image (named).
    """

    persistent_workers = False

    def __init__(
        self,
        source: str = "embedded",
        source_dir: str | None = None,
        target: str = "embedded",
        target_dir: str | None = None,
        embedded: dict[str, Any] | None = None,
        source_size: tuple[int, int] = (32, 32),
        target_size: tuple[int, int] = (32, 32),
        flip: bool = False,
        target_supervised: bool = False,
        batch_size: int = 1,
        num_workers: int = 4,
        val_size: int | None = None,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        for field, value, allowed in (
            ("source", source, LAYOUTS),
            ("target", target, ("embedded", "cityscapes")),
        ):
            if value not in allowed:
                raise ValueError(f"{field}={value!r}: expected one of {list(allowed)}")
        for field, layout, folder in (
            ("source", source, source_dir),
            ("target", target, target_dir),
        ):
            if layout != "embedded" and folder is None:
                raise ValueError(f"{field}={layout!r} needs {field}_dir: the dataset's root")
        for field, size in (("source_size", source_size), ("target_size", target_size)):
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"{field}={list(size)}: expected [height, width] in pixels")
        self.source, self.source_dir = source, source_dir
        self.target, self.target_dir = target, target_dir
        self.embedded = check_embedded(embedded)
        if self.uses_embedded and embedded_dataset(self.embedded) not in {"shapes", "digits"}:
            raise ValueError(
                f"embedded.dataset={embedded_dataset(self.embedded)!r}: segmentation needs "
                "masks; expected 'shapes' or 'digits'"
            )
        self.source_size, self.target_size = tuple(source_size), tuple(target_size)
        self.flip, self.target_supervised = flip, target_supervised
        self.batch_size, self.num_workers, self.val_size = batch_size, num_workers, val_size
        self.seed, self.pin_memory = seed, pin_memory
        self.train_set: SegmentationTrainSet | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._files: dict[str, LabelledFiles] = {}
        self.save_hyperparameters()

    # -------------------------------------------------------------- what the data holds
    @property
    def uses_embedded(self) -> bool:
        return "embedded" in (self.source, self.target)

    def _embedded_root(self) -> Path:
        return materialize_embedded(self.embedded)

    @property
    def class_names(self) -> list[str]:
        """Names of the classes, index = training id."""
        if self.uses_embedded:
            meta = json.loads((self._embedded_root() / "scenes.json").read_text())
            return ["background", *meta["classes"]]
        return list(CITYSCAPES_CLASSES)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def prepare_data(self) -> None:
        if self.uses_embedded:
            self._embedded_root()

    def _find(self, role: str) -> LabelledFiles:
        """``source`` (labelled training), ``target`` (training images; labelled for the
        ceiling) or ``val`` (labelled target validation)."""
        if role in self._files:
            return self._files[role]
        labelled = role != "target" or self.target_supervised
        layout = self.source if role == "source" and not self.target_supervised else self.target
        if layout == "embedded":
            root = self._embedded_root()
            folder, split = {
                "source": ("trainA", "train"),
                "target": ("trainB", "train"),
                "val": ("testB", "test"),
            }[role]
            if role == "source" and self.target_supervised:
                folder = "trainB"
            files = _embedded_files(root, folder, split, self.n_classes if labelled else None)
        elif layout == "cityscapes":
            split = "val" if role == "val" else "train"
            files = _cityscapes(Path(self.target_dir).expanduser(), split, labelled)
        elif layout == "gta5":
            root = Path(self.source_dir).expanduser()
            decode = id_decoder(_lookup(CITYSCAPES_TRAIN_IDS, 34), "GTA5 (Cityscapes ids)")
            files = _flat(root, "images", "labels", decode, "GTA5")
        else:  # synthia
            root = Path(self.source_dir).expanduser()
            decode = id_decoder(_lookup(SYNTHIA_TRAIN_IDS, 23), "SYNTHIA", read_synthia_label)
            files = _flat(root, "RGB", "GT/LABELS", decode, "SYNTHIA")
        self._files[role] = files
        return files

    @staticmethod
    def _check(files: LabelledFiles) -> None:
        """Every label has its image's size (read from the file headers), and the first
        label's ids are known: bad labels fail at setup, not at batch 300."""
        if files.labels is None:
            return
        for image, label in zip(files.images, files.labels):
            with Image.open(image) as a, Image.open(label) as b:
                if a.size != b.size:
                    raise LabelError(
                        f"label {str(label)!r} is {b.size[0]}x{b.size[1]} but image "
                        f"{str(image)!r} is {a.size[0]}x{a.size[1]}; expected equal sizes"
                    )
        files.label(0)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            source, target = self._find("source"), self._find("target")
            self._check(source)
            self.train_set = SegmentationTrainSet(
                source, target, self.source_size, self.target_size, self.flip
            )
        if stage in (None, "fit", "validate", "test", "predict"):
            val = self._find("val")
            self._check(val)
            n = len(val) if self.val_size is None else min(self.val_size, len(val))
            self.val_set = Subset(LabelledTargetSet(val, self.target_size), range(n))
            self.test_set = self.val_set

    # -------------------------------------------------------------- BDL's loop
    def source_images(self) -> ImagesOnly:
        """The source training images at ``source_size`` (what F translates)."""
        return ImagesOnly(self._find("source"), self.source_size)

    def target_images(self) -> ImagesOnly:
        """The target training images at ``target_size`` (what M pseudo-labels)."""
        return ImagesOnly(self._find("target"), self.target_size)

    def _require_set(self) -> SegmentationTrainSet:
        if self.train_set is None:
            raise RuntimeError("the training set is not built; call setup('fit') first")
        return self.train_set

    def use_translated_source(self, folder: str | os.PathLike | None) -> None:
        """Serve the source images from ``folder/<stem>.png`` (F(S)), or the originals (None).

        Raises:
            DatasetLayoutError: ``folder`` lacks the translation of a source image.
        """
        train = self._require_set()
        train.translated_dir = None if folder is None else self._complete(folder, train.source)

    def use_pseudo_labels(self, folder: str | os.PathLike | None) -> None:
        """Serve ``target_pseudo`` from ``folder/<stem>.png``, or none (None).

        Raises:
            DatasetLayoutError: ``folder`` lacks the labels of a target image.
        """
        train = self._require_set()
        train.pseudo_dir = None if folder is None else self._complete(folder, train.target)

    @staticmethod
    def _complete(folder: str | os.PathLike, files: LabelledFiles) -> Path:
        folder = Path(folder)
        have = (
            {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
            if folder.is_dir()
            else set()
        )
        missing = [p.stem for p in files.images if p.stem not in have]
        if missing:
            raise DatasetLayoutError(
                f"{str(folder)!r} lacks {len(missing)} of {len(files)} files (e.g. "
                f"{missing[0]}.png); expected one PNG per image, named by its stem"
            )
        return folder
