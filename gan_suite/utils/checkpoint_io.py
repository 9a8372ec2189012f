"""Checkpoints that a killed process cannot corrupt.

:class:`AtomicCheckpointIO` writes ``<path>.tmp`` in the checkpoint's own folder, flushes it to
disk (``fsync``), and only then renames it over ``<path>`` (``os.replace``, atomic on POSIX and
Windows within one file system) and syncs the folder, so the rename itself survives a power
cut. A process killed at any point (SIGKILL, OOM killer, a preempted node) leaves either the
previous ``last.ckpt`` or the new one, complete, never a truncated file; a stale ``.tmp`` is
overwritten by the next save and is never taken for a checkpoint (``ckpt_path="last"`` looks
for ``*.ckpt`` only).

Lightning's own ``TorchCheckpointIO`` serialises into memory and then moves a temporary file
that fsspec makes in the system temp folder: across file systems that move is a copy, which a
kill can leave half-written, and nothing is fsynced.

Use: ``Trainer(plugins=[AtomicCheckpointIO()])`` (the ``gan-suite`` command does this by
default; tests pass ``make_trainer(plugins=[AtomicCheckpointIO()])``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

TMP_SUFFIX = ".tmp"


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (network mounts) refuse fsync on folders; the rename stands
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic: temporary file, fsync, rename.

    Remote paths (``s3://``, ...) go through Lightning's fsspec save unchanged.
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` so that ``path`` is never seen half-written.

        Raises:
            TypeError: ``storage_options`` given (not supported, as in Lightning's plugin).
            OSError: the folder cannot be written (disk full, permissions); the previous file
                at ``path`` is left as it was and the temporary file is removed.
        """
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + TMP_SUFFIX)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    @override
    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Remove ``path`` (and a temporary file of an interrupted save of it)."""
        super().remove_checkpoint(path)
        if _is_local(path):
            Path(str(path).removeprefix("file://") + TMP_SUFFIX).unlink(missing_ok=True)


__all__ = ["TMP_SUFFIX", "AtomicCheckpointIO"]
