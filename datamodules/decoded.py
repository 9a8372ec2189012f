"""Decoded images kept in memory, so a small dataset is decoded once per process, not once per
epoch (``cache_images`` of the image data modules).

Every loader process (the main one, or each worker; persistent workers keep theirs between
epochs) fills its own cache as it reads files, so a dataset of ``B`` decoded bytes costs up to
``max(1, num_workers) * B`` bytes in all. ``cache_images: null`` (auto) enables it when that
total fits in :data:`AUTO_LIMIT_BYTES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

#: the most memory (bytes, over every loader process) ``cache_images: null`` lets the caches use
AUTO_LIMIT_BYTES = 1024 * 2**20


class DecodedCache:
    """Decoded ``uint8`` arrays by file path, for the life of the process that filled it.

    Every read returns a copy (a memcpy, ~20 us for 256 px RGB): a transform that wrote into
    its input, or a tensor made from it without a copy (``ToTensorV2`` on a mask), would
    otherwise change every later epoch's image.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def read(self, path: str | Path, reader: Callable[[Path], np.ndarray]) -> np.ndarray:
        """A copy of ``reader(path)``, decoded on the first call for ``path`` and kept."""
        key = str(path)
        array = self._arrays.get(key)
        if array is None:
            array = self._arrays[key] = reader(Path(path))
        return array.copy()

    def __getstate__(self) -> dict:
        # A worker process starts from an empty cache rather than a pickled copy of the
        # parent's arrays (spawned workers; forked ones share the parent's pages anyway).
        return {"_arrays": {}}


def decoded_bytes(sizes: Iterable[tuple[int, int]], channels: int = 3) -> int:
    """Bytes of the decoded ``uint8`` images of the given ``(width, height)`` sizes."""
    return sum(w * h * channels for w, h in sizes)


def resolve_cache(option: bool | None, nbytes: int, num_workers: int) -> bool:
    """Whether to cache: ``option`` when given, else (auto) whether ``nbytes`` per loader
    process, times the loader processes, fits in :data:`AUTO_LIMIT_BYTES`."""
    if option is not None:
        return bool(option)
    return nbytes * max(1, num_workers) <= AUTO_LIMIT_BYTES
