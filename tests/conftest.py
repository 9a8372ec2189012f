"""Shared test configuration: CPU only, no workers, no W&B network, tmp run directories."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:
    import lightning as L

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("GAN_SUITE_OFFLINE", "1")  # tests never touch the network
# one thread per pytest-xdist worker (make test runs 2 workers on the 2 cores), else both cores
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Keep caches and run directories inside the test's tmp folder."""
    monkeypatch.setenv("GAN_SUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GAN_SUITE_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="session")
def _digits_folder(tmp_path_factory):
    """The embedded digits pair at its default options, materialised once per session."""
    from datamodules.wheel_data import materialize_digits

    return materialize_digits(tmp_path_factory.mktemp("shared-data"))


@pytest.fixture
def shared_digits(_isolated_env, _digits_folder, tmp_path):
    """Link the session's digits pair into this test's cache, so that ``source="digits"`` /
    ``embedded={"dataset": "digits"}`` find it complete instead of writing it again (~10 s)."""
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    (cache / _digits_folder.name).symlink_to(_digits_folder, target_is_directory=True)
    return _digits_folder


@pytest.fixture
def make_trainer(tmp_path) -> Callable[..., L.Trainer]:
    """Factory of quiet CPU Trainers: ``make_trainer(max_epochs=1, limit_train_batches=2)``.

    Defaults: one CPU device, no logger, no checkpointing, no progress bar, no model summary,
    ``default_root_dir=tmp_path``; every keyword overrides a default (``logger=CSVLogger(...)``
    to log). ``seed`` (default 0, None = leave the RNGs alone) seeds torch, numpy and random
    with the dataloader workers before the Trainer is built, so the run repeats.
    """
    import lightning as L

    from gan_suite.utils import quiet

    def make(*, seed: int | None = 0, **overrides: Any) -> L.Trainer:
        if seed is not None:
            L.seed_everything(seed, workers=True, verbose=False)
        kwargs: dict[str, Any] = {
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": tmp_path,
            **overrides,
        }
        with quiet("lightning.pytorch", "lightning.fabric"):  # the GPU/TPU availability banner
            return L.Trainer(**kwargs)

    return make
