"""PatchGAN discriminator (Isola et al. 2017; CycleGAN appendix 7.2).

C64-C128-C256-C512 then a 1-channel conv: with n_layers=3 each output unit sees a 70x70
patch. At ndf=64, instance norm this has 2,764,737 parameters (the official count).
"""

from __future__ import annotations

from torch import Tensor, nn

from gan_suite.nets.norm import conv_bias, norm_layer
from gan_suite.nets.sizes import InputSizes


class PatchDiscriminator(nn.Module):
    """Fully convolutional real/fake classifier of overlapping patches.

    Args:
        in_channels: channels of the judged image.
        ndf: filters of the first conv layer (64 in the paper).
        n_layers: stride-2 conv layers after the first (3 gives the 70x70 PatchGAN).
        norm: ``instance`` (paper), ``batch`` or ``none``; the first layer has no norm.

    Input sizes (:meth:`input_sizes`): sides >= 3 * 2**n_layers px (24 px for the 70x70
    PatchGAN): the n_layers halvings must leave 3 px for the two stride-1 4x4 convs (the last
    normalised map then has 2 px, InstanceNorm's minimum, and the logit map 1 px).
    """

    def __init__(
        self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance"
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last C-layer keeps resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                make_norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def input_sizes(self) -> InputSizes:
        """Accepted sides (class docstring); with no C-layer, the first conv must leave 2 px."""
        return InputSizes(min_size=3 * 2**self.n_layers if self.n_layers > 0 else 4)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 1, H', W') patch logits
        return self.model(x)
