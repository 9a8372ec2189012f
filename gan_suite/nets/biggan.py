"""A compact BigGAN (Brock et al. 2019) generator and projection discriminator, conditioned on
an instance feature vector h (IC-GAN, Casanova et al. 2021, section 2.1) and optionally on a
class label y (class-conditional IC-GAN, section 3.3), as in the official IC-GAN code
(facebookresearch/ic_gan, ``BigGAN_PyTorch/BigGAN.py``, built on ajbrock/BigGAN-PyTorch).

As there: residual up/down blocks with BigGAN's 32/64/128/256 architecture tables, spectral
norm on every conv/linear of G and D (eps 1e-6), hierarchical latents (z split into one chunk
for the first linear layer and one per G block), conditional BatchNorm in G whose gains and
biases are linear projections of [shared embedding of the condition, z chunk], orthogonal
initialisation of every weight (biases keep PyTorch's default init), and a projection
discriminator (Miyato & Koyama 2018). The shared embeddings of G: the class embedding is a
plain ``nn.Embedding`` (BigGAN: SN on it "randomly cripples G"), the embedding of h is a
spectrally normalised linear layer. D's projection: D(x, h) = w^T phi(x) + b + <P_h h, phi(x)>,
and with classes D(x, h, y) = w^T phi(x) + b + <[E y, P_h h], phi(x)> with E y and P_h h each
half of phi's width.

Left out: self-attention. The official configs put one attention block in G and one in D
(``G_attn = D_attn = "32"`` at 64 px, ``"64"`` at 128/256 px); these nets are meant for
32-64 px CPU runs and have none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from gan_suite.nets.checkpointing import checkpoint_block
from gan_suite.nets.sizes import InputSizes

# BigGAN's architecture tables (BigGAN.py G_arch / D_arch): channel multipliers of ``ch`` per
# block. G: (in, out); every block upsamples x2 from a 4x4 start, block i outputs 8 * 2^i px.
G_ARCH = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
    256: ((16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1)),
}
D_ARCH = {  # (in, out, downsample); the first "in" is the RGB input (3 channels, not x ch)
    32: ((3, 4, 4, 4), (4, 4, 4, 4), (True, True, False, False)),  # 16, 8, 8, 8 px
    64: ((3, 1, 2, 4, 8), (1, 2, 4, 8, 16), (True,) * 4 + (False,)),  # 32, 16, 8, 4, 4
    128: ((3, 1, 2, 4, 8, 16), (1, 2, 4, 8, 16, 16), (True,) * 5 + (False,)),  # ... 4, 4
    256: ((3, 1, 2, 4, 8, 8, 16), (1, 2, 4, 8, 8, 16, 16), (True,) * 6 + (False,)),
}
SN_EPS = 1e-6  # BigGAN's spectral-norm epsilon (``SN_eps``)


def _check_size(image_size: int) -> None:
    if image_size not in G_ARCH:
        raise ValueError(f"image_size={image_size}: expected one of {sorted(G_ARCH)}")


def sn(module: nn.Module) -> nn.Module:
    """Orthogonal init of the weight (BigGAN's ``G_init = D_init = "ortho"``), then spectral
    normalisation W / sigma(W) with one power iteration per forward. As BigGAN's
    ``init_weights``, only the weight is re-initialised; a bias keeps PyTorch's default."""
    nn.init.orthogonal_(module.weight)
    return spectral_norm(module, eps=SN_EPS)


def sn_conv(c_in: int, c_out: int, kernel: int = 3) -> nn.Module:
    return sn(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2))


class ConditionalBatchNorm2d(nn.Module):
    """BigGAN's class-conditional BN: BN(x) * (1 + W_g c) + W_b c for a condition vector c.

    The gain is centred on 1 so that an untrained projection leaves BN's output unchanged.
    """

    def __init__(self, num_features: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = sn(nn.Linear(cond_dim, num_features, bias=False))
        self.bias = sn(nn.Linear(cond_dim, num_features, bias=False))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x: (N, C, H, W), cond: (N, cond_dim) -> (N, C, H, W)."""
        gain = 1 + self.gain(cond)[:, :, None, None]
        return self.bn(x) * gain + self.bias(cond)[:, :, None, None]


class GBlock(nn.Module):
    """Residual up-block: CBN-ReLU-up-conv3-CBN-ReLU-conv3, shortcut up-conv1."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = (
            ConditionalBatchNorm2d(c_in, cond_dim),
            ConditionalBatchNorm2d(c_out, cond_dim),
        )
        self.conv1, self.conv2 = sn_conv(c_in, c_out), sn_conv(c_out, c_out)
        self.shortcut = sn_conv(c_in, c_out, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2.0)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0))


