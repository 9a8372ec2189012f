"""Speed switches shared by every paper: which Adam implementation, and ``torch.compile``.

Adam: PyTorch picks the ``foreach`` (multi-tensor) implementation by default only when every
parameter is on CUDA; on CPU its default is the per-parameter for-loop. The ``fused`` kernel
(one kernel over all parameters, on CPU and CUDA since torch 2.4) was the fastest on this
suite's 2-core CPU: one Adam step over CycleGAN's generator + discriminator (14.1 M
parameters, one thread) took a median 9 ms fused, 31 ms for-loop, 55 ms foreach. ``auto``
therefore means fused wherever torch has a fused kernel for the parameters' device and dtype,
else torch's own default. Fused and for-loop Adam compute the same update up to rounding.

Compile: ``nn.Module.compile()`` compiles a net in place, so its ``state_dict`` keys (and the
checkpoints) stay those of the eager net. On CPU the default inductor backend generates C++
and needs a C++ compiler on the PATH; without one the run is refused at setup.
"""

from __future__ import annotations

import os
import shutil

import torch
from torch import nn

#: the values of the ``adam_impl`` option
ADAM_IMPLS = ("auto", "for-loop", "foreach", "fused")


def check_adam_impl(adam_impl: str) -> str:
    """Return ``adam_impl`` if it is one of :data:`ADAM_IMPLS`.

    Raises:
        ValueError: another value, naming the option and the accepted values.
    """
    if adam_impl not in ADAM_IMPLS:
        raise ValueError(
            f"model.init_args.adam_impl={adam_impl!r}: expected one of {', '.join(ADAM_IMPLS)}"
        )
    return adam_impl


def _fused_supported(params: list[torch.Tensor]) -> bool:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return all(p.device.type in devices and p.is_floating_point() for p in params)


def adam_kwargs(adam_impl: str, params: list[torch.Tensor]) -> dict[str, bool]:
    """Keyword arguments of ``torch.optim.Adam`` selecting ``adam_impl`` for ``params``.

    ``auto``: ``fused=True`` when torch has a fused kernel for every parameter's device and
    dtype (CPU, CUDA, ...), else ``{}`` (torch's default); ``for-loop``: ``foreach=False``;
    ``foreach``: ``foreach=True``; ``fused``: ``fused=True`` (torch raises for a device
    without a fused kernel).
    """
    check_adam_impl(adam_impl)
    if adam_impl == "auto":
        return {"fused": True} if params and _fused_supported(params) else {}
    if adam_impl == "for-loop":
        return {"foreach": False, "fused": False}
    if adam_impl == "foreach":
        return {"foreach": True}
    return {"fused": True}


def make_adam(params, adam_impl: str = "auto", **kwargs) -> torch.optim.Adam:
    """``torch.optim.Adam(params, **kwargs)`` with the implementation ``adam_impl``
    (:func:`adam_kwargs`); ``params`` an iterable of tensors or of parameter groups."""
    params = list(params)
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return torch.optim.Adam(params, **kwargs, **adam_kwargs(adam_impl, flat))


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would call (``$CXX`` or the first of g++, c++, clang++ on the
    PATH), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


def compile_nets(module: nn.Module, **options) -> list[str]:
    """Compile, in place, every direct child net of ``module`` that has parameters; returns
    their names. Each net is compiled on its own (the training step's Python control flow,
    phases, history buffer and logging stay eager). ``options`` go to ``torch.compile``
    (``backend``, ``mode``, ...).

    Raises:
        RuntimeError: a CPU run (no CUDA) of the inductor backend with no C++ compiler,
            naming the option ``model.init_args.compile``.
    """
    inductor = options.get("backend", "inductor") == "inductor"
    if inductor and not torch.cuda.is_available() and cxx_compiler() is None:
        raise RuntimeError(
            "model.init_args.compile=true: torch.compile's inductor backend needs a C++ "
            "compiler on CPU (g++, c++ or clang++ on the PATH, or $CXX) and found none; "
            "install one or set compile: false"
        )
    names = []
    for name, child in module.named_children():
        has_params = any(True for _ in child.parameters())
        if has_params and getattr(child, "_compiled_call_impl", None) is None:
            child.compile(**options)
            names.append(name)
    return names
