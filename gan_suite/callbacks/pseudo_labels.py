"""BDL's self-supervised labels (section 3.3) and the files its K x N loop writes.

Pseudo labels are M's arg-max on the target images, kept where M's confidence reaches its
class's threshold and ``ignore_index`` elsewhere. The official code's threshold of class c
is the median confidence of the pixels predicted as c over the whole target set (the element
of rank ``round(n / 2)`` of their sorted confidences), capped at 0.9; a class no pixel is
predicted as gets 0. Here the median comes from a per-class histogram of confidences
(``n_bins`` bins over [0, 1]): it is exact up to one bin (1e-4 by default), and the histogram
is summed across DDP ranks, so no rank needs every pixel of the target set in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

N_BINS = 10_000


def confidence_histogram(probs: Tensor, n_bins: int = N_BINS) -> Tensor:
    """Per-class histogram of M's confidence on the pixels it assigns to that class.

    Args:
        probs: (N, C, H, W) softmax probabilities.
        n_bins: bins over [0, 1].

    Returns:
        (C, n_bins) float64 counts: row c counts pixels whose arg-max is c, by max probability.
    """
    conf, label = probs.max(1)
    return prediction_histogram(conf, label, probs.shape[1], n_bins)


def prediction_histogram(conf: Tensor, label: Tensor, n_classes: int, n_bins: int = N_BINS):
    """:func:`confidence_histogram` of M's predictions ``(conf, label)`` = ``probs.max(1)``,
    each (N, H, W); ``n_classes`` rows of ``n_bins`` float64 counts."""
    bins = (conf.double() * n_bins).long().clamp_(0, n_bins - 1)
    flat = (label.long() * n_bins + bins).flatten()
    counts = torch.bincount(flat, minlength=n_classes * n_bins)
    return counts.double().view(n_classes, n_bins)


def class_thresholds(histogram: Tensor, cap: float = 0.9) -> Tensor:
    """Per-class median confidence, capped at ``cap`` (the official BDL rule).

    Args:
        histogram: (C, n_bins) counts from :func:`confidence_histogram` (summed over images).
        cap: upper bound of every threshold (0.9).

    Returns:
        (C,) float64 thresholds: the lower edge of the bin holding the element of rank
        ``round(n / 2)`` of class c's sorted confidences, or 0 for a class with no pixel.
    """
    n_classes, n_bins = histogram.shape
    out = torch.zeros(n_classes, dtype=torch.float64)
    cumulative = histogram.cumsum(1)
    for c in range(n_classes):
        n = int(cumulative[c, -1])
        if n == 0:
            continue
        rank = min(round(n * 0.5), n - 1)  # 0-based, numpy-style rounding as the official
        b = int(torch.searchsorted(cumulative[c], torch.tensor(float(rank + 1)).double()))
        out[c] = b / n_bins
    return out.clamp_(max=cap)


def threshold_labels(probs: Tensor, thresholds: Tensor, ignore_index: int = 255) -> Tensor:
    """(N, C, H, W) probabilities -> (N, H, W) int64 pseudo labels: the arg-max where its
    probability is >= the class's threshold (``thresholds``: (C,) or a float), else
    ``ignore_index``."""
    conf, label = probs.max(1)
    if not isinstance(thresholds, Tensor):
        thresholds = torch.full((probs.shape[1],), float(thresholds))
    return threshold_predictions(conf, label, thresholds, ignore_index)


def threshold_predictions(
    conf: Tensor, label: Tensor, thresholds: Tensor, ignore_index: int = 255
) -> Tensor:
    """:func:`threshold_labels` of M's predictions ``(conf, label)`` = ``probs.max(1)``, each
    (N, H, W), against (C,) ``thresholds``: (N, H, W) int64."""
    keep = conf.double() >= thresholds.to(conf.device, torch.float64)[label.long()]
    return torch.where(keep, label.long(), torch.full_like(label, ignore_index, dtype=torch.long))


def write_label_png(path: Path, labels: Tensor) -> None:
    """Save an (H, W) label map as a single-channel 8-bit PNG (into a folder that is published
    whole when complete, see ``BDLSchedule``)."""
    Image.fromarray(labels.to(torch.uint8).cpu().numpy(), mode="L").save(path, format="PNG")


def write_image_png(path: Path, image: Tensor) -> None:
    """Save a (3, H, W) image in [-1, 1] as an 8-bit RGB PNG (lossless, as the official code
    stores its translated source set)."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    rgb = np.ascontiguousarray(array.permute(1, 2, 0).numpy())
    Image.fromarray(rgb, mode="RGB").save(path, format="PNG")
