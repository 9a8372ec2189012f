"""Normalisation layer factory: the papers choose their norm by name in the YAML."""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """Return a constructor ``f(num_channels) -> nn.Module`` for ``norm``.

    ``instance`` is CycleGAN's choice (no affine parameters, no running statistics, as in the
    official code, which the parameter counts depend on); ``batch`` is pix2pix/DiscoGAN's;
    ``none`` gives an identity.
    """
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "none":
        return lambda _c: nn.Identity()
    raise ValueError(f"norm={norm!r}: expected 'instance', 'batch' or 'none'")


def conv_bias(norm: str) -> bool:
    """Convs before a BatchNorm drop their bias (the norm's shift replaces it)."""
    return norm != "batch"
