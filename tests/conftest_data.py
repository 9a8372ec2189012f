"""Builders of small on-disk dataset fixtures for the data-module tests (never downloaded).

Plain functions rather than pytest fixtures, so test modules can import them without
shadowing names; each test passes its own ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 48)) -> np.ndarray:
    """An (H, W, 3) uint8 image of one colour; size is (H, W)."""
    return np.broadcast_to(np.array(color, np.uint8), (*size, 3)).copy()


def noise(seed: int, size: tuple[int, int] = (40, 40)) -> np.ndarray:
    """An (H, W, 3) uint8 random image, so any crop/flip mismatch shows up."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write ``array`` (optionally converted to a Pillow ``mode``) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def make_cyclegan_tree(root: Path) -> Path:
    """CycleGAN layout with mixed formats and unequal domain sizes.

    trainA: 5 images (RGB png, grayscale png, RGBA png, JPEG, RGB png); trainB: 3;
    testA: 4; testB: 3. Every image has a distinct solid colour.
    """
    for i, (name, mode) in enumerate(
        [("a0.png", None), ("a1.png", "L"), ("a2.png", "RGBA"), ("a3.jpg", None), ("a4.png", None)]
    ):
        save(root / "trainA" / name, solid((40 * i, 200, 30)), mode)
    for i in range(3):
        save(root / "trainB" / f"b{i}.png", solid((10, 50 * i, 220)))
    for i in range(4):
        save(root / "testA" / f"t{i}.png", solid((200, 20 * i, 0)))
    for i in range(3):
        save(root / "testB" / f"u{i}.png", solid((0, 20 * i, 200)))
    return root


def make_pix2pix_tree(root: Path, identical_halves: bool = False) -> Path:
    """pix2pix layout (train/, val/, test/) of A|B side-by-side images, 32x64 each.

    With ``identical_halves`` both halves hold the same random pattern (to check that A and B
    get the same crop/flip); otherwise left = solid red, right = solid blue.
    """
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        for i in range(count):
            if identical_halves:
                half = noise(i + 10 * len(split), (32, 32))
                ab = np.concatenate([half, half], axis=1)
            else:
                ab = np.concatenate([solid((255, 0, 0), (32, 32)), solid((0, 0, 255), (32, 32))], 1)
            save(root / split / f"{i:03d}.png", ab)
    return root


def make_aligned_tree(root: Path, count: int = 3) -> Path:
    """Aligned folders trainA/trainB/testA/testB with equal names; B = 255 - A."""
    for split in ("train", "test"):
        for i in range(count):
            a = noise(100 * len(split) + i, (32, 32))
            save(root / f"{split}A" / f"{i:03d}.png", a)
            save(root / f"{split}B" / f"{i:03d}.png", 255 - a)
    return root


def tiny_unpaired_data(load_size: int = 36, n_train: int = 8, n_test: int = 4):
    """An UnpairedDataModule over a small embedded shapes set: 32 px crops, batch 2, no workers."""
    from datamodules import UnpairedDataModule

    return UnpairedDataModule(
        load_size=load_size,
        crop_size=32,
        batch_size=2,
        num_workers=0,
        embedded={"n_train": n_train, "n_test": n_test, "image_size": 32},
    )
