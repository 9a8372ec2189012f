"""Reading images, masks and text files from disk, with errors that name the file and the
expectation.

Every data module goes through these helpers, so a bad dataset fails the same way everywhere:
``DatasetLayoutError`` for a missing/empty folder (message names the path and the layout that
was expected) and ``ImageReadError`` for a file that cannot be decoded as what was expected.

Three rules hold for every image and mask:

- Listing skips what is not an image the way file browsers do: hidden dot-files (macOS
  AppleDouble ``._name.png`` and ``.DS_Store`` included), ``Thumbs.db``/``desktop.ini``,
  ``__MACOSX`` and hidden folders, and files without an image extension.
- Pixels are served as every viewer shows them: the EXIF orientation (tag 0x0112, values 2-8:
  mirrored and/or rotated, written by cameras and phones instead of rotating the pixels) is
  applied on decode, and sizes read from headers swap width and height for values 5-8.
- Data modules call :func:`check_images` at ``setup()``: each file's header is opened and its
  last bytes are checked, so a broken file fails before training, naming its path.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
)
#: Files operating systems drop into folders (compared lower-case); never dataset images.
SYSTEM_FILES: frozenset[str] = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})
#: Folders that archivers and operating systems add (macOS zip resource forks).
SYSTEM_FOLDERS: frozenset[str] = frozenset({"__macosx"})
#: Pillow modes ``read_rgb`` turns into RGB (colour, grey, palette, CMYK, 16-bit, float).
RGB_MODES: frozenset[str] = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
    | {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
)
#: Pillow modes of a one-channel class-index mask (16-bit ones must hold indices <= 255).
MASK_MODES: frozenset[str] = frozenset({"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_DEEP_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What a complete file ends with: the PNG IEND chunk (length 0, type, CRC) and the JPEG EOI.
_TAILS = {"PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}
RGB_EXPECTED = "an RGB, grayscale, palette or CMYK image readable by Pillow"
MASK_EXPECTED = "a single-channel (mode L or P) PNG holding one class index per pixel"


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing, empty or does not follow the expected on-disk layout."""


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded into the expected array."""


class AnnotationError(ValueError):
    """An annotation file is malformed; the message names the file, line and expectation."""


def require_dir(path: str | Path, expected: str) -> Path:
    """Return ``path`` as a ``Path`` if it is a directory, else raise ``DatasetLayoutError``.

    Args:
        path: The folder that must exist.
        expected: A sentence describing the layout the caller wanted, repeated in the message
            so the user can fix the folder without reading the code.
    """
    path = Path(path)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DatasetLayoutError(f"dataset folder {str(path)!r} {what}; {expected}")
    return path


def is_system_entry(path: Path) -> bool:
    """True for what file browsers hide and no dataset means: dot-files and dot-folders (macOS
    ``._*`` AppleDouble forks, ``.DS_Store``), ``Thumbs.db``/``desktop.ini``, ``__MACOSX``."""
    name = path.name.lower()
    return name.startswith(".") or name in SYSTEM_FILES or name in SYSTEM_FOLDERS


def is_image_file(path: Path) -> bool:
    """True for a listable image: a file with an image extension that is no system entry."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_system_entry(path) and path.is_file()


def list_images(folder: str | Path, expected: str | None = None) -> list[Path]:
    """List the image files directly inside ``folder``, sorted by file name.

    Sorting by name is what makes "aligned by sorted order" well defined for paired folders.
    System entries (see :func:`is_system_entry`) and other extensions are skipped.

    Args:
        folder: Directory to scan (not recursive, like the CycleGAN/pix2pix loaders).
        expected: Layout description used in error messages.

    Raises:
        DatasetLayoutError: The folder is missing or holds no image with a known extension.
    """
    expected = (
        expected or "expected a folder of images (" + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")"
    )
    folder = require_dir(folder, expected)
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not files:
        raise DatasetLayoutError(
            f"dataset folder {str(folder)!r} contains no images "
            f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}; hidden and system files "
            f"are skipped); {expected}"
        )
    return files


