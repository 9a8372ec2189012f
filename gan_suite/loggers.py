"""Loggers: W&B that never blocks on a login prompt; a CSV log that a resumed run appends to."""

from __future__ import annotations

import csv
import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _CSVWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


def wandb_credentials_available() -> bool:
    """True when W&B can log online without asking: an API key in the environment or a
    ``~/.netrc`` entry for api.wandb.ai (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
    return rc.authenticators(host.rstrip("/")) is not None


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, switched to offline mode when no API key is configured.

    Offline runs are written under ``<save_dir>/wandb/`` and can be uploaded later with
    ``wandb sync <dir>``.

    Args:
        project: W&B project.
        name: display name of the run (the CLI sets ``<experiment>/<run-id>``).
        save_dir: where the ``wandb/`` folder goes (the CLI sets the run directory).
        offline: ``None`` = offline exactly when no credentials are found; True/False forces.
        entity: W&B team or user.
        group: W&B run group (e.g. a sweep or a paper).
        tags: W&B tags.
        log_model: upload checkpoints as W&B artifacts (``False``, ``True`` or ``"all"``).
        id: resume the W&B run with this id.
    """

    def __init__(
        self,
        project: str = "gan-suite",
        name: str | None = None,
        save_dir: str = ".",
        offline: bool | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        log_model: bool | str = False,
        id: str | None = None,
    ) -> None:
        if offline is None:
            offline = not wandb_credentials_available()
        if offline:
            os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        super().__init__(
            project=project,
            name=name,
            save_dir=save_dir,
            offline=offline,
            entity=entity,
            group=group,
            tags=tags,
            log_model=log_model,
            id=id,
        )
        # Lightning passes anonymous=None, which wandb now answers with a deprecation warning
        # on every run; the setting has no effect either way
        self._wandb_init.pop("anonymous", None)


class _AppendingCSVWriter(_CSVWriter):
    """Lightning's CSV writer, minus deleting an existing ``metrics.csv``: it continues the
    file, starting from its header (so the rows already written keep their columns)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger that appends to the run directory's ``metrics.csv``.

    Lightning's own deletes an existing ``metrics.csv`` when it starts (with a warning that
    every brand-new suite run triggers, because the run directory already holds its
    config.yaml): a run resumed in its directory would lose its first epochs' metrics. The CLI
    uses this class wherever a config names Lightning's CSVLogger. Same arguments.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingCSVWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingCSVWriter(log_dir=self.log_dir)
        return self._experiment
