"""Training curves of a run: Lightning's ``metrics.csv`` plotted into ``plots/<group>.png``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


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
