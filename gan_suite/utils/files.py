"""The suite's on-disk cache: where it lives and how its files are written safely.

Cached artefacts (trained evaluators, the embedded datasets, decompressed MNIST files) live
under :func:`default_cache_root`. Several processes may fill the cache at once (DDP ranks,
parallel jobs): :func:`file_lock` lets the first do the work while the others wait, and
:func:`atomic_write` publishes each file in one step. Run outputs (``metrics.json``) are
written with the same :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


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


def atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp_path)``, fsync, then ``os.replace``: readers never see a half-written file.

    The temporary file sits in ``target``'s folder (``os.replace`` is atomic only within one
    file system). The fsync comes before the rename, so that after a crash ``target`` holds
    either the old or the complete new content, never an empty file under the new name.
    The file ends up mode 0644 whatever ``write`` did.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
