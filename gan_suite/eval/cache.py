"""The suite's on-disk cache: where it lives and how it is written safely.

Cached artefacts (trained evaluators, the embedded datasets, decompressed MNIST files) live
under :func:`default_cache_root`. Several processes may fill the cache at once (DDP ranks,
parallel jobs): :func:`file_lock` lets the first do the work while the others wait, and
:func:`atomic_write` publishes each file in one step. :func:`seeded` and :func:`quiet` keep a
cached training run reproducible and silent without touching the caller's RNG or log levels.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def default_cache_root() -> Path:
    """``$GAN_SUITE_CACHE`` if set, else ``~/.cache/gan-suite``."""
    env = os.environ.get("GAN_SUITE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gan-suite"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock: concurrent callers (DDP ranks, parallel jobs) wait for the first to
    finish training, then all load the same checkpoint."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch/numpy/random for training and give the caller its RNG states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Hide Lightning's info banners (devices, tips) of a training run nobody asked to watch."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp_path)`` then ``os.replace``: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
