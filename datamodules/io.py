"""Reading images and folders from disk, with errors that name the file and the expectation.

Every data module goes through these helpers, so a bad dataset fails the same way everywhere:
``DatasetLayoutError`` for a missing/empty folder (message names the path and the layout that
was expected) and ``ImageReadError`` for a file that Pillow cannot decode.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
)


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing, empty or does not follow the expected on-disk layout."""


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded into the expected array."""


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


def list_images(folder: str | Path, expected: str | None = None) -> list[Path]:
    """List the image files directly inside ``folder``, sorted by file name.

    Sorting by name is what makes "aligned by sorted order" well defined for paired folders.

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
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DatasetLayoutError(
            f"dataset folder {str(folder)!r} contains no images "
            f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); {expected}"
        )
    return files


def _open(path: Path, expected: str) -> Image.Image:
    try:
        image = Image.open(path)
        # Decode now: Image.open is lazy and truncated files only fail on load().
        image.load()
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(
            f"cannot read image {str(path)!r}: {err}; expected {expected}"
        ) from err
    return image


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
    """Read any image Pillow can decode as an ``(H, W, 3)`` uint8 RGB array.

    Grayscale, palette, CMYK and 16-bit images are converted; an alpha channel is dropped
    (not composited), as the CycleGAN reference loader does with ``convert("RGB")``.

    Raises:
        ImageReadError: The file is not a decodable image; the message names the path.
    """
    path = Path(path)
    image = _open(path, "an RGB or grayscale image readable by Pillow")
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        gray = _to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel label mask (one class index per pixel) as ``(H, W)`` uint8.

    Raises:
        ImageReadError: Undecodable file, or a mask with colour channels (a label map must
            hold indices, not colours, so silently converting it would scramble classes).
    """
    path = Path(path)
    image = _open(path, "a single-channel (mode L or P) label mask")
    if image.mode not in {"L", "P", "1"}:
        raise ImageReadError(
            f"mask {str(path)!r} has mode {image.mode!r}; expected a single-channel "
            "(mode L or P) PNG holding one class index per pixel"
        )
    return np.asarray(image, dtype=np.uint8).copy()


def stems(paths: Iterable[Path]) -> list[str]:
    """File names without extension, in the order given."""
    return [p.stem for p in paths]
