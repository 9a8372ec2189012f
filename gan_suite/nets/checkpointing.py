"""Gradient checkpointing of generator blocks (activation recomputation, Chen et al. 2016).

A checkpointed block keeps only its inputs during the forward pass and runs again during the
backward pass to rebuild the activations its gradient needs: less memory for one more forward
of the block. Some layers change their buffers when they run in training mode and would
change them a second time during that recomputation, or compute something else there:

- BatchNorm updates its running statistics (and ``num_batches_tracked``);
- spectral norm runs a power iteration that updates ``u`` and ``v``, so the recomputed
  weight would differ from the one of the forward pass.

:func:`checkpoint_block` therefore recomputes from the block's buffers as they were before
its forward pass and puts the current buffers back afterwards: a run with checkpointing
computes the same values, gradients and buffers as one without.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _buffers(block: nn.Module) -> list[Tensor]:
    return [b for b in block.buffers() if b is not None]


def _state_contexts(block: nn.Module):
    """(forward context, recomputation context) for one checkpointed call of ``block``."""
    before: list[Tensor] = []

    @contextmanager
    def forward() -> Iterator[None]:
        before[:] = [b.detach().clone() for b in _buffers(block)]
        yield

    @contextmanager
    def recompute() -> Iterator[None]:
        buffers = _buffers(block)
        now = [b.detach().clone() for b in buffers]
        with torch.no_grad():
            for b, saved in zip(buffers, before):
                b.copy_(saved)
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in zip(buffers, now):
                    b.copy_(saved)

    return forward(), recompute()


def checkpoint_block(block: nn.Module, *args: Tensor) -> Tensor:
    """``block(*args)`` with its activations recomputed in the backward pass.

    Only when a graph is being built (training mode, grad enabled, an input or a parameter
    requiring grad); otherwise a plain call, so evaluation, ``torch.no_grad`` sampling and a
    frozen generator's forward in a discriminator step are not slowed down.
    """
    builds_graph = any(a.requires_grad for a in args) or any(
        p.requires_grad for p in block.parameters()
    )
    if not (block.training and torch.is_grad_enabled() and builds_graph):
        return block(*args)
    return checkpoint(block, *args, use_reentrant=False, context_fn=lambda: _state_contexts(block))


def run_sequential(layers: nn.Sequential, x: Tensor, checkpointed: type | tuple) -> Tensor:
    """Run ``layers`` on ``x``, checkpointing the layers that are instances of
    ``checkpointed`` (the residual blocks) and running the others as usual."""
    for layer in layers:
        x = checkpoint_block(layer, x) if isinstance(layer, checkpointed) else layer(x)
    return x
