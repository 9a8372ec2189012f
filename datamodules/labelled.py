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
- ``digits``: scikit-learn's bundled UCI handwritten digits - 1,797 real 8x8 scans that no
  one on this project made - upscaled to ``image_size``; seeded stratified 70/10/20 split.

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
always on the same side of both splits.

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

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from .base import SplitLoaders
from .embedded import materialize_shapes
from .instances import NeighbourhoodDataset
from .io import DatasetLayoutError
from .labelled_data import (
    LabelledDataset,
    LabelledTransform,
    carve_validation,
    labelled_mask,
)
from .labelled_sources import (
    LabelledSource,
    read_celeba,
    read_digits,
    read_folder,
    read_mnist,
    read_shapes,
)

SOURCES = ("folder", "mnist", "celeba", "shapes", "digits")
_ATTRIBUTE_SOURCES = ("celeba", "shapes")
_EMBEDDED_KEYS = set(inspect.signature(materialize_shapes).parameters)


class LabelledDataModule(SplitLoaders, L.LightningDataModule):
    """Labelled (or partly labelled) images; layouts and batch keys in the module docstring.

    Args:
        source: Dataset kind: folder, mnist, celeba, shapes (embedded default) or digits.
        data_dir: Dataset root. Required for folder, mnist and celeba; for shapes, None
            generates the embedded dataset into the cache; ignored for digits.
        attributes: Attribute names to serve (celeba: columns of list_attr_celeba.txt, all
            40 when None; shapes: names of scenes.json ``attributes`` - naming any makes the
            label their 0/1 vector instead of the class). Not allowed for other sources.
        labelled_fraction: Share of each training class (or attribute pattern) that keeps
            its labels, in (0, 1]; 1 = fully supervised.
        image_size: Side of the served square images, in pixels (resized).
        channels: 3 for RGB, 1 for grayscale (luma of the RGB image).
        batch_size: Examples per batch.
        num_workers: DataLoader worker processes (0 = load in the main process).
        val_fraction: Share of train held out for validation where the source has no
            validation split (class-stratified, seeded).
        seed: Seed of the held-out validation set, the labelled subset, the digits split and
            the training shuffle.
        flip: Random horizontal flip of training images.
        embedded: Options for the embedded shapes dataset, passed to materialize_shapes:
            root, n_train, n_test, image_size, seed.
        normalize: Pixel range: "tanh" for [-1, 1] (tanh generators) or "unit" for [0, 1]
            (sigmoid outputs, e.g. the cGAN MLP).
        domain: Shapes style to serve: "A", "B", or "both" (adds a ``domain`` key).
        masks: Serve the shapes semantic masks (``mask``) as well.
        pin_memory: Pin batches in page-locked memory (faster host-to-GPU copies).
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
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("source", source, SOURCES)
        _check_choice("normalize", normalize, ("tanh", "unit"))
        _check_choice("domain", domain, ("A", "B", "both"))
        _check_choice("channels", channels, (1, 3))
        if not (0.0 < labelled_fraction <= 1.0):  # also rejects NaN
            raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled_fraction!r}")
        if not (0.0 <= val_fraction < 1.0):
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if attributes and source not in _ATTRIBUTE_SOURCES:
            raise ValueError(
                f"attributes are only served by {_ATTRIBUTE_SOURCES}, not source={source!r}"
            )
        if source in ("folder", "mnist", "celeba") and data_dir is None:
            raise ValueError(f"source={source!r} needs data_dir (nothing is downloaded)")
        unknown = set(embedded or {}) - _EMBEDDED_KEYS
        if unknown:
            raise ValueError(
                f"embedded: unknown keys {sorted(unknown)}; expected some of "
                f"{sorted(_EMBEDDED_KEYS)}"
            )
        self.source, self.data_dir = source, data_dir
        self.attributes = list(attributes) if attributes else None
        self.labelled_fraction, self.val_fraction = labelled_fraction, val_fraction
        self.image_size, self.channels, self.normalize = image_size, channels, normalize
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.seed, self.flip, self.domain, self.masks = seed, flip, domain, masks
        self.embedded = dict(embedded or {})
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
        """Materialise the embedded shapes dataset when it is the source (one process/node)."""
        if self.source == "shapes" and self.data_dir is None:
            materialize_shapes(**self.embedded)

    def _read(self) -> LabelledSource:
        root = None if self.data_dir is None else Path(self.data_dir).expanduser()
        if self.source == "folder":
            return read_folder(root)
        if self.source == "mnist":
            return read_mnist(root)
        if self.source == "celeba":
            return read_celeba(root, self.attributes)
        if self.source == "digits":
            return read_digits(self.image_size, self.seed)
        root = root or materialize_shapes(**self.embedded)
        return read_shapes(root, self.attributes, self.domain, self.masks)

    @property
    def data(self) -> LabelledSource:
        """The source's splits (train already without the held-out validation part)."""
        if self._source is None:
            source = self._read()
            if source.val is None:
                source.train, source.val = carve_validation(
                    source.train, self.val_fraction, self.seed
                )
            if source.test is None:
                source.test = source.val
            if len(source.train) == 0:
                raise DatasetLayoutError(f"source={self.source!r}: the training split is empty")
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

    # ---------------------------------------------------------------- datasets
    def _transform(self, train: bool) -> LabelledTransform:
        return LabelledTransform(
            self.image_size,
            flip=self.flip and train,
            train=train,
            channels=self.channels,
            normalize=self.normalize,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage``; a bad layout raises here, naming the path."""
        data = self.data
        if stage in (None, "fit"):
            self.labelled = labelled_mask(data.train, self.labelled_fraction, self.seed)
            self._warn_if_inflated(self.labelled)
            self.train_set = LabelledDataset(data.train, self._transform(True), self.labelled)
            if self._neighbourhoods is not None:
                self.train_set = NeighbourhoodDataset(self.train_set, *self._neighbourhoods)
        if stage in (None, "fit", "validate"):
            self.val_set = LabelledDataset(data.val, self._transform(False))
        if stage in (None, "test", "predict"):
            self.test_set = LabelledDataset(data.test, self._transform(False))

    def unaugmented_train_set(self) -> LabelledDataset:
        """The training items without random flips (features describe the stored image)."""
        tf = self._transform(False)
        mask = labelled_mask(self.data.train, self.labelled_fraction, self.seed)
        return LabelledDataset(self.data.train, tf, mask)

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
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
