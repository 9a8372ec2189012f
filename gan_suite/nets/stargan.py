"""StarGAN's generator and discriminator (Choi et al. 2018, appendix; the official code's
``model.py``), with MatchGAN's pair head (Sun et al. 2020).

Generator, for ``c_dim`` target attributes concatenated to the image as constant planes::

    c7s1-64, d128, d256 (4x4 stride 2), 6 residual blocks at 256, u128, u64 (4x4 transposed,
    stride 2), c7s1-3 + tanh; instance norm with affine parameters, no conv biases.

Discriminator (PatchGAN critic with an auxiliary classifier)::

    6 x (4x4 conv stride 2, LeakyReLU 0.01): 64 -> 128 -> ... -> 2048 channels at image/64
    src: 3x3 conv -> 1 (a real/fake map);  cls: (image/64)x(image/64) conv -> c_dim logits
    match (MatchGAN): the embeddings of two images concatenated along channels, one
    (image/64)x(image/64) conv -> 2 logits (no match / match)

At 128 px with 5 attributes: generator 8,430,528 parameters, discriminator 44,762,048
(the official counts; the match head adds 32,768).

The official code builds instance norm with ``track_running_stats=True`` but never switches
the nets to eval mode, so it always normalises by the instance's own statistics; Lightning
calls ``eval()`` for validation, so the running statistics are simply not kept here (same
outputs, same parameter count).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gan_suite.nets.checkpointing import run_sequential
from gan_suite.nets.sizes import InputSizes


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class StarGANResidualBlock(nn.Module):
    """x + IN(conv3x3(ReLU(IN(conv3x3(x))))), no biases."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            _instance_norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            _instance_norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class StarGANGenerator(nn.Module):
    """G(x, c): translate images to target attributes.

    Args:
        c_dim: number of attributes (length of c).
        conv_dim: channels of the first conv (64).
        repeat_num: residual blocks (6).
        channels: image channels (3).
        gradient_checkpointing: recompute each residual block's activations in the backward
            pass instead of keeping them (less memory, one more block forward; training only).

    Input sizes (:meth:`input_sizes`): sides that are multiples of 4 (two stride-2 stages, so
    the output has the input's size) from 8 px (InstanceNorm needs 2 x 2 px at the
    bottleneck).
    """

    def __init__(
        self,
        c_dim: int = 5,
        conv_dim: int = 64,
        repeat_num: int = 6,
        channels: int = 3,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        ch = conv_dim
        layers: list[nn.Module] = [
            nn.Conv2d(channels + c_dim, ch, 7, padding=3, bias=False),
            _instance_norm(ch),
            nn.ReLU(inplace=True),
        ]
        for _ in range(2):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1, bias=False),
                _instance_norm(ch * 2),
                nn.ReLU(inplace=True),
            ]
            ch *= 2
        layers += [StarGANResidualBlock(ch) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1, bias=False),
                _instance_norm(ch // 2),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        layers += [nn.Conv2d(ch, channels, 7, padding=3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def input_sizes(self) -> InputSizes:
        """Multiples of 4 from 8 px (class docstring)."""
        return InputSizes(min_size=8, multiple=4)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """(N, C, H, W) images in [-1, 1], (N, c_dim) 0/1 targets -> (N, C, H, W) in [-1, 1]."""
        planes = c.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        x = torch.cat([x, planes], dim=1)
        if self.gradient_checkpointing:
            return run_sequential(self.main, x, StarGANResidualBlock)
        return self.main(x)


class StarGANDiscriminator(nn.Module):
    """D(x) -> (src map, attribute logits); with ``match_head`` also MatchGAN's pair logits.

    Input sizes (:meth:`input_sizes`): ``image_size`` (up to ``image_size + 2**repeat_num - 1``
    px, which the convs floor to the same classifier kernel).

    Args:
        image_size: side of the (square) input images; ``image_size / 2**repeat_num`` must be
            a whole number >= 1 (the classifier's kernel size).
        c_dim: number of attributes.
        conv_dim: channels of the first conv (64).
        repeat_num: stride-2 convs (6 at 128 px).
        channels: image channels (3).
        match_head: add MatchGAN's pair classifier.
        match_features: what the pair classifier sees: ``concat`` (the official code: the two
            embeddings side by side) or ``relation`` (``|h_1 - h_2|`` and ``h_1 * h_2``, same
            channel count and parameters). A conv over the concatenation is a sum
            ``f(h_1) + g(h_2)``, and no such sum can say whether two images share a label
            (with labels a, b it would need g(a) > g(b) and g(b) > g(a)); the relation
            features are symmetric and can.

    Raises:
        ValueError: ``image_size`` not a multiple of ``2**repeat_num``, or an unknown
            ``match_features``.
    """

    def __init__(
        self,
        image_size: int = 128,
        c_dim: int = 5,
        conv_dim: int = 64,
        repeat_num: int = 6,
        channels: int = 3,
        match_head: bool = False,
        match_features: str = "concat",
    ) -> None:
        super().__init__()
        if match_features not in ("concat", "relation"):
            raise ValueError(f"match_features={match_features!r}: expected concat or relation")
        self.match_features = match_features
        kernel = check_discriminator_size(image_size, repeat_num)
        self.image_size, self.repeat_num = image_size, repeat_num
        layers: list[nn.Module] = [
            nn.Conv2d(channels, conv_dim, 4, stride=2, padding=1),
            nn.LeakyReLU(0.01),
        ]
        ch = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            ch *= 2
        self.main = nn.Sequential(*layers)
        self.src = nn.Conv2d(ch, 1, 3, padding=1, bias=False)
        self.cls = nn.Conv2d(ch, c_dim, kernel, bias=False)
        self.match = nn.Conv2d(2 * ch, 2, kernel, bias=False) if match_head else None

    def input_sizes(self) -> InputSizes:
        """The classifier's kernel is built for ``image_size``: the sides whose
        ``repeat_num`` floor halvings give the same kernel, ``image_size`` to
        ``image_size + 2**repeat_num - 1`` px (a larger side would give a map of logits)."""
        return InputSizes(self.image_size, 1, self.image_size + 2**self.repeat_num - 1)

    def embed(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, conv_dim * 2**(repeat_num-1), H / 2**repeat_num, same)."""
        return self.main(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) -> (src (N, 1, h, w) critic values, cls (N, c_dim) logits)."""
        h = self.embed(x)
        return self.src(h), self.cls(h).flatten(1)

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The src and cls heads on embeddings ``h`` from :meth:`embed`."""
        return self.src(h), self.cls(h).flatten(1)

    def match_logits(self, h_1: Tensor, h_2: Tensor) -> Tensor:
        """MatchGAN: (P, ...) embeddings of the two images of P pairs -> (P, 2) logits,
        class 1 = the pair carries the same label.

        Raises:
            RuntimeError: the net was built without ``match_head``.
        """
        if self.match is None:
            raise RuntimeError("this discriminator has no match head (match_head=False)")
        if self.match_features == "relation":
            pair = torch.cat([(h_1 - h_2).abs(), h_1 * h_2], dim=1)
        else:
            pair = torch.cat([h_1, h_2], dim=1)
        return self.match(pair).flatten(1)


def check_discriminator_size(image_size: int, repeat_num: int) -> int:
    """The classifier kernel ``image_size / 2**repeat_num``.

    Raises:
        ValueError: naming both options when it is not a whole number >= 1.
    """
    kernel, rest = divmod(image_size, 2**repeat_num)
    if kernel < 1 or rest:
        raise ValueError(
            f"image_size={image_size} is not a multiple of 2**d_repeat_num = {2**repeat_num}: "
            f"StarGAN's discriminator halves the image d_repeat_num={repeat_num} times; use "
            f"d_repeat_num <= {max(0, image_size.bit_length() - 1)} with a power-of-two size "
            "(6 at 128 px, 5 at 64 px, 4 at 32 px)"
        )
    return kernel
