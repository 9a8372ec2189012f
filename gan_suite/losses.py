"""Loss functions of the suite's papers, as pure functions of tensors.

A paper's LightningModule composes these; nothing here holds state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GAN_MODES = ("lsgan", "vanilla", "hinge", "wgan-gp")


def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ValueError(f"gan_mode={mode!r}: expected one of {', '.join(GAN_MODES)}")


def generator_adv_loss(fake_logits: Tensor, mode: str = "lsgan") -> Tensor:
    """Adversarial loss of the generator, given D's raw output on generated images.

    lsgan: E[(D(G(x)) - 1)^2] (Mao et al., CycleGAN eq. 1 with least squares);
    vanilla: non-saturating BCE, -E[log sigmoid(D(G(x)))];
    hinge and wgan-gp: -E[D(G(x))].
    """
    _check_mode(mode)
    if mode == "lsgan":
        return F.mse_loss(fake_logits, torch.ones_like(fake_logits))
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return -fake_logits.mean()


def discriminator_adv_loss(real_logits: Tensor, fake_logits: Tensor, mode: str = "lsgan") -> Tensor:
    """Adversarial loss of the discriminator on real and (detached) generated images.

    Returns the sum of the real and fake terms; CycleGAN halves it (``d_loss_scale``) to slow
    D relative to G, which the caller applies. wgan-gp returns the critic loss without the
    penalty; add :func:`gradient_penalty`.
    """
    _check_mode(mode)
    if mode == "lsgan":
        return F.mse_loss(real_logits, torch.ones_like(real_logits)) + F.mse_loss(
            fake_logits, torch.zeros_like(fake_logits)
        )
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    if mode == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return fake_logits.mean() - real_logits.mean()


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP penalty E[(||grad D(x_hat)||_2 - 1)^2] on random interpolates (Gulrajani 2017)."""
    alpha = torch.rand(real.size(0), *([1] * (real.dim() - 1)), device=real.device)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    if isinstance(out, tuple):  # StarGAN-style critics return (src, cls)
        out = out[0]
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def cycle_loss(reconstructed: Tensor, original: Tensor) -> Tensor:
    """Cycle-consistency loss ||F(G(x)) - x||_1 (CycleGAN eq. 2), mean over pixels."""
    return F.l1_loss(reconstructed, original)


def identity_loss(same_domain_output: Tensor, original: Tensor) -> Tensor:
    """Identity mapping loss ||G(y) - y||_1 (CycleGAN section 5.2), mean over pixels."""
    return F.l1_loss(same_domain_output, original)


def reconstruction_loss(reconstructed: Tensor, original: Tensor, distance: str = "l1") -> Tensor:
    """Reconstruction distance by name: ``l1``, ``mse``, ``cosine`` or ``hinge``.

    ``cosine`` is 1 - cos(x, y) over flattened images; ``hinge`` is DiscoGAN's
    mean(max(0, 1 - x * y)) on [-1, 1] images.
    """
    if distance == "l1":
        return F.l1_loss(reconstructed, original)
    if distance == "mse":
        return F.mse_loss(reconstructed, original)
    if distance == "cosine":
        sim = F.cosine_similarity(reconstructed.flatten(1), original.flatten(1), dim=1)
        return (1 - sim).mean()
    if distance == "hinge":
        return F.relu(1 - reconstructed * original).mean()
    raise ValueError(f"distance={distance!r}: expected 'l1', 'mse', 'cosine' or 'hinge'")


def linear_decay_factor(epoch: int, n_epochs_constant: int, n_epochs_decay: int) -> float:
    """LR multiplier: 1 for ``n_epochs_constant`` epochs, then linear decay towards 0.

    After epoch e (0-based) the factor is 1 - max(0, e + 1 - n_const) / (n_decay + 1), the
    CycleGAN schedule: the last decay epoch runs at lr / (n_decay + 1), never exactly 0.
    """
    return 1.0 - max(0, epoch + 1 - n_epochs_constant) / float(n_epochs_decay + 1)


