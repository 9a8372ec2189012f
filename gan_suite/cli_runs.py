"""What the ``gan-suite`` command decides before anything is built: which run directory,
which checkpoint a resume continues from, and budgets that mean what a user reads.

- ``--resume runs/<name>/<id>`` (or ``--ckpt_path last``, the newest run of that name) continues
  a run in its own directory from ``checkpoints/last.ckpt``.
- Options given on resume that the checkpoint fixes (the model's) are compared with the
  checkpoint's and refused when they differ: LightningCLI would silently take the checkpoint's.
- ``--trainer.limit_*_batches 1`` means one batch (Lightning reads the float 1.0 as 100 %), and
  ``--trainer.max_steps N`` means N iterations (Lightning counts every optimizer step).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

LAST_CKPT = Path("checkpoints") / "last.ckpt"
BATCH_LIMITS = (
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
)
BUDGET_CALLBACK = "gan_suite.callbacks.budget.IterationBudget"


class ResumeError(ValueError):
    """A resume request that cannot be honoured as asked (the message says why and what to do)."""


def resume_checkpoint(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints/last.ckpt``, or a message naming what the folder holds.

    Raises:
        ResumeError: ``run_dir`` is not a run directory or has no ``last.ckpt``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ResumeError(
            f"--resume {run_dir}: not a run directory (expected {run_dir / 'config.yaml'}, "
            "written by `gan-suite fit` into runs/<name>/<run_id>/)"
        )
    ckpt = run_dir / LAST_CKPT
    if not ckpt.is_file():
        others = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
        hint = f"; it holds {', '.join(others)}: pass one with --ckpt_path" if others else ""
        raise ResumeError(f"--resume {run_dir}: no {LAST_CKPT} to continue from{hint}")
    return ckpt


def latest_run_checkpoint(runs_root: str | Path, name: str) -> Path:
    """``last.ckpt`` of the most recently written run of ``name`` (what ``--ckpt_path last``
    means: a new run directory has no ``last`` of its own).

    Raises:
        ResumeError: no run of ``name`` under ``runs_root`` has a ``last.ckpt``.
    """
    found = list((Path(runs_root) / name).glob(f"*/{LAST_CKPT.as_posix()}"))
    if not found:
        raise ResumeError(
            f"--ckpt_path last: no run of {name!r} under {Path(runs_root) / name} has a "
            f"{LAST_CKPT}; train one first or pass a checkpoint file"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The run directory a checkpoint was written into (``<run>/checkpoints/x.ckpt``), if any."""
    ckpt = Path(ckpt_path).resolve()
    if ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "config.yaml").is_file():
        return ckpt.parent.parent
    return None


def insert_resume_config(argv: list[str]) -> list[str]:
    """``fit --resume DIR ...`` -> ``fit --config DIR/config.yaml --resume DIR ...``: the run's
    own configuration first, so that options after it still override (and are checked)."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--resume" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--resume="):
            value = arg.split("=", 1)[1]
        if value:
            config = Path(value) / "config.yaml"
            if not config.is_file():
                raise ResumeError(
                    f"--resume {value}: not a run directory (expected {config}, written by "
                    "`gan-suite fit` into runs/<name>/<run_id>/)"
                )
            sub = 1 if argv[:1] and not argv[0].startswith("-") else 0
            return argv[:sub] + ["--config", str(config)] + argv[sub:]
    return argv


def _plain(value: Any) -> Any:
    """Config values in one comparable form (namespaces -> dicts, tuples -> lists, numbers ->
    floats), so that 2e-4 from a YAML equals 0.0002 from a checkpoint."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) or (math.isnan(a) and math.isnan(b))
    return a == b


def changed_model_options(requested: Any, restored: Any) -> list[tuple[str, Any, Any]]:
    """Model options this command asks for that differ from the checkpoint's:
    ``[(option, requested, in_checkpoint)]``. ``None`` requests are not counted: a paper
    resolves some options when built (StarGAN's attribute list) and saves the result."""
    req, rest = _plain(requested) or {}, _plain(restored) or {}
    out = []
    if req.get("class_path") and rest.get("class_path") and req["class_path"] != rest["class_path"]:
        out.append(("model.class_path", req["class_path"], rest["class_path"]))
        return out
    req_args, rest_args = req.get("init_args") or {}, rest.get("init_args") or {}
    rest_args = {**(rest.get("dict_kwargs") or {}), **rest_args}
    for key, value in req_args.items():
        if value is None or key not in rest_args:
            continue
        if not _same(value, rest_args[key]):
            out.append((f"model.init_args.{key}", value, rest_args[key]))
    return out


def refuse_changed_options(ckpt_path: str, changes: list[tuple[str, Any, Any]]) -> None:
    """Raise a message listing the options a resume would otherwise silently drop.

    Raises:
        ResumeError: ``changes`` is not empty.
    """
    if not changes:
        return
    lines = "\n".join(f"  {k}: checkpoint {old!r}, this command {new!r}" for k, new, old in changes)
    raise ResumeError(
        f"resuming from {ckpt_path} with model options that differ from the checkpoint's:\n"
        f"{lines}\nA resumed run continues with the checkpoint's options (its optimizer and LR "
        "schedule states carry them), so these would be ignored. Drop them to resume, or start "
        "a new run (a new --run_id, no --ckpt_path) to train with them."
    )


def normalise_budgets(trainer_cfg: Any) -> int | None:
    """Make the trainer's budgets read as a user reads them; returns the iteration budget.

    - ``limit_*_batches``: a whole number >= 1 is a number of batches, also when parsed as a
      float (``1`` on the command line arrives as 1.0, which Lightning reads as 100 %); a value
      in (0, 1) stays a fraction. Leave the option out for all batches.
    - ``max_steps`` N > 0 becomes N iterations (training batches): it is removed from the
      trainer (which counts optimizer steps, 2-3 per GAN batch) and returned for an
      :class:`~gan_suite.callbacks.budget.IterationBudget`.

    Raises:
        ValueError: a batch limit above 1 that is not a whole number.
    """
    for key in BATCH_LIMITS:
        value = trainer_cfg.get(key)
        if isinstance(value, float) and value >= 1.0:
            if not value.is_integer():
                raise ValueError(
                    f"trainer.{key}={value}: expected a whole number of batches or a fraction "
                    "in (0, 1)"
                )
            trainer_cfg[key] = int(value)
    max_steps = trainer_cfg.get("max_steps")
    if max_steps is None or int(max_steps) <= 0:
        return None
    trainer_cfg["max_steps"] = -1
    if trainer_cfg.get("max_epochs") is None:
        trainer_cfg["max_epochs"] = -1  # the iteration budget alone ends the run
    return int(max_steps)


def add_budget_callback(trainer_cfg: Any, max_iterations: int, namespace_type: type) -> None:
    """Append (or update) the :class:`IterationBudget` callback in the trainer's config."""
    callbacks = list(trainer_cfg.get("callbacks") or [])
    for cb in callbacks:
        if getattr(cb, "class_path", None) == BUDGET_CALLBACK:
            cb.init_args.max_iterations = max_iterations
            break
    else:
        callbacks.append(
            namespace_type(
                class_path=BUDGET_CALLBACK,
                init_args=namespace_type(max_iterations=max_iterations),
            )
        )
    trainer_cfg["callbacks"] = callbacks
