"""Segmentation domain adaptation data (BDL): labelled source, unlabelled target, and labelled
target validation.

Layouts, as the datasets ship (found by :mod:`.segmentation_layouts`)::

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .base import SplitLoaders
from .catalog import check_embedded, embedded_dataset, materialize_embedded
from .io import DatasetLayoutError, is_image_file, option, read_mask, read_rgb
from .segmentation_layouts import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_TRAIN_IDS,
    SYNTHIA_TRAIN_IDS,
    LabelledFiles,
    check_files,
    find_cityscapes,
    find_embedded,
    find_flat,
    id_decoder,
    lookup_table,
    read_synthia_label,
)
from .transforms import A, ToTensorV2, apply, cv2, draw_seed

LAYOUTS = ("embedded", "gta5", "synthia", "cityscapes")


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
        pin_memory: page-locked batches; None (auto): when the trainer runs on a CUDA device.

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
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        for field, value, allowed in (
            ("source", source, LAYOUTS),
            ("target", target, ("embedded", "cityscapes")),
        ):
            if value not in allowed:
                raise ValueError(f"{option(field)}={value!r}: expected one of {list(allowed)}")
        for field, layout, folder in (
            ("source", source, source_dir),
            ("target", target, target_dir),
        ):
            if layout != "embedded" and folder is None:
                raise ValueError(
                    f"{field}={layout!r} needs {field}_dir ({option(field + '_dir')}): the "
                    "dataset's root"
                )
        for field, size in (("source_size", source_size), ("target_size", target_size)):
            if len(size) != 2 or min(size) < 1:
                raise ValueError(
                    f"{option(field)}={list(size)}: expected [height, width] in pixels"
                )
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
            files = find_embedded(root, folder, split, self.n_classes if labelled else None)
        elif layout == "cityscapes":
            split = "val" if role == "val" else "train"
            files = find_cityscapes(Path(self.target_dir).expanduser(), split, labelled)
        elif layout == "gta5":
            root = Path(self.source_dir).expanduser()
            decode = id_decoder(lookup_table(CITYSCAPES_TRAIN_IDS, 34), "GTA5 (Cityscapes ids)")
            files = find_flat(root, "images", "labels", decode, "GTA5")
        else:  # synthia
            root = Path(self.source_dir).expanduser()
            decode = id_decoder(lookup_table(SYNTHIA_TRAIN_IDS, 23), "SYNTHIA", read_synthia_label)
            files = find_flat(root, "RGB", "GT/LABELS", decode, "SYNTHIA")
        self._files[role] = files
        return files

    def input_sizes(self) -> dict[str, tuple[int, int]]:
        """The image sizes the loaders serve, by option: (H, W) of source and target images."""
        return {
            "data.init_args.source_size": tuple(self.source_size),
            "data.init_args.target_size": tuple(self.target_size),
        }

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            source, target = self._find("source"), self._find("target")
            check_files(source)
            check_files(target)
            self.train_set = SegmentationTrainSet(
                source, target, self.source_size, self.target_size, self.flip
            )
        if stage in (None, "fit", "validate", "test", "predict"):
            val = self._find("val")
            check_files(val)
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
        have = {p.stem for p in folder.iterdir() if is_image_file(p)} if folder.is_dir() else set()
        missing = [p.stem for p in files.images if p.stem not in have]
        if missing:
            raise DatasetLayoutError(
                f"{str(folder)!r} lacks {len(missing)} of {len(files)} files (e.g. "
                f"{missing[0]}.png); expected one PNG per image, named by its stem"
            )
        return folder
