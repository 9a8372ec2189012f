"""A compact BigGAN (Brock et al. 2019) generator and projection discriminator, conditioned on
an instance feature vector h (IC-GAN, Casanova et al. 2021, section 2.1) and optionally on a
class label y (class-conditional IC-GAN, section 3.3).

As BigGAN: residual up/down blocks with the channel multipliers of BigGAN's 32/64/128 tables,
spectral norm on every conv/linear of G and D, hierarchical latents (z split into one chunk
for the first linear layer and one per G block), conditional BatchNorm in G whose gains and
biases are linear projections of [z chunk, shared embedding of the condition], orthogonal
initialisation, and a projection discriminator (Miyato & Koyama 2018): D(x, h, y) =
w^T phi(x) + <P_h h, phi(x)> + <E y, phi(x)>. Left out: self-attention (BigGAN uses it at one
resolution) - these nets are meant for 32-64 px CPU runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

# BigGAN's architecture tables: channel multipliers of ``ch`` per block (in -> out).
G_ARCH = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
}
D_ARCH = {  # (in, out, downsample); the first "in" is the RGB input
    32: ((3, 4, 4, 4), (4, 4, 4, 4), (True, True, False, False)),
    64: ((3, 1, 2, 4, 8), (1, 2, 4, 8, 16), (True,) * 5),
    128: ((3, 1, 2, 4, 8, 16), (1, 2, 4, 8, 16, 16), (True,) * 5 + (False,)),
}
SN_EPS = 1e-6  # BigGAN's spectral-norm epsilon


def _check_size(image_size: int) -> None:
    if image_size not in G_ARCH:
        raise ValueError(f"image_size={image_size}: expected one of {sorted(G_ARCH)}")


def sn(module: nn.Module) -> nn.Module:
    """Orthogonal init (BigGAN's ``ortho``), then spectral normalisation of the weight."""
    nn.init.orthogonal_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
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
    """G(z, h[, y]) -> (N, 3, S, S) in [-1, 1].

    Args:
        image_size: 32, 64 or 128 (BigGAN's tables).
        z_dim: latent size, split evenly into 1 + number of blocks chunks (120 in BigGAN).
        ch: width multiplier (64 in IC-GAN's ImageNet 64x64 setting).
        feature_dim: size of the instance features h.
        feature_embed_dim: the shared linear embedding of h (``shared_dim_feat``, 512).
        n_classes: 0 = instance-conditioned only; > 0 adds a class embedding (class-cond.).
        class_embed_dim: the shared class embedding (``shared_dim``, 128).
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
    ) -> None:
        super().__init__()
        _check_size(image_size)
        ins, outs = G_ARCH[image_size]
        slots = len(ins) + 1
        if z_dim % slots:
            raise ValueError(f"z_dim={z_dim} must split evenly into {slots} chunks at {image_size}")
        self.z_dim, self.z_chunk, self.ch0 = z_dim, z_dim // slots, ch * ins[0]
        # BigGAN's shared embeddings are plain (no SN): the CBN projections on top are SN'ed
        self.embed_h = nn.Linear(feature_dim, feature_embed_dim)
        # at the scale of BigGAN's class embedding (rows ~ N(0, 1)): a unit-norm h gets a
        # unit-variance embedding, as large as the z chunk beside it in every CBN input.
        # (PyTorch's default init gives it ~0.05: G would learn to ignore h for a long time.)
        nn.init.normal_(self.embed_h.weight, 0.0, 1.0)
        nn.init.zeros_(self.embed_h.bias)
        self.embed_y = nn.Embedding(n_classes, class_embed_dim) if n_classes > 0 else None
        cond_dim = self.z_chunk + feature_embed_dim + (class_embed_dim if n_classes > 0 else 0)
        self.linear = sn(nn.Linear(self.z_chunk, 4 * 4 * self.ch0))
        self.blocks = nn.ModuleList(GBlock(ch * i, ch * o, cond_dim) for i, o in zip(ins, outs))
        self.out_bn = nn.BatchNorm2d(ch * outs[-1])
        self.out_conv = sn_conv(ch * outs[-1], 3)

    def condition(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        """The shared embedding [E_h h, E_y y] that every block's CBN sees: (N, cond)."""
        parts = [self.embed_h(h)]
        if self.embed_y is not None:
            if y is None:
                raise ValueError("this generator is class-conditional: pass labels y")
            parts.append(self.embed_y(y))
        return torch.cat(parts, dim=1)

    def forward(self, z: Tensor, h: Tensor, y: Tensor | None = None) -> Tensor:
        """z: (N, z_dim), h: (N, feature_dim), y: (N,) int64 or None -> (N, 3, S, S)."""
        shared = self.condition(h, y)
        chunks = torch.split(z, self.z_chunk, dim=1)
        x = self.linear(chunks[0]).view(z.shape[0], self.ch0, 4, 4)  # (N, C0, 4, 4)
        for block, z_i in zip(self.blocks, chunks[1:]):
            x = block(x, torch.cat([z_i, shared], dim=1))  # hierarchical z per block
        return torch.tanh(self.out_conv(F.relu(self.out_bn(x))))


class BigGANDiscriminator(nn.Module):
    """Projection discriminator D(x, h[, y]) -> (N,) logits.

    Args:
        image_size: 32, 64 or 128.
        ch: width multiplier (64).
        feature_dim: size of the instance features h.
        n_classes: 0 = no class projection; > 0 adds <E y, phi(x)> (class-conditional).
    """

    def __init__(
        self, image_size: int = 64, ch: int = 64, feature_dim: int = 2048, n_classes: int = 0
    ) -> None:
        super().__init__()
        _check_size(image_size)
        ins, outs, downs = D_ARCH[image_size]
        self.blocks = nn.ModuleList(
            DBlock(3 if i == 0 else ch * c_in, ch * c_out, down, preactivation=i > 0)
            for i, (c_in, c_out, down) in enumerate(zip(ins, outs, downs))
        )
        self.num_features = ch * outs[-1]
        self.linear = sn(nn.Linear(self.num_features, 1))
        self.embed_h = sn(nn.Linear(feature_dim, self.num_features, bias=False))
        self.embed_y = sn(nn.Embedding(n_classes, self.num_features)) if n_classes > 0 else None

    def features(self, x: Tensor) -> Tensor:
        """phi(x): ReLU then sum-pooling over space, as BigGAN: (N, num_features)."""
        for block in self.blocks:
            x = block(x)
        return F.relu(x).sum(dim=(2, 3))

    def forward(self, x: Tensor, h: Tensor, y: Tensor | None = None) -> Tensor:
        """x: (N, 3, S, S), h: (N, feature_dim), y: (N,) or None -> (N,) logits."""
        phi = self.features(x)
        out = self.linear(phi).squeeze(1) + (self.embed_h(h) * phi).sum(dim=1)
        if self.embed_y is not None:
            if y is None:
                raise ValueError("this discriminator is class-conditional: pass labels y")
            out = out + (self.embed_y(y) * phi).sum(dim=1)
        return out
