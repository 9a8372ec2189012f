"""ResNet generator of Johnson et al. as used by CycleGAN (Zhu et al. 2017, appendix 7.2).

c7s1-64, d128, d256, R256 x n_blocks, u128, u64, c7s1-3 with a final tanh.
At ngf=64, n_blocks=9, instance norm this has 11,378,179 parameters (the official count).
"""

from __future__ import annotations

from torch import Tensor, nn

from gan_suite.nets.checkpointing import run_sequential
from gan_suite.nets.norm import conv_bias, norm_layer
from gan_suite.nets.sizes import InputSizes


class ResnetBlock(nn.Module):
    """Two 3x3 convs with reflection padding and a skip connection (x + F(x))."""

    def __init__(self, dim: int, norm: str = "instance", dropout: float = 0.0) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=bias),
            make_norm(dim),
            nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), make_norm(dim)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """Image-to-image generator: 2 stride-2 downsamplings, residual blocks, 2 upsamplings.

    Args:
        in_channels: channels of the input image.
        out_channels: channels of the output image (tanh output in [-1, 1]).
        ngf: filters of the first conv layer (64 in the paper).
        n_blocks: residual blocks (9 for 256x256 images, 6 for 128x128).
        norm: ``instance`` (paper), ``batch`` or ``none``.
        dropout: dropout inside the residual blocks (0 in CycleGAN).
        n_downsampling: stride-2 convs before the blocks (2 in the paper).
        gradient_checkpointing: recompute each residual block's activations in the backward
            pass instead of keeping them (less memory, one more block forward; training only).

    Input sizes (:meth:`input_sizes`): each side a multiple of 2**n_downsampling (else the
    upsampled output is not the input's size) and at least 2 * 2**n_downsampling px (the
    residual blocks' reflection padding needs 2 px at the bottleneck): multiples of 4 from
    8 px in the paper's setting.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: float = 0.0,
        n_downsampling: int = 2,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.n_downsampling, self.n_blocks = n_downsampling, n_blocks
        self.gradient_checkpointing = gradient_checkpointing
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7, bias=bias),
            make_norm(ngf),
            nn.ReLU(True),
        ]
        ch = ngf
        for _ in range(n_downsampling):
            layers += [
                nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=bias),
                make_norm(ch * 2),
                nn.ReLU(True),
            ]
            ch *= 2
        layers += [ResnetBlock(ch, norm, dropout) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [
                nn.ConvTranspose2d(
                    ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=bias
                ),
                make_norm(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def input_sizes(self) -> InputSizes:
        """Accepted sides (class docstring); the first 7x7 reflection pad needs 4 px."""
        step = 2**self.n_downsampling
        bottleneck = 2 if self.n_blocks > 0 else 1
        return InputSizes(min_size=max(4, bottleneck * step), multiple=step)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        if self.gradient_checkpointing:
            return run_sequential(self.model, x, ResnetBlock)
        return self.model(x)
