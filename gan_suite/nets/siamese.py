"""OP-GAN's Siamese multi-task network and its patch pairs (Xie et al., ECCV 2020, section 3).

An image and its translation are cut on a grid x grid lattice (3 x 3 in the paper); pairs of
patches are drawn in three classes

    D1 (label 0): two patches of the source image,
    D2 (label 1): two patches of the translated image,
    C  (label 2): one patch of each -- C1 at the same grid position, C2 at different positions,

and a weight-sharing encoder embeds each patch into content features c and domain features d.
The content-registration branch maps c to a 1-channel attention map (compared on C1 pairs by
L_cc; S learns to register with it: same-position maps agree, different-position maps differ),
the domain-classification branch classifies the concatenated (d_1, d_2) into {D1, D2, C}
(L_dc). Plain torch modules: the losses live in ``gan_suite.losses``, the training order in
``gan_suite.models.opgan``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_suite.nets.norm import conv_bias, norm_layer
from gan_suite.nets.sizes import InputSizes

D1, D2, C = 0, 1, 2  # the paper's three pair classes, as label indices


def grid_patches(images: Tensor, grid: int = 3) -> Tensor:
    """Cut images into grid x grid non-overlapping patches, row-major.

    ``(B, C, H, W) -> (B, grid * grid, C, H // grid, W // grid)``; patch ``k`` covers rows
    ``(k // grid) * h ... + h`` and columns ``(k % grid) * w ... + w``. When H or W is not a
    multiple of ``grid`` the remainder (at most grid - 1 pixels) is cropped at the bottom and
    right edge: 256 px gives 85 px patches and drops the last row and column, which keeps every
    patch the same size (the Siamese encoder shares weights across patches) without resampling.
    """
    b, c, height, width = images.shape
    h, w = height // grid, width // grid
    if h == 0 or w == 0:
        raise ValueError(
            f"grid_patches: image {height}x{width} is smaller than the {grid}x{grid} grid"
        )
    x = images[:, :, : h * grid, : w * grid]
    x = x.reshape(b, c, grid, h, grid, w).permute(0, 2, 4, 1, 3, 5)  # (B, gy, gx, C, h, w)
    return x.reshape(b, grid * grid, c, h, w)


@dataclass
class PatchPairs:
    """A batch of P sampled patch pairs.

    Attributes:
        first: ``(P, C, h, w)`` first patch of each pair.
        second: ``(P, C, h, w)`` second patch of each pair.
        labels: ``(P,)`` int64 class: 0 = D1 (both source), 1 = D2 (both translated), 2 = C.
        c1_mask: ``(P,)`` bool, True for C pairs at the same grid position (C1).
        positions: ``(P, 2)`` int64 grid index (0 .. grid^2 - 1) of the first and second patch.
        translated: ``(P, 2)`` bool, whether the first / second patch is from the translation.
        image_index: ``(P,)`` int64 index of the image in the batch both patches come from.
    """

    first: Tensor
    second: Tensor
    labels: Tensor
    c1_mask: Tensor
    positions: Tensor
    translated: Tensor
    image_index: Tensor


def class_counts(pairs_per_image: int, class_weights: tuple[float, float, float]) -> list[int]:
    """Split ``pairs_per_image`` into D1/D2/C counts proportional to ``class_weights``.

    Largest-remainder rounding, ties going to C first (C pairs also carry L_cc), so that equal
    weights and a multiple of 3 pairs give an exactly balanced 3-way classification.
    """
    if pairs_per_image < 1 or len(class_weights) != 3 or min(class_weights) < 0:
        raise ValueError(
            f"pairs_per_image={pairs_per_image}, class_weights={class_weights}: expected >= 1 "
            "pair and three non-negative weights (D1, D2, C)"
        )
    total = float(sum(class_weights))
    if total <= 0:
        raise ValueError(f"class_weights={class_weights}: at least one weight must be > 0")
    exact = [pairs_per_image * w / total for w in class_weights]
    counts = [int(e) for e in exact]
    order = sorted(range(3), key=lambda k: (-(exact[k] - counts[k]), -k))  # ties: C, D2, D1
    for k in order[: pairs_per_image - sum(counts)]:
        counts[k] += 1
    return counts


def sample_patch_pairs(
    source: Tensor,
    translated: Tensor,
    pairs_per_image: int = 6,
    class_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    c1_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> PatchPairs:
    """Draw D1/D2/C pairs from grid patches of source images and of their translations.

    Args:
        source: ``(B, K, C, h, w)`` patches of the source images (:func:`grid_patches`).
        translated: ``(B, K, C, h, w)`` patches of their translations, same grid; gradients
            flow back into it through the returned patches.
        pairs_per_image: pairs drawn per image, split into classes by :func:`class_counts`.
        class_weights: relative frequency of D1, D2 and C pairs.
        c1_fraction: fraction of the batch's C pairs taken at the same position (C1); the
            count is rounded, but at least one C1 pair is drawn when the fraction is > 0 and
            there are C pairs, so that L_cc always has a term.
        generator: CPU random generator of all draws (reproducible, rank-offset under DDP).

    The two patches of a D1 or D2 pair are at different grid positions (a patch paired with
    itself says nothing about the domain); a C pair's order (source first or translation
    first) is random, so the domain head cannot read the class from the order alone.
    """
    if source.shape != translated.shape or source.dim() != 5:
        raise ValueError(
            f"source {tuple(source.shape)} and translated {tuple(translated.shape)} must be the "
            "same (B, K, C, h, w) patch grids"
        )
    if not 0.0 <= c1_fraction <= 1.0:
        raise ValueError(f"c1_fraction={c1_fraction}: expected a fraction in [0, 1]")
    b, k = source.shape[:2]
    if k < 2:
        raise ValueError("sample_patch_pairs needs at least 2 patches per image")
    counts = class_counts(pairs_per_image, class_weights)
    labels = torch.tensor([D1] * counts[0] + [D2] * counts[1] + [C] * counts[2]).repeat(b)
    image_index = torch.arange(b).repeat_interleave(pairs_per_image)
    n = labels.numel()

    # which pairs of class C are C1: an exact, randomly placed share of them
    is_c = labels == C
    c1_mask = torch.zeros(n, dtype=torch.bool)
    n_c = int(is_c.sum())
    n_c1 = round(n_c * c1_fraction)
    if c1_fraction > 0 and n_c > 0:
        n_c1 = max(n_c1, 1)
    c_idx = is_c.nonzero().flatten()
    c1_mask[c_idx[torch.randperm(n_c, generator=generator)[:n_c1]]] = True

    # positions: the second differs from the first (offset 1 .. K-1) unless the pair is C1
    pos_1 = torch.randint(k, (n,), generator=generator)
    offset = torch.randint(1, k, (n,), generator=generator)
    pos_2 = torch.where(c1_mask, pos_1, (pos_1 + offset) % k)

    from_translation = torch.stack([labels == D2, labels == D2], dim=1)
    swap = torch.rand(n, generator=generator) < 0.5
    from_translation[is_c, 0] = swap[is_c]
    from_translation[is_c, 1] = ~swap[is_c]

    stacked = torch.stack([source, translated], dim=1)  # (B, 2, K, C, h, w)
    dev = source.device
    idx = image_index.to(dev)
    first = stacked[idx, from_translation[:, 0].long().to(dev), pos_1.to(dev)]
    second = stacked[idx, from_translation[:, 1].long().to(dev), pos_2.to(dev)]
    return PatchPairs(
        first=first,
        second=second,
        labels=labels.to(dev),
        c1_mask=c1_mask.to(dev),
        positions=torch.stack([pos_1, pos_2], dim=1).to(dev),
        translated=from_translation.to(dev),
        image_index=idx,
    )


class PatchEncoder(nn.Module):
    """The weight-shared branch of S: patch -> (content features c, domain features d).

    A 3x3 stem, ``depth`` stride-2 3x3 convs doubling the width (capped at 8 x ``width``), then
    two 3x3 heads of ``feature_channels`` each: the disentangled c and d. With depth 3 (stride
    8) an 85 px patch gives 11 x 11 maps, 512 channels each at the paper's sizes.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        depth: int = 3,
        feature_channels: int = 512,
        norm: str = "none",
    ) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        ch = width
        for _ in range(depth):
            out = min(ch * 2, width * 8)
            # k3 s2 p1 gives ceil(n / 2): 85 -> 43 -> 22 -> 11, the paper's 11 x 11 maps
            layers += [
                nn.Conv2d(ch, out, 3, stride=2, padding=1, bias=bias),
                make_norm(out),
                nn.LeakyReLU(0.2, True),
            ]
            ch = out
        self.trunk = nn.Sequential(*layers)
        self.content = nn.Sequential(nn.Conv2d(ch, feature_channels, 3, padding=1), nn.ReLU(True))
        self.domain = nn.Sequential(nn.Conv2d(ch, feature_channels, 3, padding=1), nn.ReLU(True))

    def forward(self, patch: Tensor) -> tuple[Tensor, Tensor]:  # (P, C, h, w) -> 2 x (P, F, h', w')
        features = self.trunk(patch)
        return self.content(features), self.domain(features)


