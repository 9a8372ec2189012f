"""Albumentations pipelines shared by every image data module.

Train: resize to ``load_size`` -> random crop ``crop_size`` -> horizontal flip (optional)
-> normalise to [-1, 1] -> CHW float tensor. This is the CycleGAN/pix2pix
``resize_and_crop`` preprocessing. Eval: resize straight to ``crop_size`` -> normalise.
Masks ride along through the same geometric ops with nearest-neighbour interpolation.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

# Albumentations asks PyPI for a newer version on import; this machine may have no network,
# and a data module must never touch it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

#: Name under which the second image of an aligned pair is passed to a joint transform.
PAIR_IMAGE_KEY = "image_B"
PAIR_MASK_KEY = "mask_B"


def build_transform(
    *,
    load_size: int,
    crop_size: int,
    flip: bool,
    train: bool,
    paired: bool = False,
    center_crop: int | None = None,
) -> A.Compose:
    """Build the image(+mask) pipeline.

    Args:
        load_size: Side length images are resized to before the random crop (train only).
        crop_size: Side length of the output images.
        flip: Random horizontal flip with p=0.5 (train only).
        train: Random crop/flip when True; deterministic resize when False.
        paired: Also accept ``image_B``/``mask_B`` targets that receive the *same* random
            crop and flip as ``image``/``mask`` (aligned pairs must stay aligned).
        center_crop: Side of a central square cut from the stored image before anything else
            (StarGAN's CelebA: 178 of the 178x218 aligned faces), or None.
    """
    if crop_size > load_size and train:
        raise ValueError(
            f"crop_size ({crop_size}) must be <= load_size ({load_size}): "
            "the random crop is taken from the resized image"
        )
    # Bicubic like the CycleGAN reference loader; masks always use nearest (set below).
    if train:
        ops: list[Any] = [
            A.Resize(load_size, load_size, interpolation=cv2.INTER_CUBIC),
            A.RandomCrop(crop_size, crop_size),
        ]
        if flip:
            ops.append(A.HorizontalFlip(p=0.5))
    else:
        ops = [A.Resize(crop_size, crop_size, interpolation=cv2.INTER_CUBIC)]
    if center_crop is not None:
        ops.insert(0, A.CenterCrop(center_crop, center_crop))
    ops += [
        A.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), max_pixel_value=255.0),
        ToTensorV2(),
    ]
    targets = {PAIR_IMAGE_KEY: "image", PAIR_MASK_KEY: "mask"} if paired else {}
    # Shape checks are off because the two halves of an aligned pair may arrive at different
    # sizes; the first op resizes both to the same square anyway.
    compose = A.Compose(
        ops,
        additional_targets=targets,
        mask_interpolation=cv2.INTER_NEAREST,
        is_check_shapes=not paired,
    )
    compose.random_ops = train  # read by item_seed: evaluation items draw nothing
    return compose


def draw_seed() -> int:
    """Draw an augmentation seed from torch's global generator.

    Torch's generator is what Lightning's ``seed_everything(workers=True)`` seeds differently
    in every DataLoader worker and every epoch. A Compose seeded once at construction would be
    copied into each worker with the same state and repeat the same crops in all of them.
    """
    return int(torch.randint(0, 2**31 - 1, ()).item())


def item_seed(transform: A.Compose) -> int:
    """The seed of one item's augmentation: :func:`draw_seed` for a random pipeline, 0 for a
    deterministic one (``build_transform(train=False)``). Reading evaluation items then never
    moves torch's global stream, which the training's own draws come from: a callback that
    reads the validation set once per process (SampleGrid's fixed inputs) would otherwise
    make a resumed run drift from the uninterrupted one."""
    return draw_seed() if getattr(transform, "random_ops", True) else 0


def apply(transform: A.Compose, seed: int, **targets: np.ndarray) -> dict[str, Any]:
    """Run ``transform`` with randomness fixed by ``seed``; masks come back as int64 tensors."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = transform(**targets)
    for key in ("mask", PAIR_MASK_KEY):
        if key in out:
            out[key] = out[key].long()
    return out
