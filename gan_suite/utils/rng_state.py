"""The global random streams of a process, as checkpoint entries.

Lightning restores nets, optimizers, schedulers, callback states and loop progress from a
checkpoint, but not the global random generators: a resumed run would draw other noise, other
B partners and other crops than the run it continues. :func:`collect_rng_states` takes a
snapshot of torch's CPU (and, once CUDA is in use, every GPU's) generator, NumPy's legacy
global generator and Python's ``random``; :func:`restore_rng_states` puts it back.

The snapshot holds only tensors, ints, floats, strings, tuples and None, so it loads under
``torch.load(weights_only=True)`` (the default of torch >= 2.6, which Lightning follows).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """A snapshot of this process's global random generators.

    Returns:
        ``{"torch": uint8 tensor, "numpy": (name, int64 keys (624,), pos, has_gauss,
        cached_gaussian), "python": random.getstate()}``, plus ``"torch.cuda"`` (one uint8
        tensor per GPU) when CUDA has been initialised in this process.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # the MT19937 key as a tensor: a NumPy array would need weights_only=False to load
        "numpy": (
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),  # fmt: skip
        "python": random.getstate(),
    }
    # only when CUDA is already in use: querying it would initialise CUDA in CPU-only runs
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global generators to a :func:`collect_rng_states` snapshot.

    A ``"torch.cuda"`` entry is restored only when this process sees as many GPUs as the
    snapshot has states (a run resumed on another machine draws fresh GPU streams).

    Raises:
        KeyError: ``states`` lacks the ``torch``, ``numpy`` or ``python`` entry.
    """
    missing = {"torch", "numpy", "python"} - set(states)
    if missing:
        raise KeyError(f"RNG snapshot lacks {sorted(missing)}; has {sorted(states)}")
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = states.get("torch.cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
