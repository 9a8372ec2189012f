"""BDL's segmentation model M (DeepLab-v2) and its output-space discriminator.

DeepLab-v2 (Chen et al. 2017, as BDL and AdaptSegNet use it): a ResNet backbone whose last two
stages keep their resolution and dilate their 3x3 convolutions by 2 and 4 (output stride 8),
then ASPP as a *sum* of four 3x3 classifiers dilated by 6, 12, 18 and 24. The backbone is
torchvision's ResNet (Bottleneck blocks; ``layers`` (3, 4, 23, 3) = ResNet-101), so the
ImageNet weights torchvision publishes load into it from a local file.

The output-space discriminator (Tsai et al. 2018, BDL section 3.2) is fully convolutional:
five 4x4 stride-2 convolutions (ndf, 2ndf, 4ndf, 8ndf, 1) with LeakyReLU(0.2) between them,
applied to M's softmax output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from gan_suite.nets.sizes import InputSizes

#: ImageNet statistics of torchvision's pretrained ResNets (inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ASPPClassifier(nn.Module):
    """DeepLab-v2's classifier: the sum of 3x3 convs dilated by ``rates`` (padding = rate),
    weights ~ N(0, 0.01) as in the official code."""

    def __init__(self, in_channels: int, n_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, n_classes, 3, padding=r, dilation=r) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return sum(branch(x) for branch in self.branches)


class DeepLabV2(nn.Module):
    """DeepLab-v2: (N, 3, H, W) images in [-1, 1] -> (N, n_classes, ceil(H/8), ceil(W/8)) logits.

    Args:
        n_classes: output classes (19 for Cityscapes).
        layers: Bottleneck blocks per ResNet stage ((3, 4, 23, 3) = ResNet-101, the paper's;
            (3, 4, 6, 3) = ResNet-50; fewer for CPU demos).
        rates: ASPP dilation rates (6, 12, 18, 24).
        pretrained_backbone: a torchvision ResNet state dict file (ImageNet weights, e.g.
            ``resnet101-63fe2227.pth``) loaded into the backbone (its ``fc`` ignored), or None
            for random initialisation.

    Raises:
        FileNotFoundError: ``pretrained_backbone`` does not exist.
        ValueError: the file's tensors do not fit the backbone (names the mismatching keys).
    """

    output_stride = 8

    def __init__(
        self,
        n_classes: int = 19,
        layers: Sequence[int] = (3, 4, 23, 3),
        rates: Sequence[int] = (6, 12, 18, 24),
        pretrained_backbone: str | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers={list(layers)}: expected 4 stage depths >= 1")
        # dilations 2 and 4 instead of strides in the last two stages: output stride 8
        self.backbone = ResNet(Bottleneck, list(layers), replace_stride_with_dilation=[0, 1, 1])
        del self.backbone.fc, self.backbone.avgpool
        self.classifier = ASPPClassifier(512 * Bottleneck.expansion, n_classes, rates)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.pretrained_backbone = pretrained_backbone
        if pretrained_backbone is not None:
            self.load_backbone(pretrained_backbone)

    def load_backbone(self, path: str) -> None:
        """Load ImageNet weights of a torchvision ResNet from ``path`` (``fc`` is dropped)."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"pretrained_backbone {str(file)!r} does not exist: expected a torchvision "
                "ResNet state dict (e.g. resnet101-63fe2227.pth), or null for random init"
            )
        state = torch.load(file, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"pretrained_backbone {str(file)!r} does not fit layers "
                f"{[len(s) for s in self._stages()]}: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}"
            )

    def input_sizes(self) -> InputSizes:
        """Any side: the strided stem and the dilated stages round up (1 px -> a 1 x 1 map)."""
        return InputSizes()

    def _stages(self) -> list[nn.Sequential]:
        b = self.backbone
        return [b.layer1, b.layer2, b.layer3, b.layer4]

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The ASPP classifier's parameters (trained at 10x the backbone's learning rate)."""
        return list(self.classifier.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def forward(self, x: Tensor) -> Tensor:
        b = self.backbone
        x = ((x + 1) / 2 - self.mean) / self.std  # [-1, 1] -> ImageNet normalisation
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        for stage in self._stages():
            x = stage(x)
        return self.classifier(x)


class OutputDiscriminator(nn.Module):
    """Output-space discriminator: (N, n_classes, H, W) softmax maps -> (N, 1, H/32, W/32)
    logits (1 = target domain). Needs H, W >= 32.

    Args:
        n_classes: channels of the segmentation output (19: 2,781,121 parameters at ndf 64).
        ndf: width of the first conv (64).
    """

    min_size = 32

    def input_sizes(self) -> InputSizes:
        """Sides >= 32 px (five stride-2 4x4 convs; M's logits are upsampled to the image)."""
        return InputSizes(self.min_size)

    def __init__(self, n_classes: int = 19, ndf: int = 64) -> None:
        super().__init__()
        widths = [n_classes, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"OutputDiscriminator: maps of {tuple(x.shape[-2:])} px; five stride-2 convs "
                f"need H, W >= {self.min_size}"
            )
        return self.net(x)


def upsample_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling of (N, C, h, w) logits to ``size`` (align_corners=True, as the
    official DeepLab-v2 of BDL and AdaptSegNet)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
