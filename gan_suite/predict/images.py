"""Predict's images: which files of ``--input`` are images, how they are sized for the net, and
how tensors are written back as PNG files.

Sizes (``--size``):

- ``train``: the training run's scale and crop. The image is resized, keeping its aspect
  ratio, so that it covers the training crop scaled up by ``load_size / crop_size`` (CycleGAN's
  286 -> 256 resize-and-crop), then the central crop of the training size is taken. Nothing
  is squashed; the borders of a non-square image are cut, as the training crops cut them.
- ``native``: the whole image, resized to the nearest size the generator accepts (each side
  rounded to a multiple of its total downsampling, as the official CycleGAN test does with
  ``--preprocess none``); the outputs have that size.
- an integer N: resize the shorter side to N, central N x N crop.

Pixels are normalised as in training: [-1, 1] (``normalize: unit`` data: [0, 1]); a model with
one input channel gets the luma of the image (ITU-R 601 weights, as the data modules).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from datamodules.io import (
    IMAGE_EXTENSIONS,
    DatasetLayoutError,
    check_images,
    is_system_entry,
    list_images,
    read_rgb,
)

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def collect_inputs(source: str | Path) -> tuple[list[Path], list[Path]]:
    """The images of ``--input`` (a folder, not recursive, or one image file), sorted by name,
    and the other files of the folder, which predict skips (hidden and system files are not
    listed). Every image's header is checked first, so a broken file stops predict before it
    writes anything.

    Raises:
        FileNotFoundError: ``source`` does not exist, or a folder holds no image.
        ValueError: a single file whose extension is not an image's.
        ImageReadError: an image that cannot be read or is truncated (names the file).
    """
    path = Path(source)
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"--input {path} is not an image file; expected one of {exts}")
        check_images([path])
        return [path], []
    if not path.exists():
        raise FileNotFoundError(
            f"--input {path} does not exist; expected a folder of images or one image"
        )
    try:
        images = list_images(path, f"--input expects a folder of images ({exts})")
    except DatasetLayoutError as err:
        raise FileNotFoundError(f"--input {path}: {err}") from err
    check_images(images)
    listed = set(images)
    skipped = sorted(
        p for p in path.iterdir() if p.is_file() and p not in listed and not is_system_entry(p)
    )
    return images, skipped


def output_stems(paths: list[Path]) -> list[str]:
    """File stems for the outputs: the input's stem, or ``<stem>_<ext>`` where two inputs share
    a stem (``a.jpg`` and ``a.png``), so no output overwrites another."""
    stems = [p.stem for p in paths]
    return [
        f"{p.stem}_{p.suffix.lstrip('.').lower()}" if stems.count(p.stem) > 1 else p.stem
        for p in paths
    ]


def round_to_multiple(side: int, multiple: int) -> int:
    """The nearest multiple of ``multiple`` to ``side`` (at least ``multiple``)."""
    return max(multiple, int(round(side / multiple)) * multiple)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # bicubic like the training loaders (albumentations INTER_CUBIC), antialiased when shrinking
    return F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]


def _center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def cover_and_crop(x: Tensor, size: tuple[int, int], scale: float = 1.0) -> Tensor:
    """Resize (aspect kept) so the image covers ``size`` x ``scale``, then crop the centre
    ``size``. (C, H, W) -> (C, size[0], size[1])."""
    h, w = x.shape[-2:]
    factor = max(size[0] * scale / h, size[1] * scale / w)
    covered = (max(size[0], round(h * factor)), max(size[1], round(w * factor)))
    return _center_crop(_resize(x, covered), size)


def load_image(
    path: Path,
    mode: str | int,
    train_size: tuple[int, int] | None,
    multiple: int = 1,
    load_scale: float = 1.0,
    center_crop: int | None = None,
) -> Tensor:
    """Read ``path`` and size it for the net: (3, H, W) float in [-1, 1].

    Args:
        mode: ``train``, ``native`` or an integer side (see the module docstring).
        train_size: (H, W) of the training images (needed by ``train``).
        multiple: what each side must be a multiple of (the generator's downsampling).
        load_scale: ``load_size / crop_size`` of the training data (1 when it has none).
        center_crop: a central square the training data cut first (StarGAN's CelebA 178).

    Raises:
        ImageReadError: the file cannot be decoded (the message names it).
    """
    x = torch.from_numpy(read_rgb(path)).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)
    if mode == "native":
        h, w = x.shape[-2:]
        return _resize(x, (round_to_multiple(h, multiple), round_to_multiple(w, multiple)))
    if center_crop is not None and min(x.shape[-2:]) >= center_crop:
        x = _center_crop(x, (center_crop, center_crop))
    if mode == "train":
        assert train_size is not None
        return cover_and_crop(x, train_size, load_scale)
    return cover_and_crop(x, (int(mode), int(mode)))


def to_model_range(x: Tensor, channels: int, unit_range: bool) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> the channels and pixel range the model was trained on."""
    if channels == 1:
        x = (x * _LUMA.to(x)).sum(dim=1, keepdim=True)
    return (x + 1.0) / 2.0 if unit_range else x


def save_png(image: Tensor, path: Path) -> None:
    """Write a (C, H, W) image in [-1, 1] (C = 1 or 3) as an 8-bit PNG."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().byte()
    array = array.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array)).save(
        path
    )