class DBlock(nn.Module):
    """Residual down-block: (ReLU)-conv3-ReLU-conv3-avgpool; the first block of D has no
    pre-activation (it sees the image), as BigGAN's."""

    def __init__(self, c_in: int, c_out: int, downsample: bool, preactivation: bool) -> None:
        super().__init__()
        self.conv1, self.conv2 = sn_conv(c_in, c_out), sn_conv(c_out, c_out)
        self.downsample, self.preactivation = downsample, preactivation
        self.shortcut = sn_conv(c_in, c_out, 1) if (c_in != c_out or downsample) else None

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        if self.shortcut is None:
            return h + x
        # BigGAN: pre-activated blocks convolve then pool, the first block pools then convolves
        sc = self._pool(self.shortcut(x)) if self.preactivation else self.shortcut(self._pool(x))
        return h + sc


class BigGANGenerator(nn.Module):
    """G(z, h[, y]) -> (N, 3, S, S) in [-1, 1] (IC-GAN eq. 2's G(z, h_i), BigGAN backbone).

    Every block's CBN sees c_i = [E_y y, SN(W_h) h + b_h, z_i] (the official
    ``get_condition_embeddings`` then ``cat([y, z_i])``); the first linear layer sees z_0.

    Args:
        image_size: 32, 64, 128 or 256 (BigGAN's tables).
        z_dim: latent size, split into 1 + number of blocks equal chunks (120 in BigGAN). As
            BigGAN's ``hier``, a remainder is dropped: G uses the first ``self.z_dim`` =
            chunk x slots entries (120 -> 119 at 256 px) and ignores the rest.
        ch: width multiplier (``G_ch``: 64 in IC-GAN's ImageNet 64x64 config).
        feature_dim: size of the instance features h (2048 officially).
        feature_embed_dim: the shared SN-linear embedding of h (``shared_dim_feat``, 512).
        n_classes: 0 = instance-conditioned only; > 0 adds a class embedding (class-cond.).
        class_embed_dim: the shared class embedding (``shared_dim``, 128).
        gradient_checkpointing: recompute each G block's activations in the backward pass
            instead of keeping them (less memory, one more block forward; training only; BN
            statistics and spectral-norm vectors are updated once, as without it).

    Input sizes (:meth:`input_sizes`): G generates exactly ``image_size`` px, so the real
    images D compares them with must have that size.

    Raises:
        ValueError: an image size without a table, or z_dim < number of chunks.
    """

    def __init__(
        self,
        image_size: int = 64,
        z_dim: int = 120,
        ch: int = 64,
        feature_dim: int = 2048,
        feature_embed_dim: int = 512,
        n_classes: int = 0,
        class_embed_dim: int = 128,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _check_size(image_size)
        self.gradient_checkpointing = gradient_checkpointing
        self.image_size = image_size
        ins, outs = G_ARCH[image_size]
        slots = len(ins) + 1
        if z_dim < slots:
            raise ValueError(f"z_dim={z_dim} must give {slots} hierarchical chunks at {image_size}")
        self.z_chunk = z_dim // slots
        self.z_dim, self.ch0 = self.z_chunk * slots, ch * ins[0]
        # G_shared_feat: an SN linear layer (with bias), orthogonally initialised
        self.embed_h = sn(nn.Linear(feature_dim, feature_embed_dim))
        # G_shared: a plain embedding (no SN), orthogonally initialised by BigGAN's init_weights
        self.embed_y = None
        if n_classes > 0:
            self.embed_y = nn.Embedding(n_classes, class_embed_dim)
            nn.init.orthogonal_(self.embed_y.weight)
        cond_dim = self.z_chunk + feature_embed_dim + (class_embed_dim if n_classes > 0 else 0)
        self.linear = sn(nn.Linear(self.z_chunk, 4 * 4 * self.ch0))
        self.blocks = nn.ModuleList(GBlock(ch * i, ch * o, cond_dim) for i, o in zip(ins, outs))
        self.out_bn = nn.BatchNorm2d(ch * outs[-1])
        self.out_conv = sn_conv(ch * outs[-1], 3)

    def condition(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        """The shared embedding [E_y y, SN(W_h) h + b_h] that every block's CBN sees:
        h (N, feature_dim), y (N,) int64 or None -> (N, [class_embed_dim +] feature_embed_dim).

        Raises:
            ValueError: a class-conditional G without y.
        """
        parts = []
        if self.embed_y is not None:
            if y is None:
                raise ValueError("this generator is class-conditional: pass labels y")
            parts.append(self.embed_y(y))
        parts.append(self.embed_h(h))
        return torch.cat(parts, dim=1)

    def input_sizes(self) -> InputSizes:
        """Exactly ``image_size`` px (class docstring)."""
        return InputSizes(self.image_size, 1, self.image_size)

    def forward(self, z: Tensor, h: Tensor, y: Tensor | None = None) -> Tensor:
        """z: (N, >= z_dim), h: (N, feature_dim), y: (N,) int64 or None -> (N, 3, S, S).

        Raises:
            ValueError: z has fewer than ``self.z_dim`` entries, or y is missing (class-cond.).
        """
        if z.shape[1] < self.z_dim:
            raise ValueError(f"z has {z.shape[1]} entries per sample, G needs {self.z_dim}")
        shared = self.condition(h, y)
        chunks = torch.split(z[:, : self.z_dim], self.z_chunk, dim=1)
        x = self.linear(chunks[0]).view(z.shape[0], self.ch0, 4, 4)  # (N, C0, 4, 4)
        for block, z_i in zip(self.blocks, chunks[1:]):
            cond = torch.cat([shared, z_i], dim=1)  # hierarchical z per block
            x = checkpoint_block(block, x, cond) if self.gradient_checkpointing else block(x, cond)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(x))))