# ------------------------------------------------------------------ orientation
def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when absent or invalid.

    For a PNG only an eXIf chunk before the pixel data is seen without decoding them.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # Pillow's PNG getexif() would decode the whole image to look further
    value = image.getexif().get(ORIENTATION_TAG, 1)
    return value if value in _TRANSPOSE else 1


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as viewers show the image: swapped for orientations 5-8."""
    width, height = image.size
    return (height, width) if orientation(image) >= 5 else (width, height)


def orient_array(array: np.ndarray, value: int) -> np.ndarray:
    """Apply EXIF orientation ``value`` to an ``(H, W, ...)`` array (for non-Pillow decoders)."""
    if value in (5, 6, 7, 8):
        array = np.swapaxes(array, 0, 1)  # 5: transpose; the others are a flip of it
    flips = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(value, ())
    return np.ascontiguousarray(np.flip(array, flips)) if flips else array


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation of the file at ``path`` (1 when none), read from its header."""
    with Image.open(path) as image:
        return orientation(image)


# ------------------------------------------------------------------ decoding
def _open(path: Path, expected: str) -> Image.Image:
    try:
        image = Image.open(path)
        # Decode now: Image.open is lazy and truncated files only fail on load().
        image.load()
    except FileNotFoundError as err:
        raise DatasetLayoutError(
            f"image {str(path)!r} does not exist; expected {expected}"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(
            f"cannot read image {str(path)!r}: {err}; expected {expected}"
        ) from err
    method = _TRANSPOSE.get(orientation(image))
    return image if method is None else image.transpose(method)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale high-bit-depth pixel arrays into 0..255.

    Pillow's own ``convert("RGB")`` clips 16-bit values at 255 instead of scaling them,
    which turns most 16-bit images white.
    """
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        top = 1.0 if float(np.nanmax(array)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(array) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # Integer modes ("I;16", "I") come from 16-bit files.
    return (np.clip(array.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read any image Pillow can decode as an ``(H, W, 3)`` uint8 RGB array, as displayed.

    The EXIF orientation is applied. Grayscale, palette, CMYK and 16-bit images are
    converted; an alpha channel is dropped (not composited), as the CycleGAN reference loader
    does with ``convert("RGB")``.

    Raises:
        ImageReadError: The file is not a decodable image; the message names the path.
        DatasetLayoutError: The file does not exist.
    """
    path = Path(path)
    image = _open(path, RGB_EXPECTED)
    if image.mode in _DEEP_MODES:
        gray = _to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except ValueError as err:  # a mode Pillow cannot convert
        raise ImageReadError(
            f"cannot read image {str(path)!r}: {err}; expected {RGB_EXPECTED}"
        ) from err


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel label mask (one class index per pixel) as ``(H, W)`` uint8.

    The EXIF orientation is applied. A 16-bit one-channel PNG is read as indices (not
    rescaled) when every index fits in 0..255.

    Raises:
        ImageReadError: Undecodable file, a mask with colour channels (a label map must hold
            indices, not colours, so silently converting it would scramble classes), or a
            16-bit index above 255.
        DatasetLayoutError: The file does not exist.
    """
    path = Path(path)
    image = _open(path, MASK_EXPECTED)
    _check_mask_mode(path, image.mode)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        top = int(array.max()) if array.size else 0
        if top > 255 or int(array.min()) < 0:
            raise ImageReadError(
                f"mask {str(path)!r} ({image.mode}) holds index {top}; expected {MASK_EXPECTED} "
                "with indices 0..255"
            )
    return array.astype(np.uint8)


def _check_mask_mode(path: Path, mode: str) -> None:
    if mode not in MASK_MODES:
        raise ImageReadError(f"mask {str(path)!r} has mode {mode!r}; expected {MASK_EXPECTED}")


# ------------------------------------------------------------------ setup checks
def probe_image(path: str | Path, mask: bool = False) -> tuple[int, int]:
    """Check that ``path`` is a complete image without decoding its pixels; return its
    displayed ``(width, height)`` in pixels (EXIF orientations 5-8 swap them).

    Reads the header (format, mode, size, orientation) and, for PNG and JPEG, the last bytes
    (a truncated file lacks the IEND chunk / EOI marker); a file whose tail differs, or of
    another format, is decoded in full to tell trailing data from truncation.

    Args:
        path: The image file.
        mask: Require a one-channel class-index mode (see ``MASK_MODES``).

    Raises:
        DatasetLayoutError: The file does not exist.
        ImageReadError: Not an image, truncated, or a mode that cannot be served; names
            the file and what was expected.
    """
    path = Path(path)
    expected = MASK_EXPECTED if mask else RGB_EXPECTED
    try:
        with Image.open(path) as image:
            tail = _TAILS.get(image.format or "")
            if tail is None or _last_bytes(path, len(tail)) != tail:
                image.load()
            mode, size = image.mode, displayed_size(image)
    except FileNotFoundError as err:
        raise DatasetLayoutError(
            f"image {str(path)!r} does not exist; expected {expected}"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(
            f"cannot read image {str(path)!r}: {err}; expected {expected}"
        ) from err
    if mask:
        _check_mask_mode(path, mode)
    elif mode not in RGB_MODES:
        raise ImageReadError(f"image {str(path)!r} has mode {mode!r}; expected {expected}")
    return size


def check_masks(
    images: Sequence[Path], masks: Sequence[Path], image_sizes: Sequence[tuple[int, int]]
) -> None:
    """Probe every mask (one-channel class indices) and require its image's displayed size.

    Args:
        images: Image files.
        masks: The mask of each image, aligned with ``images``.
        image_sizes: ``(width, height)`` of each image, from :func:`check_images`.

    Raises:
        ImageReadError: A mask that cannot be read or has colour channels.
        DatasetLayoutError: A mask whose size differs from its image's; names both files.
    """
    for mask, mask_size, image, size in zip(
        masks, check_images(masks, mask=True), images, image_sizes
    ):
        if mask_size != size:
            raise DatasetLayoutError(size_mismatch(mask, mask_size, image, size))


def size_mismatch(
    label: Path, label_size: Sequence[int], image: Path, image_size: Sequence[int]
) -> str:
    """The message for a label/mask whose ``(width, height)`` differs from its image's."""
    return (
        f"label {str(label)!r} is {label_size[0]}x{label_size[1]} but image {str(image)!r} is "
        f"{image_size[0]}x{image_size[1]} (width x height as displayed, EXIF orientation "
        "applied); expected equal sizes"
    )


def option(name: str) -> str:
    """How a user sets data-module argument ``name`` in a config or on the command line, for
    error messages (``data.init_args.labelled_fraction``)."""
    return f"data.init_args.{name}"


def _last_bytes(path: Path, n: int) -> bytes:
    with path.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - n))
        return f.read(n)


