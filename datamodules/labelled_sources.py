"""Readers of the labelled sources; each turns a dataset on disk into ``LabelledSplit``s.

A reader returns a ``LabelledSource``: train / val / test splits (val or test None where the
dataset ships none; the data module then carves a validation set off train) plus the names
behind the labels. Layouts are described in ``datamodules/labelled.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan_suite.utils import atomic_write, default_cache_root

from .io import DatasetLayoutError, ImageReadError, is_system_entry, list_images, require_dir
from .labelled_celeba import load_celeba
from .labelled_data import LabelKind, LabelledSplit
from .publish import load_scenes


@dataclass
class LabelledSource:
    """What a reader found: the splits and the meaning of the labels."""

    train: LabelledSplit
    val: LabelledSplit | None
    test: LabelledSplit | None
    label_kind: LabelKind
    class_names: list[str] = field(default_factory=list)
    attribute_names: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- folder
FOLDER_LAYOUT = (
    "expected an ImageFolder layout: <root>/<class>/*.png (one folder per class), or "
    "<root>/train/<class>/ with optional <root>/val/<class>/ and <root>/test/<class>/"
)


def _class_folders(root: Path) -> list[Path]:
    # __MACOSX (macOS zip resource forks) and hidden folders are no classes.
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not is_system_entry(p))
    if not folders:
        raise DatasetLayoutError(f"{str(root)!r} holds no class folders; {FOLDER_LAYOUT}")
    return folders


def _scan_classes(root: Path, class_names: list[str]) -> LabelledSplit:
    """Images of ``root/<class>/``; a class folder unknown to ``class_names`` is an error."""
    paths: list[Path] = []
    labels: list[int] = []
    for folder in _class_folders(root):
        if folder.name not in class_names:
            raise DatasetLayoutError(
                f"class folder {str(folder)!r} is not among the training classes "
                f"{class_names}; {FOLDER_LAYOUT}"
            )
        # list_images raises naming the folder when a class folder holds no images.
        files = list_images(folder, FOLDER_LAYOUT)
        paths += files
        labels += [class_names.index(folder.name)] * len(files)
    return LabelledSplit(images=tuple(paths), labels=np.array(labels, dtype=np.int64))


def read_folder(root: Path) -> LabelledSource:
    """Sorted class folder names become class indices 0, 1, ... (as ImageFolder does)."""
    root = require_dir(root, FOLDER_LAYOUT)
    split_root = root / "train"
    top = split_root if split_root.is_dir() else root
    class_names = [p.name for p in _class_folders(top)]
    train = _scan_classes(top, class_names)
    val = test = None
    if top is split_root:
        if (root / "val").is_dir():
            val = _scan_classes(root / "val", class_names)
        if (root / "test").is_dir():
            test = _scan_classes(root / "test", class_names)
    return LabelledSource(train, val, test, "class", class_names=class_names)


# ---------------------------------------------------------------------------------- mnist
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_LAYOUT = (
    "expected MNIST's raw IDX files in <root>/MNIST/raw/: "
    + ", ".join(MNIST_FILES)
    + " (each may be gzipped, <name>.gz); nothing is downloaded"
)


def _mnist_raw_folder(root: Path) -> Path:
    """The folder holding the IDX files: ``root/MNIST/raw`` (torchvision's layout), or
    ``root/raw`` / ``root`` itself when the user points deeper into it."""
    for candidate in (root / "MNIST" / "raw", root / "raw", root):
        if any((candidate / n).is_file() or (candidate / f"{n}.gz").is_file() for n in MNIST_FILES):
            return candidate
    return root / "MNIST" / "raw"


def _mnist_torchvision_root(raw: Path) -> Path:
    """A root whose ``MNIST/raw`` holds all four files uncompressed, as torchvision reads them.

    torchvision only accepts uncompressed files without downloading, so gzip-only files are
    decompressed into the cache (never into the user's dataset folder), once.
    """
    missing = [
        n for n in MNIST_FILES if not (raw / n).is_file() and not (raw / f"{n}.gz").is_file()
    ]
    if missing:
        raise DatasetLayoutError(f"MNIST files {missing} not found in {str(raw)!r}; {MNIST_LAYOUT}")
    if all((raw / n).is_file() for n in MNIST_FILES) and raw.parent.name == "MNIST":
        return raw.parent.parent
    key = hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]
    root = default_cache_root() / f"mnist-raw-{key}"
    target = root / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        if (target / name).is_file():
            continue
        # Written to a temporary file and renamed, so a concurrent rank never reads half a file.
        atomic_write(target / name, lambda path, name=name: _copy_mnist_file(raw, name, path))
    return root


def _copy_mnist_file(raw: Path, name: str, out: Path) -> None:
    """Copy ``raw/<name>``, or decompress ``raw/<name>.gz``, to ``out``."""
    plain = raw / name
    src = plain.open("rb") if plain.is_file() else gzip.open(raw / f"{name}.gz", "rb")
    with src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst)


def read_mnist(root: Path) -> LabelledSource:
    """MNIST train (60k) and test (10k) via ``torchvision.datasets.MNIST(download=False)``."""
    from torchvision.datasets import MNIST  # import here: torchvision is slow to import

    raw = _mnist_raw_folder(require_dir(root, MNIST_LAYOUT))
    tv_root = _mnist_torchvision_root(raw)
    splits = []
    for train in (True, False):
        try:
            dataset = MNIST(str(tv_root), train=train, download=False)
        except (RuntimeError, AssertionError, TypeError, ValueError) as err:
            raise ImageReadError(
                f"cannot read the MNIST files in {str(raw)!r}: {err!r}; {MNIST_LAYOUT}"
            ) from err
        images = dataset.data.numpy()  # (N, 28, 28) uint8
        splits.append(LabelledSplit(images=images, labels=dataset.targets.numpy().astype(np.int64)))
    return LabelledSource(splits[0], None, splits[1], "class", class_names=list(MNIST.classes))


# ---------------------------------------------------------------------------------- celeba
def read_celeba(root: Path, attributes: list[str] | None) -> LabelledSource:
    """Labels = 0/1 vectors of ``attributes`` (all 40 when None)."""
    celeba = load_celeba(root)
    names = list(attributes) if attributes else list(celeba.attributes.names)
    table = celeba.attributes.columns(names)
    splits = {}
    for split in ("train", "val", "test"):
        rows = celeba.rows(split)
        splits[split] = LabelledSplit(
            images=tuple(celeba.paths[i] for i in rows), labels=table[rows]
        )
    if celeba.splits is None:  # no partition file: everything is train; val is carved off
        splits["val"] = splits["test"] = None
    return LabelledSource(
        splits["train"], splits["val"], splits["test"], "attributes", attribute_names=names
    )


# ---------------------------------------------------------------------------------- embedded
def read_scenes(
    root: Path, attributes: list[str] | None, domain: str, masks: bool
) -> LabelledSource:
    """An embedded dataset's ``scenes.json``: class label = each record's ``label``, or, when
    ``attributes`` are named, label = their 0/1 vector; ``attributes`` (all by default) are
    served beside the label either way.

    The shapes store one record per scene, drawn in both styles (``trainA/<id>.png`` and
    ``trainB/<id>.png``: one group per scene); the digits store one record per image with its
    ``domain`` and ``file`` (each image its own group). ``domain`` picks A, B or both."""
    meta = load_scenes(root)
    available = list(meta["attributes"])
    names = list(attributes) if attributes else available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"attributes {unknown} are not in {str(root / 'scenes.json')!r}; available: "
            f"{', '.join(available) or 'none'}"
        )
    sides = {"A": ["A"], "B": ["B"], "both": ["A", "B"]}[domain]
    splits = {}
    for split, records in meta["splits"].items():
        if records and "domain" in records[0]:  # one record per image
            items = [(r, r["domain"], r["file"]) for r in records if r["domain"] in sides]
            items.sort(key=lambda item: sides.index(item[1]))  # A first, as for the shapes
            groups = np.arange(len(items))
        else:  # one record per scene, drawn in every side
            items = [(r, s, f"{split}{s}/{r['id']}.png") for s in sides for r in records]
            groups = np.tile(np.arange(len(records)), len(sides))
        missing = [r["id"] for r, _, _ in items if r.get("label") is None and not attributes]
        if missing:
            raise DatasetLayoutError(
                f"{str(root / 'scenes.json')!r} has no class label for {missing[:3]}...; "
                "this embedded dataset has no classes (name attributes=[...] or pick another)"
            )
        table = np.array(
            [[r.get("attributes", {})[n] for n in names] for r, _, _ in items], dtype=np.float32
        ).reshape(len(items), len(names))
        classes = np.array([r.get("label", -1) for r, _, _ in items], dtype=np.int64)
        splits[split] = LabelledSplit(
            images=tuple(root / file for _, _, file in items),
            labels=table if attributes else classes,
            attributes=table,
            masks=tuple(root / "masks" / split / f"{Path(f).stem}.png" for _, _, f in items)
            if masks
            else None,
            domains=np.array([sides.index(s) for _, s, _ in items]) if domain == "both" else None,
            groups=groups,
        )
    return LabelledSource(
        splits["train"],
        None,
        splits["test"],
        "attributes" if attributes else "class",
        class_names=list(meta["classes"]),
        attribute_names=names,
    )
