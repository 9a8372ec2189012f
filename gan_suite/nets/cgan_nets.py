"""Nets of the conditional GAN (Mirza & Osindero 2014): G(z, y) and D(x, y).

- :class:`ConditionalMLPGenerator` / :class:`ConditionalMLPDiscriminator`: the paper's two-branch
  MLPs. Section 4.1 (MNIST): G maps z (100) -> 200 ReLU and y (one-hot 10) -> 1000 ReLU, joins
  them (concatenation) into a 1200 ReLU layer and outputs 784 sigmoid units; D maps x -> maxout
  240 units x 5 pieces and y -> maxout 50 x 5, joins them into maxout 240 x 4, then one logit.
  Section 4.2 (multimodal): G maps z (100) -> 500 ReLU and image features (4096) -> 2000 ReLU,
  joined by a 200-d *linear* layer that is the word vector; D maps the word vector -> 500 ReLU
  and the features -> 1200 ReLU, joined by maxout 1000 x 3, then one logit.
- :class:`ConditionalConvGenerator` / :class:`ConditionalConvDiscriminator`: a DCGAN-style
  variant for larger and RGB images (y concatenated to z in G, as constant extra planes in D).

Every discriminator returns raw logits (N,): the sigmoid lives in the BCE-with-logits loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gan_suite.nets.sizes import InputSizes


class Maxout(nn.Module):
    """Maxout layer (Goodfellow et al. 2013): h_j = max_k (W x + b)_{j,k} over ``pieces`` k.

    One linear map to ``units * pieces`` outputs, grouped so that unit j owns the consecutive
    outputs ``j * pieces ... j * pieces + pieces - 1``.
    """

    def __init__(self, in_features: int, units: int, pieces: int) -> None:
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear(x)  # (N, units * pieces)
        return out.view(*out.shape[:-1], self.units, self.pieces).amax(dim=-1)


def hidden_layer(in_features: int, units: int, pieces: int | None) -> nn.Module:
    """A maxout layer with ``pieces`` pieces, or a ReLU layer when ``pieces`` is None."""
    if pieces is None:
        return nn.Sequential(nn.Linear(in_features, units), nn.ReLU())
    return Maxout(in_features, units, pieces)


_OUTPUTS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "linear": nn.Identity}


def output_activation(name: str) -> nn.Module:
    """``sigmoid`` ([0, 1] pixels, the paper), ``tanh`` ([-1, 1]) or ``linear`` (word vectors)."""
    if name not in _OUTPUTS:
        raise ValueError(f"output={name!r}: expected one of {', '.join(_OUTPUTS)}")
    return _OUTPUTS[name]()


class ConditionalMLPGenerator(nn.Module):
    """G(z, y): two ReLU branches, concatenated, [a joint ReLU layer], the output layer.

    Args:
        z_dim: noise dimensions (100).
        cond_dim: condition dimensions (10 one-hot classes; 4096 image features in 4.2).
        out_dim: output dimensions (784 = 28x28 pixels; 200-d word vectors in 4.2).
        z_hidden: units of the noise branch (200; 500 in 4.2).
        cond_hidden: units of the condition branch (1000; 2000 in 4.2).
        joint_hidden: units of the joint ReLU layer (1200), or None: the joint layer is the
            linear output itself (section 4.2).
        dropout: dropout probability on the joint representation (the input of the output
            layer), the paper's "dropout 0.5 applied to the generator".
        output: output activation: ``sigmoid``, ``tanh`` or ``linear``.
    """

    def __init__(
        self,
        z_dim: int = 100,
        cond_dim: int = 10,
        out_dim: int = 784,
        z_hidden: int = 200,
        cond_hidden: int = 1000,
        joint_hidden: int | None = 1200,
        dropout: float = 0.5,
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        self.z_branch = hidden_layer(z_dim, z_hidden, None)
        self.cond_branch = hidden_layer(cond_dim, cond_hidden, None)
        joint: list[nn.Module] = []
        width = z_hidden + cond_hidden
        if joint_hidden is not None:
            joint.append(hidden_layer(width, joint_hidden, None))
            width = joint_hidden
        joint += [nn.Dropout(dropout), nn.Linear(width, out_dim), output_activation(output)]
        self.joint = nn.Sequential(*joint)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        """(N, z_dim), (N, cond_dim) -> (N, out_dim)."""
        return self.joint(torch.cat([self.z_branch(z), self.cond_branch(cond)], dim=1))


class ConditionalMLPDiscriminator(nn.Module):
    """D(x, y): a branch for x and one for y, concatenated into a joint maxout layer, one logit.

    Args:
        x_dim: data dimensions (784; 200 for word vectors).
        cond_dim: condition dimensions (10; 4096).
        x_units, x_pieces: the data branch, 240 units x 5 pieces (section 4.2: 500 ReLU units,
            ``x_pieces=None``).
        cond_units, cond_pieces: the condition branch, 50 x 5 (4.2: 1200 ReLU, None).
        joint_units, joint_pieces: the joint maxout layer, 240 x 4 (4.2: 1000 x 3).
        dropout: dropout on the hidden layers' outputs (the inputs of the joint and output
            layers), the paper's 0.5.
        input_dropout: dropout on x before its branch (the condition is never dropped: a
            hidden condition would make "is this x consistent with y?" unanswerable).

    Input sizes: a fixed vector of ``x_dim`` entries; for images, the one side
    :meth:`input_sizes` gives (28 px for 784 grey pixels).
    """

    def __init__(
        self,
        x_dim: int = 784,
        cond_dim: int = 10,
        x_units: int = 240,
        x_pieces: int | None = 5,
        cond_units: int = 50,
        cond_pieces: int | None = 5,
        joint_units: int = 240,
        joint_pieces: int | None = 4,
        dropout: float = 0.5,
        input_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.x_branch = nn.Sequential(
            nn.Dropout(input_dropout), hidden_layer(x_dim, x_units, x_pieces)
        )
        self.cond_branch = hidden_layer(cond_dim, cond_units, cond_pieces)
        self.joint = nn.Sequential(
            nn.Dropout(dropout),
            hidden_layer(x_units + cond_units, joint_units, joint_pieces),
            nn.Dropout(dropout),
            nn.Linear(joint_units, 1),
        )

    def input_sizes(self, channels: int = 1) -> InputSizes:
        """The one image side whose ``channels`` x side x side pixels make ``x_dim``.

        Raises:
            ValueError: ``x_dim`` is not ``channels`` times a square.
        """
        side = math.isqrt(self.x_dim // channels)
        if channels * side * side != self.x_dim:
            raise ValueError(f"x_dim={self.x_dim} is not {channels} x a square image")
        return InputSizes(side, 1, side)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """(N, x_dim), (N, cond_dim) -> (N,) logits of "x is real given cond"."""
        h = torch.cat([self.x_branch(x), self.cond_branch(cond)], dim=1)
        return self.joint(h).squeeze(1)


def conv_stages(image_size: int) -> tuple[int, int]:
    """(base side, number of stride-2 stages): halve ``image_size`` while it is even and > 7.

    28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4); DCGAN's 4x4 base where the size allows it.
    """
    side, n = image_size, 0
    while side % 2 == 0 and side > 7:
        side, n = side // 2, n + 1
    if n == 0:
        raise ValueError(f"image_size={image_size}: the conv nets need an even size >= 8")
    return side, n


class ConditionalConvGenerator(nn.Module):
    """DCGAN-style G(z, y): [z, y] -> linear -> (base x base) -> stride-2 transposed convs.

    Args:
        z_dim: noise dimensions.
        n_classes: one-hot condition dimensions, concatenated to z.
        image_size: output side (see :func:`conv_stages`).
        channels: output channels (1 grayscale, 3 RGB).
        ngf: channels before the last transposed conv; doubled per stage towards the base.
        output: ``sigmoid`` or ``tanh``.
    """

    def __init__(
        self,
        z_dim: int = 100,
        n_classes: int = 10,
        image_size: int = 32,
        channels: int = 3,
        ngf: int = 64,
        output: str = "tanh",
    ) -> None:
        super().__init__()
        self.base, n_up = conv_stages(image_size)
        self.c0 = ngf * 2 ** (n_up - 1)
        self.project = nn.Sequential(
            nn.Linear(z_dim + n_classes, self.c0 * self.base**2, bias=False),
            nn.BatchNorm1d(self.c0 * self.base**2),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        c = self.c0
        for _ in range(n_up - 1):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(),
            ]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, stride=2, padding=1)]
        self.up = nn.Sequential(*layers, output_activation(output))

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        """(N, z_dim), (N, n_classes) -> (N, channels, image_size, image_size)."""
        h = self.project(torch.cat([z, cond], dim=1))
        return self.up(h.view(-1, self.c0, self.base, self.base))


class ConditionalConvDiscriminator(nn.Module):
    """DCGAN-style D(x, y): y as constant planes beside the image, strided convs, one logit.

    Args:
        n_classes: one-hot condition dimensions (one plane each).
        image_size: input side; channels: input channels.
        ndf: channels of the first conv, doubled per stage (no BatchNorm on the first).

    Input sizes (:meth:`input_sizes`): exactly ``image_size`` (the head is a linear layer
    over the base map).
    """

    def __init__(
        self, n_classes: int = 10, image_size: int = 32, channels: int = 3, ndf: int = 64
    ) -> None:
        super().__init__()
        self.image_size = image_size
        base, n_down = conv_stages(image_size)
        layers: list[nn.Module] = []
        c_in, c = channels + n_classes, ndf
        for i in range(n_down):
            layers.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:  # raw pixels are not normalised (DCGAN)
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2))
            c_in, c = c, c * 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * base**2, 1)

    def input_sizes(self) -> InputSizes:
        """Exactly ``image_size`` px (class docstring)."""
        return InputSizes(self.image_size, 1, self.image_size)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """(N, C, H, W), (N, n_classes) -> (N,) logits."""
        planes = cond[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return self.head(self.features(torch.cat([x, planes], dim=1)).flatten(1)).squeeze(1)


def init_uniform(net: nn.Module, irange: float) -> nn.Module:
    """pylearn2's ``irange`` initialisation of the paper's MLPs: linear weights ~ U(-r, r),
    biases 0 (Goodfellow et al.'s adversarial MNIST config: r = 0.05 in G, 0.005 in D)."""
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.uniform_(m.weight, -irange, irange)
            nn.init.zeros_(m.bias)
    return net
