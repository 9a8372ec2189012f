"""DCGAN-style encoder-decoder nets of DiscoGAN (Kim et al. 2017, section 4 / appendix).

The generator is a 64x64 convolutional encoder (4 stride-2 4x4 convs, C64-C128-C256-C512,
BatchNorm on all but the first, LeakyReLU 0.2) followed by a deconvolutional decoder
(4 stride-2 4x4 transposed convs, 512-256-128-64-3, BatchNorm + ReLU, final tanh). The
discriminator is the same encoder plus a 4x4 valid conv to one logit per image.

No conv or transposed conv has a bias and BatchNorm is affine, as in the official
implementation: at width 64 this gives its counts, 5,513,856 generator and 2,765,568
discriminator parameters. (A bias would be cancelled by the following BatchNorm's shift
anyway; the first conv and the output layers also have none in the official code.)
"""

from __future__ import annotations

from torch import Tensor, nn

from gan_suite.nets.sizes import InputSizes


def _down(c_in: int, c_out: int, norm: bool) -> nn.Sequential:
    """A stride-2 4x4 conv halving the resolution, [BatchNorm], LeakyReLU 0.2."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """DiscoGAN's encoder: (B, C, 64, 64) -> (B, 8*width, 4, 4), keeping each stage's output.

    Args:
        in_channels: image channels.
        width: filters of the first conv (64 in the paper); doubled at each stage.
        n_layers: stride-2 stages (4 in the paper: 64 -> 4 px).
    """

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 4) -> None:
        super().__init__()
        chans = [in_channels] + [width * 2**i for i in range(n_layers)]
        # no norm on the first layer: normalising raw pixels only removes information (DCGAN)
        self.stages = nn.ModuleList(
            _down(chans[i], chans[i + 1], norm=i > 0) for i in range(n_layers)
        )
        self.out_channels = chans[-1]

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return the last feature map and the list of every stage's output (first to last)."""
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return x, feats


class EncoderDecoderGenerator(nn.Module):
    """DiscoGAN's generator G_AB / G_BA: (B, C_in, 64, 64) -> (B, C_out, 64, 64) in [-1, 1].

    The official code ends in a sigmoid on [0, 1] images; the suite's images are in [-1, 1],
    so the equivalent output is tanh.

    Args:
        in_channels: channels of the input domain.
        out_channels: channels of the output domain.
        ngf: width of the first encoder conv (64 in the paper).
        n_layers: stride-2 stages in each of encoder and decoder (4 in the paper).

    Input sizes (:meth:`input_sizes`): sides that are multiples of 2**n_layers (16), so the
    decoder gives back the input's size; 64 px in the paper.
    """

    def __init__(
        self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_layers: int = 4
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(in_channels, ngf, n_layers)
        chans = [ngf * 2**i for i in reversed(range(n_layers))]  # 512, 256, 128, 64
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.ConvTranspose2d(chans[-1], out_channels, 4, stride=2, padding=1, bias=False),
            nn.Tanh(),
        ]
        self.decoder = nn.Sequential(*layers)
        self.n_layers = n_layers

    def input_sizes(self) -> InputSizes:
        """Multiples of 2**n_layers px (class docstring)."""
        return InputSizes(min_size=2**self.n_layers, multiple=2**self.n_layers)

    def forward(self, x: Tensor) -> Tensor:
        code, _ = self.encoder(x)  # (B, 8*ngf, H/16, W/16)
        return self.decoder(code)


class DCGANDiscriminator(nn.Module):
    """DiscoGAN's discriminator D_A / D_B: one real/fake logit per 64x64 image.

    Returns ``(logits, features)``: logits (B, 1, 1, 1) and the outputs of the normalised
    encoder stages (2nd to last: (B, 128, 16, 16), (B, 256, 8, 8), (B, 512, 4, 4) at width 64),
    which the official code's feature-matching term compares. The paper's D ends in a sigmoid;
    this returns the pre-sigmoid logits and the losses apply BCE-with-logits, the same
    objective without the log(sigmoid) underflow of a saturated D.

    Args:
        in_channels: image channels.
        ndf: width of the first conv (64 in the paper).
        n_layers: stride-2 stages (4: 64 px -> 4 px, then the 4x4 valid conv -> 1 px).

    Input sizes (:meth:`input_sizes`): sides >= 4 * 2**n_layers px (64): the 4x4 valid head
    needs a 4 px code. 64 px gives one logit per image, larger images a grid of logits.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 4) -> None:
        super().__init__()
        self.encoder = ConvEncoder(in_channels, ndf, n_layers)
        self.head = nn.Conv2d(self.encoder.out_channels, 1, 4, stride=1, padding=0, bias=False)
        self.n_layers = n_layers

    def input_sizes(self) -> InputSizes:
        """Sides >= 4 * 2**n_layers px (class docstring)."""
        return InputSizes(min_size=4 * 2**self.n_layers)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        code, feats = self.encoder(x)
        # the official code matches the BatchNorm'd stages only (not the first, raw conv)
        return self.head(code), feats[1:]