class SiameseNet(nn.Module):
    """OP-GAN's S: one encoder applied to both patches, content-registration and
    domain-classification heads.

    Args:
        in_channels: channels of a patch.
        width: filters of the encoder's first conv (64 at the paper's sizes).
        depth: stride-2 layers of the encoder (3 = stride 8: 85 px patches -> 11 x 11).
        feature_channels: channels of c and of d each (512).
        norm: encoder normalisation: ``none`` (default: instance norm would erase the per-patch
            colour statistics that carry the domain; batch statistics would mix the pairs of a
            batch and, under DDP, give rank-dependent running buffers), ``batch``, ``instance``.

    Input sizes (:meth:`input_sizes`), of a patch: any side with norm ``none`` or ``batch``
    (the stride-2 convs round up); with ``instance``, >= 2**depth + 1 px (InstanceNorm needs
    2 x 2 px after the last stride). An image cut on a g x g grid needs g times that.

    ``forward(first, second)`` returns ``(att_1, att_2, logits)``: attention maps
    ``(P, 1, h, w)`` in [0, 1], bilinearly resized to the patch size, and the 3-way logits
    ``(P, 3)`` over {D1, D2, C}. :meth:`encode` gives one patch's maps and domain features, which
    the content-registration objective (``gan_suite.losses.content_registration_loss``) uses
    on every grid position at once.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        depth: int = 3,
        feature_channels: int = 512,
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.depth, self.norm = depth, norm
        self.encoder = PatchEncoder(in_channels, width, depth, feature_channels, norm)
        # content registration: a 1x1 conv turns c into a 1-channel attention map
        self.attention = nn.Conv2d(feature_channels, 1, 1)
        # domain classification of the pair from concatenated (d_1, d_2): 2F -> F -> 3 classes
        self.domain_head = nn.Sequential(
            nn.Conv2d(2 * feature_channels, feature_channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(feature_channels, 3),
        )

    def input_sizes(self, grid: int = 1) -> InputSizes:
        """Accepted image sides when cut on a ``grid`` x ``grid`` lattice (1: of a patch);
        remainders are cropped, so no multiple is needed (class docstring)."""
        patch = 2**self.depth + 1 if self.norm == "instance" and self.depth > 0 else 1
        if self.norm == "instance" and self.depth == 0:
            patch = 2
        return InputSizes(min_size=grid * patch)

    def attention_map(self, content: Tensor, size: tuple[int, int]) -> Tensor:
        """Content attention map of c, resized to the patch size ``size`` = (h, w)."""
        att = torch.sigmoid(self.attention(content))  # (P, 1, h', w') in [0, 1]
        return F.interpolate(att, size=size, mode="bilinear", align_corners=False)

    def encode(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """One branch of S on a batch of patches.

        ``(P, C, h, w) -> (att, d)``: the content attention maps ``(P, 1, h, w)`` in [0, 1]
        (resized to the patch size) and the domain features ``d`` ``(P, F, h', w')``.
        """
        content, domain = self.encoder(patches)
        return self.attention_map(content, tuple(patches.shape[-2:])), domain

    def forward(self, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = first.shape[0]
        # one encoder pass over both patches = the two weight-sharing branches
        att, domain = self.encode(torch.cat([first, second]))
        logits = self.domain_head(torch.cat([domain[:p], domain[p:]], dim=1))  # (P, 2F, h', w')
        return att[:p], att[p:], logits
