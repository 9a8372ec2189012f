"""Loggers: W&B that never blocks on a login prompt."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


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
