"""A compact classifier + segmenter that judges images (StarGAN's classifier, CycleGAN's FCN score).

One encoder, three heads:

- ``classify``: class logits of the image's label (StarGAN/MatchGAN "classification accuracy");
- ``segment``: per-pixel logits, 0 = background, 1 + class index (CycleGAN's "FCN score");
- ``features``: the pooled penultimate features, the suite's CPU feature space for FID/KID.

Every input is first resized to one fixed ``input_size``, so a 32 px quick-run translation and a
64 px dataset image are judged by exactly the same computation. Layout at ``input_size`` S,
width w (shapes as ``(N, C, H, W)``)::

    stem   3 -> w       @ S        conv3x3-BN-ReLU
    down1  w -> w       @ S/2      (conv3x3 stride 2 - BN - ReLU, conv3x3 - BN - ReLU)
    down2  w -> 2w      @ S/4
    down3  2w -> 4w     @ S/8
    down4  4w -> 4w     @ S/16     -> global average pool -> features (N, 4w) -> linear -> classes
    decoder (FCN-style): 1x1 projections of down4..stem to w channels, summed coarse to fine
           with bilinear 2x upsampling, then conv3x3-BN-ReLU and a 1x1 conv -> (1 + classes) @ S,
           resized back to the input's H x W.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

MIN_INPUT_SIZE = 24  # smallest side the shapes data exists at; 4 stride-2 stages need >= 16


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(_conv_bn_relu(c_in, c_out, stride=2), _conv_bn_relu(c_out, c_out))


class EvaluatorNet(nn.Module):
    """Shared-encoder classifier and FCN segmenter for [-1, 1] images of any size >= 24 px.

    Args:
        n_classes: object classes (segmentation adds a background class 0).
        width: channels of the first stage; the features have ``4 * width`` dimensions.
        input_size: side every image is resized to before the encoder, in pixels (a multiple
            of 16, so the four stride-2 stages divide it exactly).
        in_channels: image channels.
    """

    def __init__(
        self, n_classes: int = 4, width: int = 32, input_size: int = 32, in_channels: int = 3
    ) -> None:
        super().__init__()
        if input_size % 16 or input_size < 16:
            raise ValueError(f"input_size must be a multiple of 16 (>= 16), got {input_size}")
        self.n_classes, self.input_size = n_classes, input_size
        channels = [width, width, 2 * width, 4 * width, 4 * width]  # stem, down1..down4
        self.stem = _conv_bn_relu(in_channels, width)
        self.downs = nn.ModuleList(_down(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.num_features = channels[-1]
        self.classifier = nn.Linear(self.num_features, n_classes)
        # 1x1 projections of every scale to one decoder width: FCN's skip connections.
        self.skips = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.seg_head = nn.Sequential(
            _conv_bn_relu(width, width), nn.Conv2d(width, 1 + n_classes, 1)
        )

    def _resize_input(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"images must be at least {MIN_INPUT_SIZE} px on each side, got "
                f"{tuple(x.shape[-2:])}"
            )
        if tuple(x.shape[-2:]) == (self.input_size, self.input_size):
            return x
        # Antialiasing matters when shrinking: domain B's stripes would alias into moire.
        return F.interpolate(
            x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True
        )

    def encode(self, x: Tensor) -> list[Tensor]:
        """Feature maps of the stem and the four stages, fine to coarse."""
        maps = [self.stem(self._resize_input(x))]
        for down in self.downs:
            maps.append(down(maps[-1]))
        return maps

    @staticmethod
    def _pool(deepest: Tensor) -> Tensor:
        return deepest.mean(dim=(2, 3))  # (N, 4w)

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 4 * width) pooled penultimate features."""
        return self._pool(self.encode(x)[-1])

    def classify(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, n_classes) logits."""
        return self.classifier(self.features(x))

    def _decode(self, maps: list[Tensor], out_size: tuple[int, int]) -> Tensor:
        y = self.skips[-1](maps[-1])
        for skip, fine in zip(reversed(self.skips[:-1]), reversed(maps[:-1])):
            y = skip(fine) + F.interpolate(y, size=fine.shape[-2:], mode="bilinear")
        logits = self.seg_head(y)  # (N, 1 + n_classes, S, S)
        if tuple(logits.shape[-2:]) != out_size:
            logits = F.interpolate(logits, size=out_size, mode="bilinear")
        return logits

    def segment(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 1 + n_classes, H, W) logits (0 = background)."""
        return self._decode(self.encode(x), tuple(x.shape[-2:]))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both heads from one encoder pass: ``(class logits, segmentation logits)``."""
        maps = self.encode(x)
        return self.classifier(self._pool(maps[-1])), self._decode(maps, tuple(x.shape[-2:]))