def check_images(paths: Sequence[str | Path], mask: bool = False) -> list[tuple[int, int]]:
    """:func:`probe_image` every file; the displayed ``(width, height)`` of each, in order.

    Data modules call this at ``setup()`` so a broken file fails before training. It costs
    about 0.1 ms per file (a header parse and 12 bytes read; measured on 256x256 JPEG/PNG and
    2048x1024 PNG alike), so 100 ms per 1,000 images, against 1-6 s to decode them. A file
    already probed in this process, unchanged since (same inode, size and mtime), is not
    opened again: a fit then a test, or many data modules over one dataset, pay once.
    """
    sizes = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            sizes.append(probe_image(path, mask=mask))  # raises, naming the file
            continue
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, mask)
        size = _PROBED.get(key)
        if size is None:
            size = probe_image(path, mask=mask)
            if len(_PROBED) < _PROBED_LIMIT:
                _PROBED[key] = size
        sizes.append(size)
    return sizes


#: Files that passed :func:`probe_image` in this process -> their size (bounded: ~50 MB).
_PROBED: dict[tuple[int, int, int, int, bool], tuple[int, int]] = {}
_PROBED_LIMIT = 250_000


# ------------------------------------------------------------------ text files
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def read_text(path: str | Path, expected: str) -> str:
    """Decode a text annotation file as Windows, macOS and Linux tools write it: UTF-8 with or
    without a byte-order mark (Excel, Notepad), UTF-16 with a BOM ("Unicode text"); line ends
    LF, CRLF or CR all read as one line break by ``str.splitlines``.

    Raises:
        DatasetLayoutError: The file does not exist.
        AnnotationError: Not decodable as UTF-8/UTF-16 text; names the file and ``expected``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"file {str(path)!r} does not exist; expected {expected}")
    data = path.read_bytes()
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise AnnotationError(
            f"{str(path)!r} is not UTF-8 or UTF-16 text ({err}); expected {expected}"
        ) from err


def stems(paths: Iterable[Path]) -> list[str]:
    """File names without extension, in the order given."""
    return [p.stem for p in paths]
