"""Unpaired two-domain images in the CycleGAN layout (CycleGAN, DiscoGAN, OP-GAN, BDL's F).

Layout (as the CycleGAN datasets ship)::

    <data_dir>/trainA/*.jpg  trainB/*.jpg  testA/*.jpg  testB/*.jpg   [valA/ valB/ optional]

Train items pair ``A[i % len(A)]`` with a random B (fresh draw on every access), each with its
own random crop and flip; an epoch has ``max(len(A), len(B))`` items. Validation and test pair
A and B by sorted file order (ground-truth pairs for the embedded data, whose A and B files of
one scene share a name). If the two test folders differ in size, only the first
``min(len(A), len(B))`` are paired; ``domain_dataset("test", "B")`` serves every image of one
domain. Validation is ``valA/valB`` if present, else the first ``val_size`` test pairs.

Batch keys:
    ``A``, ``B``: float tensors ``(batch, 3, crop_size, crop_size)`` in [-1, 1].
    ``A_path``, ``B_path``: source file of each image (list of str).
    ``A_mask``, ``B_mask``: int64 ``(batch, crop_size, crop_size)`` semantic masks (0 =
        background), only when ``<data_dir>/masks/<split>/<stem>.png`` exists for every image
        of that domain (true for the embedded data); cropped/flipped with their image.
    ``A_label``, ``B_label``: int64 ``(batch,)`` class of the primary object, only when
        ``<data_dir>/scenes.json`` lists every image (the embedded data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .base import ImageDomainDataModule, Split
from .datasets import UnpairedDataset
from .domain import Domain, scan_domain

CYCLEGAN_LAYOUT = (
    "expected CycleGAN layout: <root>/trainA, trainB, testA, testB (optional valA, valB) "
    "holding images; or leave data_dir unset to use the embedded shapes dataset"
)


def find_ab_split(
    root: Path,
    split: Split,
    required: bool,
    *,
    expected: str,
    labels: dict[str, dict[str, int]] | None,
) -> tuple[Domain, Domain] | None:
    """Domains of ``<root>/<split>A`` and ``<root>/<split>B``.

    Returns None when neither folder exists and the split is optional; if only one exists,
    or the split is required, listing the missing folder raises an error naming it.
    """
    folders = [f"{split}A", f"{split}B"]
    if not required and not any((root / f).is_dir() for f in folders):
        return None
    a, b = (scan_domain(root, f, split, expected=expected, labels=labels) for f in folders)
    return a, b


class UnpairedDataModule(ImageDomainDataModule):
    """Two unpaired image domains A and B in the CycleGAN folder layout.

    Args:
        data_dir: Dataset root holding trainA/trainB/testA/testB. Unset (None): the embedded
            procedural shapes dataset is generated into the cache and used.
        load_size: Training images are resized to load_size x load_size pixels before the
            random crop (CycleGAN: 286).
        crop_size: Side of the random training crop and of evaluation images, in pixels
            (CycleGAN: 256).
        flip: Random horizontal flip of training images (independently for A and B).
        batch_size: Images per domain per batch (CycleGAN: 1).
        num_workers: DataLoader worker processes (0 = load in the main process).
        serial_batches: Take B images in order (B[i % len(B)]) instead of at random.
        max_dataset_size: Use at most this many images per folder (first by sorted name);
            None for all.
        val_size: Number of aligned test (or valA/valB) pairs used for validation.
        seed: Seed of the training loader's shuffle generator (per-item B draws and
            augmentation use torch's global RNG, seeded by seed_everything).
        embedded: Options for the embedded dataset, passed to materialize_shapes: root,
            n_train, n_test, image_size, seed. Ignored when data_dir is set.
        pin_memory: Pin batches in page-locked memory (faster host-to-GPU copies); None
            (auto): when the trainer runs on a CUDA device.
        cache_images: Keep decoded images (and masks) in memory after their first read, in
            every loader process: True, False, or None (auto: when a split's decoded
            images times the loader processes fit in 1 GiB).
    """

    layout_description = CYCLEGAN_LAYOUT

    def __init__(
        self,
        data_dir: str | None = None,
        load_size: int = 286,
        crop_size: int = 256,
        flip: bool = True,
        batch_size: int = 1,
        num_workers: int = 4,
        serial_batches: bool = False,
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
        self.serial_batches = serial_batches
        self.save_hyperparameters()

    def _find_split(self, root: Path, split: Split, required: bool) -> tuple[Domain, Domain] | None:
        return find_ab_split(root, split, required, expected=CYCLEGAN_LAYOUT, labels=self.labels)

    def _train_dataset(self, domain_a: Domain, domain_b: Domain) -> Dataset:
        return UnpairedDataset(
            domain_a,
            domain_b,
            self.transform(train=True, paired=False),
            serial_batches=self.serial_batches,
        )