def check_finite(losses: dict[str, Tensor], step: int) -> None:
    """Raise a clear error naming the loss term that went NaN/inf, before it reaches weights."""
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise FloatingPointError(
                f"loss term {name!r} is {value.item()} at global step {step}: training diverged "
                "(lower the learning rate, check the data range is [-1, 1], or try bf16 off); "
                "no checkpoint is written from this state"
            )


def content_consistency_loss(att_1: Tensor, att_2: Tensor, mask: Tensor | None = None) -> Tensor:
    """OP-GAN's content-consistency loss L_cc (Xie et al. 2020, content registration).

    Pixel-wise squared L2 between the content attention maps of the two patches of a pair,
    (1 / MN) sum_ij (A_1 - A_2)^2 over the M x N patch, averaged over the pairs selected by
    ``mask`` (the C1 pairs: same grid position of source and translation). ``att_*``:
    ``(P, 1, M, N)``; ``mask``: ``(P,)`` bool or None (all pairs). With no pair selected the
    loss is a zero that still depends on the inputs, so every caller gets a defined gradient.
    """
    per_pair = (att_1 - att_2).pow(2).flatten(1).mean(dim=1)  # (P,)
    if mask is None:
        return per_pair.mean()
    weights = mask.to(per_pair.dtype)
    return (per_pair * weights).sum() / weights.sum().clamp(min=1.0)


def domain_classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """OP-GAN's domain-classification loss L_dc: cross-entropy of the Siamese network's 3-way
    pair classification {D1: both source, D2: both translated, C: one of each}.
    ``logits``: ``(P, 3)``, ``labels``: ``(P,)`` int64, mean over pairs."""
    return F.cross_entropy(logits, labels)


def feature_matching_loss(real_features: list[Tensor], fake_features: list[Tensor]) -> Tensor:
    """DiscoGAN official code's feature-matching term (Salimans et al. 2016 style).

    For each intermediate discriminator feature map, the squared difference of the batch
    means of real and generated features, averaged over its elements; summed over the maps:
    sum_l mean((E_real[f_l] - E_fake[f_l])^2). Zero when the two batches' mean features agree.
    Pass detached real features: only the generated side should carry a gradient.
    """
    if len(real_features) != len(fake_features):
        raise ValueError(
            f"feature_matching_loss: {len(real_features)} real vs {len(fake_features)} fake maps"
        )
    return sum(
        F.mse_loss(fake.mean(0), real.mean(0)) for real, fake in zip(real_features, fake_features)
    )


def recon_rate_schedule(
    iteration: int, start_rate: float = 0.01, rate: float = 0.5, switch_iteration: int = 10_000
) -> float:
    """DiscoGAN official code's reconstruction-weight curriculum: the weight ``r`` of the
    reconstruction term, ``start_rate`` before ``switch_iteration`` batches, ``rate`` from then
    on. The generator loss of a direction is then (1 - r) * L_GAN + r * L_CONST."""
    return start_rate if iteration < switch_iteration else rate


def exponential_decay_lr(
    step: int, initial_lr: float = 0.1, decay_factor: float = 1.00004, min_lr: float = 1e-6
) -> float:
    """Learning rate after ``step`` batches: initial_lr / decay_factor**step, floored at min_lr.

    The cGAN schedule (Mirza & Osindero 2014, section 4.1: 0.1 "exponentially decreased down
    to .000001 with decay factor of 1.00004"), pylearn2's per-batch ``ExponentialDecay``.
    """
    return max(initial_lr * decay_factor ** (-float(step)), min_lr)


def linear_momentum(
    epoch: int,
    initial: float = 0.5,
    final: float = 0.7,
    start_epoch: int = 1,
    saturate_epoch: int = 250,
) -> float:
    """Momentum at ``epoch``: ``initial`` until ``start_epoch``, then linear up to ``final`` at
    ``saturate_epoch`` and constant after (pylearn2's ``MomentumAdjustor``; cGAN section 4.1:
    "initial value of .5 which was increased up to 0.7")."""
    span = max(saturate_epoch - start_epoch, 1)
    alpha = min(max((epoch - start_epoch) / span, 0.0), 1.0)
    return initial + alpha * (final - initial)
