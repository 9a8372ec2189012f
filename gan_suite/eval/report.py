"""The self-contained ``report.html`` of a run, and :func:`write_run_reports` for a tested run.

The page shows the run's ``metrics.json`` (:mod:`gan_suite.eval.metrics_json`, which also
documents the run-directory layout), its newest sample grid and its training curves
(:mod:`gan_suite.eval.curves`).
"""

from __future__ import annotations

import base64
import html
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gan_suite.eval.compare import compare_runs, to_markdown
from gan_suite.eval.curves import plot_curves
from gan_suite.eval.metrics_json import (
    format_value,
    read_metrics_json,
    training_run_dir,
    write_metrics_json,
)

if TYPE_CHECKING:
    import lightning as L


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


def keep_previous(path: Path) -> Path | None:
    """Rename an existing ``path`` to ``<stem>.<its mtime>.<suffix>`` (never overwriting):
    the earlier report of a run that was resumed and tested again stays beside the new one."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    target = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
        n += 1
    path.rename(target)
    return target


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

    ``results`` are the metric entries (schema in :mod:`gan_suite.eval.metrics_json`),
    ``model`` the model's class name, ``dataset`` what the data module read; the checkpoint is
    ``trainer.ckpt_path``.
    With ``print_table``, the run's metrics table (as ``gan-suite compare`` shows it) and the
    report's path are logged on rank zero. Returns the path of ``report.html``.
    """
    from lightning.pytorch.utilities import rank_zero_info

    run_dir = Path(trainer.default_root_dir)
    for earlier in (run_dir / "metrics.json", run_dir / "report.html"):
        keep_previous(earlier)  # a resumed run appends its reports; none is overwritten
    write_metrics_json(
        run_dir, results, model=model, checkpoint=trainer.ckpt_path, dataset=dataset, extra=extra
    )
    report = write_report_html(run_dir)
    if print_table:
        header, rows = compare_runs([run_dir])
        rank_zero_info("\n" + to_markdown(header, rows) + f"\n\nreport: {report}")
    return report
