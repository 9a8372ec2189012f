"""Two image domains defined by one binary attribute (DiscoGAN's CelebA splits).

Domain A = the images WITH the attribute (e.g. ``Male`` = 1), domain B = those WITHOUT; served
exactly like ``UnpairedDataModule`` batches (``A``, ``B``, ``A_path``, ``B_path``), built on the
same ``ImageDomainDataModule`` machinery.

Layouts: CelebA (see ``labelled_celeba.py``; train/val/test from ``list_eval_partition.txt``,
or, without it, a seeded 10% of the images held out for validation and test), or with
``data_dir`` unset an embedded dataset: the shapes (style A images, split by a scenes.json
attribute such as ``large``) or, with ``embedded: {dataset: faces}``, the LFW faces (attribute
``face``: A = faces, B = non-faces); test doubles as validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import ImageDomainDataModule, Split
from .datasets import AlignedDataset, UnpairedDataset
from .domain import Domain
from .embedded import SCENES_FILE, load_scenes
from .io import DatasetLayoutError
from .labelled_celeba import CELEBA_LAYOUT, load_celeba
from .labelled_data import LabelledSplit, carve_validation

SHAPES_DEFAULT_ATTRIBUTE = "large"
CELEBA_DEFAULT_ATTRIBUTE = "Male"


class DomainSplitDataModule(ImageDomainDataModule):
    """Unpaired domains A (attribute = 1) and B (attribute = 0) of one attribute-labelled set.

    Args:
        data_dir: CelebA root (img_align_celeba/, list_attr_celeba.txt, optionally
            list_eval_partition.txt). Unset (None): the embedded shapes dataset.
        attribute: The attribute that splits A from B; None = "Male" on CelebA, "large" on
            the shapes data, "face" on the faces.
        load_size: Training images are resized to load_size x load_size before the random
            crop, in pixels (DiscoGAN: 64, no crop).
        crop_size: Side of the training crop and of evaluation images, in pixels.
        flip: Random horizontal flip of training images (independently for A and B).
        batch_size: Images per domain per batch.
        num_workers: DataLoader worker processes (0 = load in the main process).
        max_dataset_size: Use at most this many images per domain and split; None for all.
        val_size: Number of (A, B) pairs used for validation.
        seed: Seed of the training shuffle and of the held-out split without a partition file.
        embedded: The embedded dataset and its options (``datamodules.catalog``):
            ``dataset`` (shapes or faces) and that materialiser's options. Ignored when
            data_dir is set.
        pin_memory: Pin batches in page-locked memory (faster host-to-GPU copies); None
            (auto): when the trainer runs on a CUDA device.
        cache_images: Keep decoded images (and masks) in memory after their first read, in
            every loader process: True, False, or None (auto: when a split's decoded
            images times the loader processes fit in 1 GiB).
    """

    layout_description = CELEBA_LAYOUT

    def __init__(
        self,
        data_dir: str | None = None,
        attribute: str | None = None,
        load_size: int = 64,
        crop_size: int = 64,
        flip: bool = False,
        batch_size: int = 64,
        num_workers: int = 2,
        max_dataset_size: int | None = None,
        val_size: int = 8,
        seed: int = 0,
        embedded: dict[str, Any] | None = None,
        pin_memory: bool | None = None,
        cache_images: bool | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            load_size=load_size,
            crop_size=crop_size,
            flip=flip,
            batch_size=batch_size,
            num_workers=num_workers,
            max_dataset_size=max_dataset_size,
            val_size=val_size,
            seed=seed,
            embedded=embedded,
            pin_memory=pin_memory,
            cache_images=cache_images,
        )
        self.attribute = attribute
        self.save_hyperparameters()
        self._splits: dict[str, tuple[Domain, Domain]] | None = None
        #: The attribute actually used (``attribute`` or the dataset's default), after setup.
        self.resolved_attribute: str | None = attribute

    def _read(self, root: Path) -> dict[str, tuple[Domain, Domain]]:
        """``{split: (A, B)}`` for every split the data provides."""
        if (root / SCENES_FILE).is_file():
            return self._read_shapes(root)
        attribute = self.resolved_attribute = self.attribute or CELEBA_DEFAULT_ATTRIBUTE
        celeba = load_celeba(root)
        has = celeba.attributes.columns([attribute])[:, 0] > 0.5
        rows = {split: celeba.rows(split) for split in ("train", "val", "test")}
        if celeba.splits is None:
            # No official partition: hold out a seeded 10% (stratified by the attribute).
            every = LabelledSplit(images=np.arange(len(has)), labels=has.astype(np.int64))
            train, held = carve_validation(every, 0.1, self.seed)
            rows = {"train": train.images, "val": held.images, "test": held.images}
        paths = celeba.paths
        return {
            split: (
                Domain(paths=tuple(paths[i] for i in index if has[i])),
                Domain(paths=tuple(paths[i] for i in index if not has[i])),
            )
            for split, index in rows.items()
        }

    def _read_shapes(self, root: Path) -> dict[str, tuple[Domain, Domain]]:
        """An embedded dataset: the shapes (style A images) or the faces (attribute face)."""
        meta = load_scenes(root)
        default = meta.get("default_attribute", SHAPES_DEFAULT_ATTRIBUTE)
        attribute = self.resolved_attribute = self.attribute or default
        if attribute not in meta["attributes"]:
            raise ValueError(
                f"attribute {attribute!r} is not in {str(root / SCENES_FILE)!r}; available: "
                f"{', '.join(meta['attributes'])}"
            )
        out = {}
        for split, records in meta["splits"].items():
            sides = []
            for value in (1, 0):
                chosen = [r for r in records if r["attributes"][attribute] == value]
                labelled = all(r.get("label") is not None for r in chosen)
                sides.append(
                    Domain(
                        paths=tuple(
                            root / r.get("file", f"{split}A/{r['id']}.png") for r in chosen
                        ),
                        labels=tuple(int(r["label"]) for r in chosen) if labelled else None,
                    )
                )
            out[split] = (sides[0], sides[1])
        return out

    def _find_split(self, root: Path, split: Split, required: bool) -> tuple[Domain, Domain] | None:
        if self._splits is None:
            self._splits = self._read(root)
        found = self._splits.get(split)
        if found is None:
            if required:
                raise DatasetLayoutError(f"{str(root)!r} has no {split} split; {CELEBA_LAYOUT}")
            return None
        for side, domain in zip("AB", found, strict=True):
            if len(domain) == 0:
                value = "with" if side == "A" else "without"
                raise DatasetLayoutError(
                    f"{split} split of {str(root)!r} has no image {value} attribute "
                    f"{self.resolved_attribute!r}, so domain {side} would be empty"
                )
        return found

    def _train_dataset(self, domain_a: Domain, domain_b: Domain) -> UnpairedDataset:
        return UnpairedDataset(domain_a, domain_b, self.transform(train=True, paired=False))

    def _eval_dataset(self, a: Domain, b: Domain, split: str) -> AlignedDataset:
        # The two sides of an attribute split almost never have equal sizes; that is expected
        # here, so pair the first min(len) by order without the base class's warning.
        n = min(len(a), len(b))
        return AlignedDataset(a.head(n), b.head(n), self.transform(train=False, paired=True))