class BigGANDiscriminator(nn.Module):
    """Projection discriminator D(x, h[, y]) -> (N,) logits (IC-GAN eq. 2's D(x, h_i)).

    D(x, h) = w^T phi(x) + b + <P_h h + b_h, phi(x)>; with classes (official
    ``class_cond and instance_cond``) D(x, h, y) = w^T phi(x) + b + <[E y, P_h h + b_h], phi(x)>,
    E y and P_h h each ``num_features // 2`` wide. w, P_h and E are spectrally normalised.

    Args:
        image_size: 32, 64, 128 or 256.
        ch: width multiplier (``D_ch``, 64).
        feature_dim: size of the instance features h (``instance_sz``, 2048 officially).
        n_classes: 0 = no class projection; > 0 = class-conditional.

    Input sizes (:meth:`input_sizes`): ``image_size`` px, its architecture table's size (the
    sum-pooling would take others, but the real images must match G's).

    Raises:
        ValueError: an image size without a table.
    """

    def __init__(
        self, image_size: int = 64, ch: int = 64, feature_dim: int = 2048, n_classes: int = 0
    ) -> None:
        super().__init__()
        _check_size(image_size)
        self.image_size = image_size
        ins, outs, downs = D_ARCH[image_size]
        self.blocks = nn.ModuleList(
            DBlock(3 if i == 0 else ch * c_in, ch * c_out, down, preactivation=i > 0)
            for i, (c_in, c_out, down) in enumerate(zip(ins, outs, downs))
        )
        self.num_features = ch * outs[-1]
        self.linear = sn(nn.Linear(self.num_features, 1))
        proj_dim = self.num_features // 2 if n_classes > 0 else self.num_features
        self.embed_h = sn(nn.Linear(feature_dim, proj_dim))  # ``linear_feat`` (with bias)
        self.embed_y = sn(nn.Embedding(n_classes, proj_dim)) if n_classes > 0 else None

    def features(self, x: Tensor) -> Tensor:
        """phi(x): ReLU then sum-pooling over space, as BigGAN: (N, num_features)."""
        for block in self.blocks:
            x = block(x)
        return F.relu(x).sum(dim=(2, 3))

    def input_sizes(self) -> InputSizes:
        """Exactly ``image_size`` px (class docstring)."""
        return InputSizes(self.image_size, 1, self.image_size)

    def forward(self, x: Tensor, h: Tensor, y: Tensor | None = None) -> Tensor:
        """x: (N, 3, S, S), h: (N, feature_dim), y: (N,) or None -> (N,) logits.

        Raises:
            ValueError: a class-conditional D without y.
        """
        phi = self.features(x)
        proj = self.embed_h(h)  # (N, num_features [/ 2])
        if self.embed_y is not None:
            if y is None:
                raise ValueError("this discriminator is class-conditional: pass labels y")
            proj = torch.cat([self.embed_y(y), proj], dim=1)  # (N, num_features)
        return self.linear(phi).squeeze(1) + (proj * phi).sum(dim=1)
