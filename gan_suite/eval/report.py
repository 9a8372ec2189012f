"""Run reports: ``metrics.json``, training curves and a self-contained ``report.html``.

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

Every metric entry has ``value`` (float, or null when the metric was NaN/inf/not a number, then
flagged ``"finite": false``) and ``n_images`` (int); ``extractor`` names the feature network of
feature-based metrics (FIDs from different extractors are not comparable); any further keys are
free-form info. The file is strict JSON (no NaN literals), so any JSON reader accepts it.

Run-directory layout assumed (see ``gan_suite.cli``): ``runs/<name>/<id>/`` holds
``metrics.csv``, ``config.yaml``, ``samples/*.png``; ``gan-suite test`` writes into
``runs/<name>/<id>/test-<id2>/``, so a test directory's training curves live in its parent.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import lightning as L

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
# Sub-directories that `gan-suite test|validate|predict --ckpt_path` creates beside a run.
EVAL_DIR_PREFIXES = ("test-", "validate-", "predict-")


# --------------------------------------------------------------------------- metrics.json
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
    # tmp file in the same folder + os.replace: a reader never sees a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".json.tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


# --------------------------------------------------------------------------- curves
def _read_csv_columns(metrics_csv: Path) -> dict[str, list[tuple[float, float, float]]]:
    """Column -> [(step, epoch, value)] for the rows where that column has a finite value.

    Lightning's CSVLogger writes one row per logging call with empty cells for the metrics not
    logged at that step, so every column is read sparsely."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            step, epoch = _to_float(row.get("step")), _to_float(row.get("epoch"))
            step = float(i) if math.isnan(step) else step
            for col, cell in row.items():
                if col in (None, "step", "epoch"):
                    continue
                value = _to_float(cell)
                if math.isfinite(value):
                    series.setdefault(col, []).append((step, epoch, value))
    return series


def _to_float(cell: Any) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


def _group_of(column: str) -> str:
    """Plot group: related train terms share a figure; val/test/others one figure per prefix."""
    prefix, _, term = column.partition("/")
    if prefix != "train" or not term:
        return prefix if term else "other"
    term = term.lower()
    if term == "lr" or term.startswith("lr") or "/lr" in term or term.endswith("_lr"):
        return "train_lr"
    if term.startswith("d_") or term in ("d", "d_loss") or "disc" in term:
        return "train_discriminator"
    return "train_generator"


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    # 'valid' convolution: no edge bias from zero padding; caller aligns x to the window end.
    return np.convolve(y, np.ones(window) / window, mode="valid")


def plot_curves(metrics_csv: str | Path, out_dir: str | Path) -> list[Path]:
    """Plot a Lightning ``metrics.csv`` into ``out_dir/plots/<group>.png``; one PNG per group.

    Groups: ``train_generator``, ``train_discriminator``, ``train_lr`` (x = step; noisy terms
    drawn raw and faint plus a moving average) and one per other prefix (``val``, ``test``;
    x = epoch when logged over several epochs, else step). Missing or empty CSV -> ``[]``."""
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file() or metrics_csv.stat().st_size == 0:
        return []
    groups: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for col, points in sorted(_read_csv_columns(metrics_csv).items()):
        groups.setdefault(_group_of(col), {})[col] = points
    plot_dir = Path(out_dir) / "plots"
    written = []
    for group, columns in sorted(groups.items()):
        plot_dir.mkdir(parents=True, exist_ok=True)
        written.append(_plot_group(group, columns, plot_dir / f"{group}.png"))
    return written


