"""CelebA's annotation files, parsed by hand (torchvision's ``CelebA`` insists on md5 checks
and on every file of the release, identity and landmark lists included).

Layout (as the "Align&Cropped Images" release ships)::

    <root>/img_align_celeba/000001.jpg ...
    <root>/list_attr_celeba.txt      line 1: image count; line 2: the 40 attribute names;
                                     then "<file> <+1|-1 x 40>" per image
    <root>/list_eval_partition.txt   "<file> <0|1|2>" = train / val / test (optional here:
                                     without it a seeded val_fraction of the images is held out)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import AnnotationError, DatasetLayoutError, read_text, require_dir

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
CELEBA_LAYOUT = (
    f"expected CelebA layout: <root>/{IMAGE_DIR}/*.jpg, <root>/{ATTR_FILE} "
    f"(count, attribute names, '<file> <+1|-1 ...>' lines) and optionally <root>/{PARTITION_FILE} "
    "('<file> <0|1|2>' lines)"
)
PARTITION_CODES = {"0": "train", "1": "val", "2": "test"}


@dataclass(frozen=True)
class CelebAAttributes:
    """The parsed attribute list.

    Attributes:
        names: Attribute names of the header, in file order.
        files: Image file names, in file order.
        values: uint8 ``(N, len(names))`` 0/1 table (the file's -1 becomes 0).
        path: The file they were read from (for messages).
    """

    names: tuple[str, ...]
    files: tuple[str, ...]
    values: np.ndarray
    path: Path

    def columns(self, wanted: list[str]) -> np.ndarray:
        """float32 ``(N, len(wanted))`` multi-hot table of the named attributes.

        Raises:
            AnnotationError: A name is not in the header; lists some that are.
        """
        index = {name: i for i, name in enumerate(self.names)}
        for name in wanted:
            if name not in index:
                close = [n for n in self.names if n.lower() == name.lower()]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise AnnotationError(
                    f"attribute {name!r} is not in {str(self.path)!r}{hint}; available "
                    f"attributes include {', '.join(self.names[:8])}, ... "
                    f"({len(self.names)} in all)"
                )
        return self.values[:, [index[n] for n in wanted]].astype(np.float32)


def read_attributes(path: str | Path) -> CelebAAttributes:
    """Parse ``list_attr_celeba.txt`` (UTF-8 or UTF-16, with or without a byte-order mark;
    LF or CRLF line ends; fields separated by spaces or tabs: what Windows tools write too).

    Raises:
        DatasetLayoutError: The file is missing.
        AnnotationError: A bad header or line; the message names the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"attribute file {str(path)!r} does not exist; {CELEBA_LAYOUT}")
    lines = read_text(path, CELEBA_LAYOUT).splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise AnnotationError(
            f"{str(path)!r} line 1: expected the image count, then a line of attribute names"
        )
    names = tuple(lines[1].split())
    if not names:
        raise AnnotationError(f"{str(path)!r} line 2: expected the attribute names")
    files, rows = [], []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue  # tolerate blank lines (e.g. a trailing newline pair)
        if len(fields) != len(names) + 1 or any(v not in ("1", "-1") for v in fields[1:]):
            raise AnnotationError(
                f"{str(path)!r} line {number}: expected '<file>' and {len(names)} values "
                f"of 1 or -1, got {len(fields) - 1} fields: {line.strip()[:80]!r}"
            )
        files.append(fields[0])
        rows.append([v == "1" for v in fields[1:]])
    if int(lines[0]) != len(files):
        raise AnnotationError(
            f"{str(path)!r} line 1 says {int(lines[0])} images but {len(files)} are listed"
        )
    values = np.array(rows, dtype=np.uint8).reshape(len(files), len(names))
    return CelebAAttributes(names=names, files=tuple(files), values=values, path=path)


def read_partition(path: str | Path) -> dict[str, str]:
    """Parse ``list_eval_partition.txt`` into ``{file: "train" | "val" | "test"}`` (encodings
    and line ends as :func:`read_attributes`).

    Raises:
        AnnotationError: A line is not ``<file> <0|1|2>``; names the file and line number.
    """
    path = Path(path)
    partition = {}
    for number, line in enumerate(read_text(path, CELEBA_LAYOUT).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in PARTITION_CODES:
            raise AnnotationError(
                f"{str(path)!r} line {number}: expected '<file> <0|1|2>', got {line.strip()!r}"
            )
        partition[fields[0]] = PARTITION_CODES[fields[1]]
    return partition


@dataclass(frozen=True)
class CelebA:
    """A CelebA root: attribute table, image paths, and the split of each image.

    Attributes:
        attributes: The parsed attribute list.
        paths: Image path per row of ``attributes``.
        splits: ``"train" | "val" | "test"`` per row, or None without a partition file.
    """

    attributes: CelebAAttributes
    paths: tuple[Path, ...]
    splits: np.ndarray | None

    def rows(self, split: str) -> np.ndarray:
        """Row indices of ``split`` (all rows when there is no partition file)."""
        if self.splits is None:
            return np.arange(len(self.paths))
        return np.flatnonzero(self.splits == split)


def load_celeba(root: str | Path) -> CelebA:
    """Read a CelebA root and check that every listed image exists.

    Raises:
        DatasetLayoutError: Missing folder, attribute file, or a listed image.
        AnnotationError: Malformed annotation file, or an image without a partition entry.
    """
    root = require_dir(root, CELEBA_LAYOUT)
    image_dir = require_dir(root / IMAGE_DIR, CELEBA_LAYOUT)
    attributes = read_attributes(root / ATTR_FILE)
    paths = tuple(image_dir / name for name in attributes.files)
    # One directory listing instead of 200k stat calls.
    present = {p.name for p in image_dir.iterdir()}
    for path in paths:
        if path.name not in present:
            raise DatasetLayoutError(
                f"image {str(path)!r} is listed in {str(attributes.path)!r} but does not exist; "
                f"{CELEBA_LAYOUT}"
            )
    splits = None
    partition_path = root / PARTITION_FILE
    if partition_path.is_file():
        partition = read_partition(partition_path)
        missing = [f for f in attributes.files if f not in partition]
        if missing:
            raise AnnotationError(
                f"{str(partition_path)!r} has no split for {len(missing)} image(s) of "
                f"{str(attributes.path)!r}, e.g. {missing[0]!r}"
            )
        splits = np.array([partition[f] for f in attributes.files])
    return CelebA(attributes=attributes, paths=paths, splits=splits)
