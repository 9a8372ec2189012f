"""gan_suite.utils: the atomic write keeps the old file on failure; seeded runs repeat."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gan_suite.utils import atomic_write, seeded


def test_atomic_write_publishes_whole_files_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "scenes.json"
    atomic_write(target, lambda p: p.write_text("new"))
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o644

    def fail(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes.json"]  # no temp file left


def test_seeded_repeats_and_gives_the_callers_rng_back():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with seeded(7):
        first = (random.random(), np.random.rand(), torch.rand(1))
    with seeded(7):
        assert (random.random(), np.random.rand(), torch.rand(1)) == first
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
