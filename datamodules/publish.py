"""Write a generated dataset once, atomically, into the cache (shared by every embedded set).

A dataset folder is fingerprinted by its name and by the parameters recorded in its
``scenes.json``, which is written last and so marks the folder complete. Two processes (e.g.
DDP ranks) may generate at once: each renders into its own hidden temporary sibling and
publishes it with one atomic ``os.rename``; the loser of the race deletes its copy. A folder at
the final path is therefore always complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gan_suite.utils import atomic_write, default_cache_root

from .io import DatasetLayoutError

SCENES_FILE = "scenes.json"


def load_scenes(directory: str | Path) -> dict[str, Any]:
    """Load ``scenes.json`` of a materialised embedded dataset.

    Raises:
        DatasetLayoutError: The file is missing (the folder is not an embedded dataset).
    """
    path = Path(directory) / SCENES_FILE
    if not path.is_file():
        raise DatasetLayoutError(
            f"{str(path)!r} not found; expected an embedded dataset written by gan-suite "
            "(materialize_shapes / materialize_digits / ...)"
        )
    with path.open() as f:
        return json.load(f)


def write_scenes(directory: Path, meta: dict[str, Any]) -> None:
    """Write ``scenes.json`` atomically; call it last, it marks the folder complete."""
    atomic_write(directory / SCENES_FILE, lambda path: path.write_text(json.dumps(meta)))


def _is_complete(directory: Path, expected: dict[str, Any]) -> bool:
    try:
        meta = load_scenes(directory)
    except (DatasetLayoutError, json.JSONDecodeError, OSError):
        return False
    return all(meta.get(k) == v for k, v in expected.items())


def publish_once(
    root: str | Path | None,
    name: str,
    params: dict[str, Any],
    write: Callable[[Path], None],
) -> Path:
    """Return ``<root>/<name>``, generating it with ``write(folder)`` if it is not complete.

    Args:
        root: Cache folder; default ``$GAN_SUITE_CACHE`` or ``~/.cache/gan-suite``.
        name: Folder name; it should fingerprint every parameter.
        params: Entries the finished folder's ``scenes.json`` must hold (the completeness test).
        write: Renders the whole dataset into an empty folder, ``scenes.json`` last (by
            :func:`write_scenes`) with at least ``params`` in it.

    Raises:
        DatasetLayoutError: The target exists but is not a complete dataset with these
            parameters (it was not written by this function; delete it to regenerate).
    """
    base = Path(root).expanduser() if root is not None else default_cache_root()
    target = base / name
    if _is_complete(target, params):
        return target
    if target.exists() and any(target.iterdir()):
        raise DatasetLayoutError(
            f"{str(target)!r} exists but has no valid {SCENES_FILE} for {params}; it was not "
            "written by gan-suite (which publishes atomically). Delete it to regenerate."
        )
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=base))
    try:
        write(tmp)
        try:
            # Atomic on POSIX; fails if another process already published a non-empty folder.
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target, params):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
