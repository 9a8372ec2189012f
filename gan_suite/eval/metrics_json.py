"""``metrics.json`` of an evaluated run, and the run-directory layout it lives in.

``metrics.json`` (written by :func:`write_metrics_json`, read by :func:`read_metrics_json`)::

    {"schema": 1,                      # bumped on any incompatible change
     "model": "CycleGAN",              # model class name
     "checkpoint": "/abs/.../last.ckpt" | null,
     "dataset": "/data/horse2zebra" | null,
     "created": "2026-11-24T06:00:00", # local time, seconds
     "run_dir": "/abs/...",            # absolute folder the file was written to
     "metrics": {
        "A->B/fid":  {"value": 12.3, "n_images": 200, "extractor": "evaluator"},
        "A->B/psnr": {"value": 20.1, "n_images": 200},
        "B->A/kid":  {"value": null, "n_images": 200, "extractor": "inception", "finite": false}},
     "extra": {...}}                   # only when ``extra`` was given

The ``Evaluation`` callback's ``extra`` names the judge of the evaluator-based metrics under
``"evaluator"``: ``{"checkpoint": "/abs/...ckpt", "accuracy_real_test": 0.98, "n_test": 60}``
(the held-out numbers of the report beside the evaluator's checkpoint, whatever kind: class
and attribute evaluators report ``accuracy_real_test`` (attributes also
``accuracy_real_test_per_attribute``), the two-domain shapes evaluator ``accuracy_A``,
``miou_A``, ...; see :func:`gan_suite.eval.evaluator.evaluator_summary`).

Every metric entry has ``value`` (float, or null when the metric was NaN/inf/not a number, then
flagged ``"finite": false``) and ``n_images`` (int); ``extractor`` names the feature network of
feature-based metrics (FIDs from different extractors are not comparable); any further keys are
free-form info. The file is strict JSON (no NaN literals), so any JSON reader accepts it.

Run-directory layout assumed (see ``gan_suite.cli``): ``runs/<name>/<id>/`` holds
``metrics.csv``, ``config.yaml``, ``samples/*.png``; ``gan-suite test`` writes into
``runs/<name>/<id>/test-<id2>/``, so a test directory's training curves live in its parent.

This module is the one both the run report (``report.py``) and ``gan-suite compare``
(``compare.py``) read the file through, so neither imports the other's internals.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from gan_suite.utils import atomic_write

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
# Sub-directories that `gan-suite test|validate|predict --ckpt_path` creates beside a run.
EVAL_DIR_PREFIXES = ("test-", "validate-", "predict-")


def _jsonable(obj: Any) -> Any:
    """Strict-JSON copy of ``obj``: numpy/torch scalars to Python, non-finite floats to null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int)):  # bool is an int
        return obj
    if isinstance(obj, Path):
        return str(obj)
    try:
        value = float(obj)  # numpy scalars, 0-d tensors
    except (TypeError, ValueError):
        return str(obj)
    return value if math.isfinite(value) else None


def _metric_entry(key: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or "value" not in entry or "n_images" not in entry:
        raise ValueError(
            f"metric {key!r}: expected a dict with 'value' and 'n_images', got {entry!r}"
        )
    try:
        value = float(entry["value"])
    except (TypeError, ValueError):
        value = math.nan  # an unusable value is reported, not fatal: the other metrics matter
    try:
        n_images = int(entry["n_images"])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"metric {key!r}: n_images must be an int, got {entry['n_images']!r}"
        ) from err
    out: dict[str, Any] = {"value": value if math.isfinite(value) else None, "n_images": n_images}
    if not math.isfinite(value):
        out["finite"] = False
    reserved = ("value", "n_images", "finite")
    out.update({str(k): _jsonable(v) for k, v in entry.items() if k not in reserved})
    return out


def write_metrics_json(
    out_dir: str | Path,
    metrics: dict[str, dict],
    *,
    model: str,
    checkpoint: str | None,
    dataset: str | None,
    extra: dict | None = None,
) -> Path:
    """Write ``out_dir/metrics.json`` atomically (schema in the module docstring)."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "model": str(model),
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "dataset": str(dataset) if dataset is not None else None,
        "created": datetime.now().isoformat(timespec="seconds"),
        "run_dir": str(out_dir),
        "metrics": {str(k): _metric_entry(str(k), v) for k, v in metrics.items()},
    }
    if extra is not None:
        doc["extra"] = _jsonable(extra)
    text = json.dumps(doc, indent=2, allow_nan=False)
    path = out_dir / METRICS_FILE
    # a reader (gan-suite compare, a sweep) never sees a half-written file
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return path


def find_metrics_json(path_or_run_dir: str | Path) -> Path:
    """The file itself, ``<dir>/metrics.json``, or the newest ``<dir>/test-*/metrics.json``."""
    p = Path(path_or_run_dir)
    if p.is_file():
        return p
    if (p / METRICS_FILE).is_file():
        return p / METRICS_FILE
    candidates = [c for c in p.glob(f"test-*/{METRICS_FILE}") if c.is_file()]
    if candidates:
        return max(candidates, key=lambda c: (c.stat().st_mtime, c.parent.name))
    raise FileNotFoundError(
        f"no metrics file for {p}: looked for {p / METRICS_FILE} and {p}/test-*/{METRICS_FILE}"
        " (run `gan-suite test --ckpt_path <run>/checkpoints/last.ckpt` first)"
    )


def read_metrics_json(path_or_run_dir: str | Path) -> dict:
    """Load a ``metrics.json`` given the file or a run directory (see :func:`find_metrics_json`)."""
    path = find_metrics_json(path_or_run_dir)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'metrics' object")
    doc.setdefault("run_dir", str(path.parent.resolve()))
    return doc


def training_run_dir(run_dir: str | Path) -> Path:
    """The training run a directory belongs to: the parent of a ``test-*`` dir, else itself."""
    run_dir = Path(run_dir)
    return run_dir.parent if run_dir.name.startswith(EVAL_DIR_PREFIXES) else run_dir


def format_value(value: Any) -> str:
    """4 significant figures; null/non-numbers as ``nan``."""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return "nan"
