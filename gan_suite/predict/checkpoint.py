"""A trained run's model, rebuilt from one checkpoint (and its run's ``config.yaml``).

``gan-suite fit`` writes checkpoints whose ``hyper_parameters`` hold the model's init args and
its class (``_class_path``, stored by LightningCLI), and whose ``datamodule_hyper_parameters``
hold the data module's (crop size, image size, channels, ...). A checkpoint written by a bare
``Trainer.save_checkpoint`` may lack the class: then the run's ``config.yaml``
(``<run>/config.yaml`` beside ``<run>/checkpoints/``) names it.
"""

from __future__ import annotations

import importlib
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

EXPECTED_CKPT = (
    "a checkpoint written by gan-suite fit, e.g. runs/<paper>/<run_id>/checkpoints/last.ckpt"
)


@dataclass
class LoadedRun:
    """A model in eval mode with what predict needs to know of its training run.

    Attributes:
        model: the paper's LightningModule with the checkpoint's weights, in eval mode.
        class_path: its import path (``gan_suite.models.cyclegan.CycleGAN``).
        data_args: the run's data-module init args (``crop_size``, ``image_size``, ...);
            empty when neither the checkpoint nor ``config.yaml`` has them.
        data_class_path: the data module's import path, or None.
        run_dir: the training run's folder (the parent of ``checkpoints/``).
    """

    model: L.LightningModule
    class_path: str
    data_args: dict[str, Any] = field(default_factory=dict)
    data_class_path: str | None = None
    run_dir: Path = Path(".")


def run_dir_of(ckpt_path: Path) -> Path:
    """``runs/<paper>/<id>`` for ``runs/<paper>/<id>/checkpoints/x.ckpt``, else the file's
    folder."""
    parent = ckpt_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as a dict ({} when there is none).

    Raises:
        ValueError: the file exists but is not YAML (the message names it).
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"cannot read the run configuration {path}: {err}") from err


TRUST_ENV = "GAN_SUITE_TRUST_CHECKPOINT"  # =1: allow a full (code-running) unpickling


def _torch_load(path: Path) -> dict[str, Any]:
    """Load with ``weights_only=True`` (tensors and containers: the suite's own checkpoints).
    A file that needs more runs code when unpickled: refused unless ``$GAN_SUITE_TRUST_CHECKPOINT``
    is set to 1 for a file the user vouches for."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if os.environ.get(TRUST_ENV) != "1":
            raise ValueError(
                f"--ckpt_path {path} holds Python objects beyond tensors and containers, and "
                "unpickling them runs code from the file; it is not loaded. If you trust the "
                f"file (your own older checkpoint), set {TRUST_ENV}=1."
            ) from err
        warnings.warn(f"{path}: loaded with weights_only=False because {TRUST_ENV}=1", stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(
            f"--ckpt_path {path}: cannot read it ({err}); expected {EXPECTED_CKPT}"
        ) from err


def import_class(class_path: str, what: str) -> type:
    """The class named by ``package.module.Class``.

    Raises:
        ValueError: the module or the class cannot be imported (the message names ``what``).
    """
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"{what} names the class {class_path!r}, which cannot be imported: {err}"
        ) from err


def _section(cfg: dict[str, Any], key: str) -> tuple[str | None, dict[str, Any]]:
    node = cfg.get(key) or {}
    return node.get("class_path"), dict(node.get("init_args") or {})


def load_checkpoint(ckpt_path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model of ``ckpt_path`` and load its weights (strictly), in eval mode.

    The model class and init args come from the checkpoint's ``hyper_parameters``; where the
    checkpoint does not name its class, from ``<run>/config.yaml`` (``model.class_path``,
    ``model.init_args``). The data arguments likewise, from ``datamodule_hyper_parameters`` or
    the config's ``data`` section.

    Raises:
        FileNotFoundError: no such file, or neither the checkpoint nor a ``config.yaml``
            names the model class.
        ValueError: an unreadable file, a class that cannot be imported, or weights that do
            not fit the rebuilt model.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"--ckpt_path {path} {what}; expected {EXPECTED_CKPT}")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"--ckpt_path {path} has no 'state_dict'; expected {EXPECTED_CKPT}")
    run_dir = run_dir_of(path)
    cfg = read_run_config(run_dir)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    cfg_class, cfg_args = _section(cfg, "model")
    class_path = hparams.get("_class_path") or cfg_class
    if class_path is None:
        raise FileNotFoundError(
            f"--ckpt_path {path}: the checkpoint does not name its model class (no "
            f"'_class_path' in its hyper_parameters) and {run_dir / 'config.yaml'} with "
            f"model.class_path does not exist; expected {EXPECTED_CKPT}"
        )
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_")} or cfg_args
    if init_args.get("pretrained_backbone"):
        # BDL's ImageNet initialisation of M: the checkpoint's weights replace it, so the file
        # need not exist on the machine that predicts
        init_args["pretrained_backbone"] = None
    cls = import_class(class_path, f"--ckpt_path {path}")
    try:
        model = cls(**init_args)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise ValueError(
            f"--ckpt_path {path}: its weights do not fit {class_path} built from its "
            f"hyperparameters: {err}"
        ) from err
    data_hp = dict(ckpt.get("datamodule_hyper_parameters") or {})
    cfg_data_class, cfg_data_args = _section(cfg, "data")
    data_args = {k: v for k, v in data_hp.items() if not k.startswith("_")} or cfg_data_args
    return LoadedRun(
        model=model.to(device).eval(),
        class_path=class_path,
        data_args=data_args,
        data_class_path=data_hp.get("_class_path") or cfg_data_class,
        run_dir=run_dir,
    )
