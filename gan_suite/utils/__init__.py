"""Shared utilities of the suite's data and evaluation: files on disk and quiet, seeded runs.

A neutral package: it imports nothing else of the suite, so ``datamodules`` and
``gan_suite.eval`` can both use it without importing each other (tests/test_layering.py).
"""

from gan_suite.utils.checkpoint_io import AtomicCheckpointIO
from gan_suite.utils.files import atomic_write, default_cache_root, file_lock
from gan_suite.utils.runs import quiet, seeded

__all__ = [
    "AtomicCheckpointIO",
    "atomic_write",
    "default_cache_root",
    "file_lock",
    "quiet",
    "seeded",
]
