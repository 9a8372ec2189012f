"""Shared LightningDataModule logic for two-domain image data (A and B).

Subclasses say how a split's two domains are found on disk (``_find_split``) and how training
pairs are sampled (``_train_dataset``); everything else lives here once: the embedded default
data, split resolution, transforms, and the DataLoaders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from gan_suite.utils.workers import worker_init

from .catalog import check_embedded, materialize_embedded
from .datasets import AlignedDataset, SingleDomainDataset
from .decoded import DecodedCache, decoded_bytes, resolve_cache
from .domain import Domain, load_labels
from .io import option, require_dir
from .publish import load_scenes
from .transforms import build_transform

Split = Literal["train", "val", "test"]


class EpochShuffle(RandomSampler):
    """A random order per epoch that depends only on ``seed`` and the epoch Lightning sets
    (``set_epoch``, called at every epoch start as on a ``DistributedSampler``), not on how
    many iterators were made before: a resumed run makes one more (Lightning builds the
    loader's iterator before it sets the resumed epoch), yet shuffles as the uninterrupted run.
    Under DDP Lightning replaces it, being a ``RandomSampler``, by its ``DistributedSampler``,
    which is seeded by epoch the same way.
    """

    def __init__(self, data_source: Dataset, seed: int) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # a generator function: the order is drawn at the first batch, after set_epoch
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class SplitLoaders:
    """DataLoaders of the ``train_set``/``val_set``/``test_set`` a data module builds in
    ``setup``, from its ``batch_size``, ``num_workers``, ``pin_memory`` and ``seed``.

    The training loader shuffles by :class:`EpochShuffle` (its order follows ``seed`` and the
    epoch) and draws its workers' base seed from one ``torch.Generator`` per data module
    (:meth:`train_generator`), never from the global stream; that generator's state is the
    data module's checkpoint state (:meth:`state_dict`), so a resumed run repeats the
    uninterrupted one."""

    #: keep loader workers between epochs (False where a dataset changes between epochs)
    persistent_workers = True

    def train_generator(self) -> torch.Generator:
        """The training loader's generator, seeded with ``seed`` on first use."""
        generator = self.__dict__.get("_train_generator")
        if generator is None:
            generator = self._train_generator = torch.Generator().manual_seed(self.seed)
        return generator

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint state: the training generator (the shuffles of the epochs to come)."""
        return {"train_generator": self.train_generator().get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (before the resumed fit builds its loader)."""
        if "train_generator" in state_dict:
            self.train_generator().set_state(state_dict["train_generator"])

    def pins_memory(self) -> bool:
        """``pin_memory``, or when it is None (auto), whether the trainer runs on a CUDA
        device (page-locked batches copy to the GPU asynchronously; on CPU they only cost)."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _loader(self, dataset: Dataset | None, name: str, train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{name} dataset is not built; call setup() for its stage first")
        # Every iterator draws its workers' base seed from the loader's generator, else from
        # the global stream: evaluation loaders get their own, so that validating (or a
        # callback reading the validation set once, as SampleGrid does, on rank 0 only) never
        # moves the training's random stream; a resumed run would otherwise drift from the
        # uninterrupted one
        generator = self.train_generator() if train else torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffle(dataset, self.seed) if train else None,
            # Dropping the last partial batch keeps batch statistics even, but never drop
            # the only batch of a dataset smaller than batch_size.
            drop_last=train and len(dataset) >= self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pins_memory(),
            persistent_workers=self.num_workers > 0 and self.persistent_workers,
            generator=generator,
            worker_init_fn=worker_init(self),  # workers ignore SIGTERM: the run saves first
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader(self.train_set, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        """The first ``val_size`` aligned pairs, in order."""
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        """All aligned test pairs, in order."""
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        """Same as the test loader."""
        return self._loader(self.test_set, "predict")


class ImageDomainDataModule(SplitLoaders, L.LightningDataModule):
    """Base for the unpaired and paired modules; see their docstrings for the arguments."""

    #: Human-readable expected layout, repeated in every layout error.
    layout_description = "expected an image dataset layout"

    def __init__(
        self,
        data_dir: str | None = None,
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
        super().__init__()
        embedded = check_embedded(embedded)
        if crop_size > load_size:
            raise ValueError(
                f"{option('crop_size')} ({crop_size}) must be <= {option('load_size')} "
                f"({load_size}): the random crop is taken from the resized image"
            )
        self.data_dir = data_dir
        self.load_size, self.crop_size, self.flip = load_size, crop_size, flip
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_dataset_size, self.val_size = max_dataset_size, val_size
        self.seed, self.pin_memory, self.cache_images = seed, pin_memory, cache_images
        self.embedded = dict(embedded or {})
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.domains: dict[str, tuple[Domain, Domain]] = {}
        self.labels: dict[str, dict[str, int]] | None = None  # scenes.json labels, if any
        self._root: Path | None = None
        self._checked: dict[tuple[Path, ...], int] = {}  # checked file lists -> decoded bytes

    # ---------------------------------------------------------------- where the data lives
    def prepare_data(self) -> None:
        """Materialise the embedded dataset (``embedded.dataset``, default the shapes) when no
        ``data_dir`` is given.

        Lightning runs this on one process per node; ``setup`` calls it again on every rank,
        which is a cheap no-op once the data is complete (and safe if it is not).
        """
        if self.data_dir is None:
            materialize_embedded(self.embedded)

    @property
    def root(self) -> Path:
        """The layout root: ``data_dir``, or the materialised embedded dataset."""
        if self._root is None:
            if self.data_dir is None:
                self._root = materialize_embedded(self.embedded)
            else:
                self._root = Path(self.data_dir).expanduser()
        return self._root

    @property
    def ground_truth_pairs(self) -> bool:
        """True when test A[i] and B[i] show the same content (a true translation pair), so
        that paired metrics (PSNR/SSIM to the target) mean something: the embedded shapes
        (scenes.json lists the scenes) and paired layouts; not the embedded real datasets,
        whose scenes.json says ``paired: false``."""
        if not (self.root / "scenes.json").is_file():
            return False
        return bool(load_scenes(self.root).get("paired", True))

    def input_sizes(self) -> dict[str, tuple[int, int]]:
        """The image sizes the loaders serve, by option: every split is served at
        ``crop_size`` x ``crop_size`` (training crops, evaluation resizes), (H, W) in pixels."""
        return {"data.init_args.crop_size": (self.crop_size, self.crop_size)}

    # ---------------------------------------------------------------- hooks for subclasses
    def _find_split(self, root: Path, split: Split, required: bool) -> tuple[Domain, Domain] | None:
        """The (A, B) domains of ``split``; None if absent and not ``required``."""
        raise NotImplementedError

    def _train_dataset(self, domain_a: Domain, domain_b: Domain) -> Dataset:
        raise NotImplementedError

    # ---------------------------------------------------------------- splits
    def transform(self, train: bool, paired: bool) -> Any:
        """The albumentations pipeline for training (random) or evaluation (deterministic)."""
        return build_transform(
            load_size=self.load_size,
            crop_size=self.crop_size,
            flip=self.flip,
            train=train,
            paired=paired,
        )

    def _split(self, root: Path, split: Split, required: bool) -> tuple[Domain, Domain] | None:
        found = self._find_split(root, split, required)
        if found is None:
            return None
        a, b = (d.head(self.max_dataset_size) for d in found)
        # Every file is checked here, at setup, so a broken one fails before training;
        # pix2pix's two halves share their files and are checked once.
        for domain in (a, b):
            if domain.paths not in self._checked:
                sizes = domain.check()
                masks = 0 if domain.masks is None else decoded_bytes(sizes, channels=1)
                self._checked[domain.paths] = decoded_bytes(sizes) + masks
        nbytes = sum(self._checked[paths] for paths in {a.paths, b.paths})
        if resolve_cache(self.cache_images, nbytes, self.num_workers):
            cache = DecodedCache()  # one per split: AB files read by both domains decode once
            a, b = replace(a, cache=cache), replace(b, cache=cache)
        self.domains[split] = (a, b)
        return a, b

    def _eval_dataset(self, a: Domain, b: Domain, split: str) -> AlignedDataset:
        if len(a) != len(b):
            rank_zero_warn(
                f"{split}: {len(a)} A images but {len(b)} B images under {str(self.root)!r}; "
                f"pairing the first {min(len(a), len(b))} by sorted order. "
                "Use domain_dataset(split, side) for all images of one domain."
            )
        return AlignedDataset(a, b, self.transform(train=False, paired=True))

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets needed by ``stage``; a bad layout raises here, naming the path."""
        root = require_dir(self.root, self.layout_description)
        self.labels = load_labels(root)
        if stage in (None, "fit"):
            a, b = self._split(root, "train", required=True)
            self.train_set = self._train_dataset(a, b)
        if stage in (None, "fit", "validate"):
            val = self._split(root, "val", required=False)
            if val is None:
                val = self._split(root, "test", required=True)
            pairs = self._eval_dataset(*val, "val")
            self.val_set = Subset(pairs, range(min(self.val_size, len(pairs))))
        if stage in (None, "test", "predict"):
            test = self._split(root, "test", required=False)
            if test is None:
                test = self._split(root, "val", required=True)
            self.test_set = self._eval_dataset(*test, "test")

    def domain_dataset(self, split: Split, side: Literal["A", "B"]) -> SingleDomainDataset:
        """Every image of one domain of a set-up split (eval transform), e.g. all test B images
        for FID even when A and B counts differ. Items carry only ``<side>*`` keys."""
        if split not in self.domains:
            raise RuntimeError(f"split {split!r} is not set up; call setup() for its stage first")
        domain = self.domains[split][0 if side == "A" else 1]
        return SingleDomainDataset(domain, self.transform(train=False, paired=False), side)
