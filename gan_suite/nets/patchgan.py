"""PatchGAN discriminator (Isola et al. 2017; CycleGAN appendix 7.2).

C64-C128-C256-C512 then a 1-channel conv: with n_layers=3 each output unit sees a 70x70
patch. At ndf=64, instance norm this has 2,764,737 parameters (the official count).
"""

from __future__ import annotations

from torch import Tensor, nn

from gan_suite.nets.norm import conv_bias, norm_layer


class PatchDiscriminator(nn.Module):
    """Fully convolutional real/fake classifier of overlapping patches.

    Args:
        in_channels: channels of the judged image.
        ndf: filters of the first conv layer (64 in the paper).
        n_layers: stride-2 conv layers after the first (3 gives the 70x70 PatchGAN).
        norm: ``instance`` (paper), ``batch`` or ``none``; the first layer has no norm.
    """

    def __init__(
        self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance"
    ) -> None:
        super().__init__()
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

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 1, H', W') patch logits
        return self.model(x)
