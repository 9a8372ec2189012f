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
    CycleGAN schedule: the last decay epoch (e = n_const + n_decay - 1) runs at
    lr / (n_decay + 1). Past the schedule the factor stays 0, clipped to [0, 1], never
    negative (a negative rate would be gradient ascent); models refuse such run budgets.
    """
    factor = 1.0 - max(0, epoch + 1 - n_epochs_constant) / float(n_epochs_decay + 1)
    return min(1.0, max(0.0, factor))


def nonfinite_terms(losses: dict[str, Tensor]) -> list[str]:
    """Names of the terms of ``losses`` (name -> tensor of any shape) holding a NaN or an inf."""
    return [name for name, value in losses.items() if not torch.isfinite(value).all()]


def check_finite(losses: dict[str, Tensor], step: int, iteration: int | None = None) -> None:
    """Raise a clear error naming the loss term that went NaN/inf, before it reaches weights.

    ``step`` is Lightning's global step (optimizer steps, 2-3 per GAN batch); ``iteration``
    (optional) the training batches done, the unit the papers' schedules count in.

    Raises:
        FloatingPointError: a term holds a NaN or an inf; the message names the term, its
            value, the iteration and the global step.
    """
    bad = nonfinite_terms(losses)
    if not bad:
        return
    value = losses[bad[0]].detach()
    shown = value.item() if value.numel() == 1 else "non-finite"
    at = f"global step {step}"
    if iteration is not None:
        at = f"iteration {iteration} ({at})"
    raise FloatingPointError(
        f"loss term {bad[0]!r} is {shown} at {at}: training diverged "
        "(lower the learning rate, check the data range is [-1, 1], or try bf16 off); "
        "no backward or optimizer step was taken with it"
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


def patch_map_distances(att_source: Tensor, att_translated: Tensor) -> Tensor:
    """L_cc's distance (Xie et al. 2020, eq. 5) between every pair of grid positions.

    ``att_source``, ``att_translated``: ``(B, K, 1, M, N)`` content attention maps of the K grid
    patches of B source images and of their translations. Returns ``(B, K, K)`` with
    ``d[b, i, j] = (1 / MN) sum_xy (A_i - T_j)^2``: the diagonal holds the same-position (C1)
    distances, the off-diagonal entries the different-position (C2) ones.

    Raises:
        ValueError: the two map grids differ in shape or are not 5-dimensional.
    """
    if att_source.shape != att_translated.shape or att_source.dim() != 5:
        raise ValueError(
            f"patch_map_distances: maps {tuple(att_source.shape)} and "
            f"{tuple(att_translated.shape)} must be the same (B, K, 1, M, N) grids"
        )
    a, t = att_source.flatten(2), att_translated.flatten(2)  # (B, K, MN)
    return (a.unsqueeze(2) - t.unsqueeze(1)).pow(2).mean(dim=-1)


def content_registration_loss(distances: Tensor, scale: float) -> Tensor:
    """OP-GAN's content registration as a matching task on the patch grid (our reading).

    The paper supervises content registration by the relative position of the two patches
    (C1: same position, their content maps must agree; C2: different positions). Here every
    source patch i must pick its same-position translated patch among all K positions, and
    every translated patch its source, by a softmax over ``-scale * d``:

        L_reg = 1/2 [CE_i(softmax_j(-s d_ij), i) + CE_j(softmax_i(-s d_ij), j)]

    averaged over images and positions. ``distances``: ``(B, K, K)`` from
    :func:`patch_map_distances`; ``scale`` s > 0 is fixed, so the maps of different positions
    must differ by an absolute margin (~1/s in L_cc's units), not just by a rescalable epsilon.
    Constant maps (all d equal) cost exactly log K; maps with d_ii = 0 and d_ij >= delta cost at
    most log(1 + (K - 1) exp(-s delta)).

    Raises:
        ValueError: ``distances`` is not ``(B, K, K)`` or ``scale`` is not positive.
    """
    if distances.dim() != 3 or distances.shape[1] != distances.shape[2]:
        raise ValueError(f"distances {tuple(distances.shape)}: expected (B, K, K)")
    if scale <= 0:
        raise ValueError(f"registration scale={scale}: expected a value > 0")
    b, k, _ = distances.shape
    logits = -scale * distances
    target = torch.arange(k, device=distances.device).repeat(b)
    rows = F.cross_entropy(logits.reshape(b * k, k), target)  # source i -> translated j
    cols = F.cross_entropy(logits.transpose(1, 2).reshape(b * k, k), target)  # and back
    return (rows + cols) / 2


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


DISCOGAN_DISTANCES = ("mse", "cosine", "hinge")


def discogan_reconstruction_loss(
    reconstructed: Tensor, original: Tensor, distance: str = "mse"
) -> Tensor:
    """DiscoGAN's L_CONST distance d (Kim et al. 2017, eq. 2) on the official code's scale.

    ``reconstructed``, ``original``: ``(B, C, H, W)`` images in [-1, 1] (the suite's tanh
    range). The official code (SKTBrain/DiscoGAN) trains on images in [0, 1] with sigmoid
    outputs and ``nn.MSELoss``, so the distance is computed on ``x01 = (x + 1) / 2``:

    * ``mse``: mean((x01 - y01)^2) = mean((x - y)^2) / 4 -- weighed 1:1 against L_GAN as in
      eq. 5 and the official code, rather than 4x heavier;
    * ``cosine``: 1 - cos(x01, y01) over each flattened image, mean over the batch (cosine is
      not shift-invariant, so [0, 1] and [-1, 1] images give different values);
    * ``hinge``: mean(max(0, 1 - x * y)) on the [-1, 1] values. The paper names the hinge loss
      without a formula and the official code has none; its margin form needs zero-centred
      values (on [0, 1] images it would be 1 - x01 * y01, minimised by white images rather than
      by x = y), so it stays on the signed scale.

    Raises:
        ValueError: an unknown ``distance``.
    """
    if distance == "mse":
        return F.mse_loss(reconstructed, original) / 4  # = MSE of (x + 1) / 2, (y + 1) / 2
    if distance == "cosine":
        x01, y01 = (reconstructed.flatten(1) + 1) / 2, (original.flatten(1) + 1) / 2
        return (1 - F.cosine_similarity(x01, y01, dim=1)).mean()
    if distance == "hinge":
        return F.relu(1 - reconstructed * original).mean()
    raise ValueError(f"distance={distance!r}: expected one of {', '.join(DISCOGAN_DISTANCES)}")


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
    # clipped to [min_lr, initial_lr]: a decay_factor below 1 must not grow the rate
    return min(initial_lr, max(initial_lr * decay_factor ** (-float(step)), min_lr))


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


def linear_decay_to_zero(iteration: int, n_iterations: int, n_iterations_decay: int) -> float:
    """LR factor of StarGAN's schedule: 1 for the first ``n_iterations - n_iterations_decay``
    iterations, then linear to 0 at ``n_iterations`` (StarGAN section 5: "linearly decay the
    learning rate to 0"), and 0 after it, never negative."""
    start = n_iterations - n_iterations_decay
    if iteration < start:
        return 1.0
    return min(1.0, max(0.0, (n_iterations - iteration) / max(n_iterations_decay, 1)))


def attribute_classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """StarGAN's domain classification loss (eqs. 2-3) for binary attributes: BCE with logits
    summed over the A attributes and averaged over the batch, as the official code computes it.

    Args:
        logits: (N, A) attribute logits of D's auxiliary classifier.
        targets: (N, A) 0/1 attributes (the original ones for real images, eq. 2; the target
            ones for translations, eq. 3).
    """
    return (
        F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="sum")
        / (logits.shape[0])
    )


def matchgan_pairs(n_groups: int, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """MatchGAN's triplets as pairs, over a batch ordered as ``n_groups`` contiguous groups of
    ``group_size`` images that share a label (group g = indices g*m ... g*m + m - 1).

    As the official code builds them (for m = 4): in every group, the first image is an anchor
    with the second as its positive and the last image of the group two groups on as its
    negative; the third image is an anchor with the second as its positive and the last image
    of the previous group as its negative. With two groups both negatives come from the other
    group. That gives 4 pairs per group, half matching.

    Returns:
        (first, second, same): int64 (4 * n_groups,) indices of each pair's images and its
        int64 label, 1 = same label (match), 0 = different labels.

    Raises:
        ValueError: fewer than 2 groups or fewer than 3 images per group.
    """
    if n_groups < 2 or group_size < 3:
        raise ValueError(
            f"MatchGAN pairs need >= 2 label groups of >= 3 images each, got {n_groups} groups "
            f"of {group_size} (data.classes_per_batch and batch_size / classes_per_batch)"
        )
    g = torch.arange(n_groups)
    base, last = g * group_size, g * group_size + group_size - 1
    shift_far = 2 if n_groups > 2 else 1
    first = torch.cat([base, base + 2, base, base + 2])
    second = torch.cat([base + 1, last.roll(1), last.roll(shift_far), base + 1])
    same = torch.cat([torch.ones(n_groups), torch.zeros(2 * n_groups), torch.ones(n_groups)])
    return first, second, same.long()


# -- BDL (Li, Yuan & Vasconcelos 2019) ----------------------------------------------------
def segmentation_loss(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Pixel-wise cross-entropy of (N, C, h, w) logits, upsampled bilinearly to the (N, H, W)
    int64 ``labels``' size, ignoring ``ignore_index`` (BDL eq. 6's L_seg and eq. 7's L_ssl).

    A batch with no labelled pixel (every pseudo label below its threshold) gives 0 with a
    gradient path, not NaN."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, labels.shape[-2:], mode="bilinear", align_corners=True)
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


def perceptual_loss(seg_a: Tensor, seg_b: Tensor) -> Tensor:
    """BDL's perceptual loss through the segmentation model (eq. 3): the MSE between the
    instance-normalised (N, C, h, w) outputs of M for two images (0 when they are equal)."""
    return F.mse_loss(F.instance_norm(seg_a), F.instance_norm(seg_b))


def output_adv_loss(d_logits: Tensor, domain: float) -> Tensor:
    """BCE-with-logits of the output-space discriminator against a constant domain label
    (BDL / AdaptSegNet: source 0, target 1)."""
    return F.binary_cross_entropy_with_logits(d_logits, torch.full_like(d_logits, domain))


def poly_lr_factor(iteration: int, n_iterations: int, power: float = 0.9) -> float:
    """DeepLab's poly schedule: ``(1 - i / n) ** power``, clipped to [0, 1] so a run that
    outlives ``n_iterations`` stays at 0 instead of going negative."""
    if n_iterations <= 0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - iteration / n_iterations)) ** power