def _plot_group(group: str, columns: dict[str, list], path: Path) -> Path:
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    # Figure + Agg canvas, not pyplot: no global backend switch, no figure registry to leak.
    fig = Figure(figsize=(4.2 * ncols, 2.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    is_train = group.startswith("train")
    for i, (col, points) in enumerate(columns.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        steps, epochs, y = (np.asarray(v, dtype=float) for v in zip(*points))
        by_epoch = not is_train and np.isfinite(epochs).all() and len(np.unique(epochs)) > 1
        x, xlabel = (epochs, "epoch") if by_epoch else (steps, "step")
        window = max(1, min(50, len(y) // 10))
        if is_train and window > 1:
            ax.plot(x, y, color="C0", alpha=0.25, linewidth=0.8, label="raw")
            ax.plot(x[window - 1 :], _moving_average(y, window), color="C0", label=f"avg {window}")
            ax.legend(fontsize=7, loc="best")
        else:
            ax.plot(x, y, color="C1" if not is_train else "C0", marker="o", markersize=3)
        ax.set_title(col, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(group)
    fig.savefig(path, dpi=80)
    return path


# --------------------------------------------------------------------------- report.html
def training_run_dir(run_dir: str | Path) -> Path:
    """The training run a directory belongs to: the parent of a ``test-*`` dir, else itself."""
    run_dir = Path(run_dir)
    return run_dir.parent if run_dir.name.startswith(EVAL_DIR_PREFIXES) else run_dir


def newest_sample(run_dir: Path) -> Path | None:
    """``samples/latest.png`` if present, else the newest ``samples/*.png`` by mtime."""
    samples = run_dir / "samples"
    if (samples / "latest.png").is_file():
        return samples / "latest.png"
    pngs = sorted(samples.glob("*.png"), key=lambda p: (p.stat().st_mtime, p.name))
    return pngs[-1] if pngs else None


def _config_model(run_dir: Path) -> str | None:
    """Model class from ``config.yaml`` without a YAML dependency: ``model:\\n  class_path: X``."""
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return None
    m = re.search(r"^model:\s*\n\s+class_path:\s*(\S+)", cfg.read_text(encoding="utf-8"), re.M)
    return m.group(1).rsplit(".", 1)[-1] if m else None


def _img_tag(path: Path, alt: str, css_class: str = "plot") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="{css_class}" src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def format_value(value: Any) -> str:
    """4 significant figures; null/non-numbers as ``nan``."""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return "nan"


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
    "td.num{text-align:right;font-family:monospace}img{max-width:100%}"
    # sample grids are often 32-px crops: upscale them crisp rather than blurred
    "img.sample{image-rendering:pixelated;min-width:40%}"
    "figure{margin:1em 0}figcaption{color:#555;font-size:90%}"
)


def write_report_html(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write a self-contained ``report.html`` (images inlined as base64) for one run.

    Metrics come from :func:`read_metrics_json` (if any), samples from the run and, for a
    ``test-*`` dir, its training run; curves from the training run's ``metrics.csv``."""
    run_dir = Path(run_dir).resolve()
    out_dir = Path(out_dir).resolve() if out_dir is not None else run_dir
    train_dir = training_run_dir(run_dir)
    try:
        doc: dict | None = read_metrics_json(run_dir)
    except FileNotFoundError:
        doc = None  # a training run without evaluation still gets curves and samples
    model = (doc or {}).get("model") or _config_model(train_dir) or "model"
    run_id = run_dir.name if train_dir == run_dir else f"{train_dir.name}/{run_dir.name}"
    checkpoint = (doc or {}).get("checkpoint") or "–"
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(model)} {esc(run_id)}"
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(model)} — {esc(run_id)}</h1>",
        f"<p>checkpoint: <code>{esc(str(checkpoint))}</code><br>run: <code>{esc(str(run_dir))}"
        f"</code>",
    ]
    if doc and doc.get("dataset"):
        parts.append(f"<br>dataset: <code>{esc(str(doc['dataset']))}</code>")
    parts.append("</p><h2>Metrics</h2>")
    parts.append(_metrics_table(doc) if doc else "<p>no metrics.json (run gan-suite test)</p>")

    parts.append("<h2>Samples</h2>")
    sample_dirs = [run_dir] + ([train_dir] if train_dir != run_dir else [])
    for d in sample_dirs:
        sample = newest_sample(d)
        if sample is not None:
            caption = f"{d.name}/samples/{sample.name}: per direction, rows = input | "
            caption += "translation | reconstruction"
            parts.append(f"<figure>{_img_tag(sample, sample.name, 'sample')}")
            parts.append(f"<figcaption>{esc(caption)}</figcaption></figure>")

    parts.append("<h2>Curves</h2>")
    for plot in plot_curves(train_dir / "metrics.csv", out_dir):
        parts.append(f"<figure>{_img_tag(plot, plot.stem)}<figcaption>{esc(plot.stem)}")
        parts.append("</figcaption></figure>")
    parts.append("</body></html>\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _metrics_table(doc: dict) -> str:
    esc = html.escape
    rows = [
        "<table><tr><th>metric</th><th>value</th><th>extractor</th><th>n_images</th>"
        "<th>info</th></tr>"
    ]
    for key in sorted(doc["metrics"]):
        e = doc["metrics"][key]
        info = ", ".join(
            f"{k}={v}" for k, v in e.items() if k not in ("value", "n_images", "extractor")
        )
        rows.append(
            f"<tr><td>{esc(key)}</td><td class='num'>{esc(format_value(e.get('value')))}</td>"
            f"<td>{esc(str(e.get('extractor', '')))}</td>"
            f"<td class='num'>{esc(str(e.get('n_images', '')))}</td><td>{esc(info)}</td></tr>"
        )
    return "\n".join(rows) + "</table>"


# --------------------------------------------------------------------------- a tested run
def write_run_reports(
    trainer: L.Trainer,
    results: dict[str, dict],
    *,
    model: str,
    dataset: str,
    extra: dict | None = None,
    print_table: bool = True,
) -> Path:
    """``metrics.json`` and ``report.html`` of a test run, in ``trainer.default_root_dir``.

    ``results`` are the metric entries (schema in the module docstring), ``model`` the model's
    class name, ``dataset`` what the data module read; the checkpoint is ``trainer.ckpt_path``.
    With ``print_table``, the run's metrics table (as ``gan-suite compare`` shows it) and the
    report's path are logged on rank zero. Returns the path of ``report.html``.
    """
    from lightning.pytorch.utilities import rank_zero_info

    from gan_suite.eval.compare import compare_runs, to_markdown

    run_dir = Path(trainer.default_root_dir)
    write_metrics_json(
        run_dir, results, model=model, checkpoint=trainer.ckpt_path, dataset=dataset, extra=extra
    )
    report = write_report_html(run_dir)
    if print_table:
        header, rows = compare_runs([run_dir])
        rank_zero_info("\n" + to_markdown(header, rows) + f"\n\nreport: {report}")
    return report
