"""Shared test configuration: CPU only, no workers, no W&B network, tmp run directories."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Keep caches and run directories inside the test's tmp folder."""
    monkeypatch.setenv("GAN_SUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GAN_SUITE_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
