"""Paired (aligned) two-domain images: pix2pix ``AB`` files or two aligned folders.

Layouts (``layout="auto"`` picks the first that exists):

- aligned: ``<root>/trainA, trainB, testA, testB`` (optional ``valA, valB``); A and B are
  matched by sorted file name, and the names must agree pair by pair.
- pix2pix: ``<root>/train, val, test``; each file is A and B side by side (left half A,
  right half B), as pix2pix's facades, maps, edges2shoes ship.

``direction="BtoA"`` swaps the domains. Each pair receives the identical crop and flip.
Validation: ``val``/``valA,valB`` if present, else the test split; at most ``val_size`` pairs.
Test: ``test``/``testA,testB``, else the val split (edges2shoes has no test folder).
``unaligned=True`` serves training pairs as unpaired (random B, independent augmentation;
DiscoGAN on edges2shoes); validation and test stay aligned so results can use the true pairs.

Batch keys are those of ``UnpairedDataModule`` (``A``, ``B``, ``A_path``, ``B_path``, and
``A_mask``/``B_mask``/``A_label``/``B_label`` when the dataset provides them).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from .base import ImageDomainDataModule, Split
from .datasets import AlignedDataset, UnpairedDataset
from .domain import Domain, scan_domain
from .io import DatasetLayoutError
from .publish import SCENES_FILE, load_scenes
from .unpaired import find_ab_split

PIX2PIX_LAYOUT = "pix2pix layout: <root>/train, val, test holding A|B side-by-side images"
ALIGNED_LAYOUT = (
    "aligned layout: <root>/trainA, trainB, testA, testB (optional valA, valB) "
    "with the same file names in A and B"
)
PAIRED_LAYOUTS = f"expected either {PIX2PIX_LAYOUT}, or {ALIGNED_LAYOUT}"
_SPLITS: tuple[Split, ...] = ("train", "val", "test")


def detect_layout(root: Path) -> Literal["pix2pix", "aligned"]:
    """``aligned`` if any ``<split>A`` folder exists, else ``pix2pix`` if any split folder does."""
    if any((root / f"{s}A").is_dir() or (root / f"{s}B").is_dir() for s in _SPLITS):
        return "aligned"
    if any((root / s).is_dir() for s in _SPLITS):
        return "pix2pix"
    raise DatasetLayoutError(f"no paired dataset found under {str(root)!r}; {PAIRED_LAYOUTS}")


def check_names_match(a: Domain, b: Domain) -> None:
    """Raise unless A and B hold the same file stems in the same order."""
    for path_a, path_b in zip(a.paths, b.paths):
        if path_a.stem != path_b.stem:
            raise DatasetLayoutError(
                f"aligned folders disagree: {str(path_a)!r} is paired with {str(path_b)!r}; "
                f"{ALIGNED_LAYOUT}"
            )
    if len(a) != len(b):
        longer = a if len(a) > len(b) else b
        raise DatasetLayoutError(
            f"aligned folders hold {len(a)} A and {len(b)} B images; "
            f"{str(longer.paths[min(len(a), len(b))])!r} has no partner; {ALIGNED_LAYOUT}"
        )


class PairedDataModule(ImageDomainDataModule):
    """Aligned image pairs (pix2pix side-by-side files or two aligned folders).

    Args:
        data_dir: Dataset root (pix2pix or aligned layout). Unset (None): the embedded shapes
            dataset, whose trainA/trainB files of one scene share a name, is generated and used.
        layout: Folder layout: "auto" (detect), "pix2pix" (A|B side by side) or "aligned".
        direction: "AtoB" keeps the left/A images as A; "BtoA" swaps the domains.
        unaligned: Serve training pairs as unpaired (B drawn at random), e.g. DiscoGAN on
            edges2shoes; validation/test stay aligned.
        load_size: Training images are resized to load_size x load_size pixels before the
            random crop (pix2pix: 286).
        crop_size: Side of the random training crop and of evaluation images, in pixels.
        flip: Random horizontal flip of training images (the same flip for both of a pair).
        batch_size: Pairs per batch (pix2pix: 1).
        num_workers: DataLoader worker processes (0 = load in the main process).
        max_dataset_size: Use at most this many pairs per split (first by sorted name);
            None for all.
        val_size: Number of pairs used for validation (from val, else from test).
        seed: Seed of the training loader's shuffle generator (per-item draws and
            augmentation use torch's global RNG, seeded by seed_everything).
        embedded: Options for the embedded dataset, passed to materialize_shapes: root,
            n_train, n_test, image_size, seed. Ignored when data_dir is set.
        pin_memory: Pin batches in page-locked memory (faster host-to-GPU copies); None
            (auto): when the trainer runs on a CUDA device.
        cache_images: Keep decoded images (and masks) in memory after their first read, in
            every loader process: True, False, or None (auto: when a split's decoded
            images times the loader processes fit in 1 GiB).
    """

    layout_description = PAIRED_LAYOUTS

    def __init__(
        self,
        data_dir: str | None = None,
        layout: Literal["auto", "pix2pix", "aligned"] = "auto",
        direction: Literal["AtoB", "BtoA"] = "AtoB",
        unaligned: bool = False,
        load_size: int = 286,
        crop_size: int = 256,
        flip: bool = True,
        batch_size: int = 1,
        num_workers: int = 4,
        max_dataset_size: int | None = None,
        val_size: int = 8,
        seed: int = 0,
        embedded: dict[str, Any] | None = None,
        pin_memory: bool | None = None,
        cache_images: bool | None = None,
    ) -> None:
        if layout not in ("auto", "pix2pix", "aligned"):
            raise ValueError(f"layout must be 'auto', 'pix2pix' or 'aligned', got {layout!r}")
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")
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
        self.layout, self.direction, self.unaligned = layout, direction, unaligned
        self.save_hyperparameters()

    @property
    def ground_truth_pairs(self) -> bool:
        """Paired layouts always hold true pairs in their test split."""
        return True

    def _find_split(self, root: Path, split: Split, required: bool) -> tuple[Domain, Domain] | None:
        if (root / SCENES_FILE).is_file() and not load_scenes(root).get("paired", True):
            raise DatasetLayoutError(
                f"{str(root / SCENES_FILE)!r} says the embedded {load_scenes(root)['dataset']!r} "
                "dataset is unpaired (A[i] and B[i] show different content); a paired module "
                "would score its translations against unrelated images. Use "
                "datamodules.UnpairedDataModule for it."
            )
        layout = detect_layout(root) if self.layout == "auto" else self.layout
        if layout == "pix2pix":
            if not required and not (root / split).is_dir():
                return None
            expected = f"expected {PIX2PIX_LAYOUT}"
            # Masks beside the layout describe whole files, not halves, so none are attached.
            a = scan_domain(root, split, split, expected=expected, labels=self.labels, half="left")
            b = replace(a, half="right")
        else:
            found = find_ab_split(
                root, split, required, expected=f"expected {ALIGNED_LAYOUT}", labels=self.labels
            )
            if found is None:
                return None
            a, b = found
            check_names_match(a, b)
        return (b, a) if self.direction == "BtoA" else (a, b)

    def _train_dataset(self, domain_a: Domain, domain_b: Domain) -> Dataset:
        if self.unaligned:
            return UnpairedDataset(domain_a, domain_b, self.transform(train=True, paired=False))
        return AlignedDataset(domain_a, domain_b, self.transform(train=True, paired=True))
