"""Side-by-side comparison of evaluated runs: ``gan-suite compare RUN_DIR [RUN_DIR ...]``.

    gan-suite compare runs/cyclegan/<id1> runs/opgan/<id2> [--out compare.html]

Each RUN_DIR is a run directory (or its ``test-*`` sub-directory, or a ``metrics.json``) with a
``metrics.json`` written by :func:`gan_suite.eval.metrics_json.write_metrics_json`. Prints a
markdown table (rows = metrics, columns = runs, best value per row in bold) and writes the same
table as a static HTML page, never overwriting an existing file.
"""

from __future__ import annotations

import argparse
import html
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from gan_suite.eval.metrics_json import EVAL_DIR_PREFIXES, format_value, read_metrics_json

MISSING = "–"  # en dash: a run that has no such metric
_LOWER_IS_BETTER = ("fid", "kid", "loss", "cycle")
_HIGHER_IS_BETTER = ("psnr", "ssim", "acc", "iou", "miou")


def better_direction(metric: str) -> Literal["lower", "higher"] | None:
    """Which way is better for ``metric`` (``"A->B/fid"``), judged by its last path part;
    ``None`` when unknown, so nothing is highlighted rather than the wrong value."""
    name = metric.rsplit("/", 1)[-1].lower()
    if any(token in name for token in _LOWER_IS_BETTER):
        return "lower"
    if any(token in name for token in _HIGHER_IS_BETTER):
        return "higher"
    return None


def run_label(run_dir: str | Path) -> str:
    """``<name>/<run-id>`` from the path (``<name>/<run-id>/test-<id>`` for an eval dir)."""
    p = Path(run_dir).resolve()
    if p.is_file():
        p = p.parent
    if p.name.startswith(EVAL_DIR_PREFIXES):
        return f"{p.parent.parent.name}/{p.parent.name}/{p.name}"
    return f"{p.parent.name}/{p.name}"


def _sort_key(row_key: tuple[str, str]) -> tuple[str, str, str]:
    metric, extractor = row_key
    direction, _, name = metric.rpartition("/")  # "A->B/fid" -> ("A->B", "fid")
    return direction, name, extractor


def compare_runs(run_dirs: Sequence[str | Path]) -> tuple[list[str], list[list[str]]]:
    """Build the comparison table ``(header, rows)`` of formatted strings.

    Header: ``["metric", <run label>...]``. First rows ``model`` and ``checkpoint`` (file name),
    then one row per (metric, extractor) over the union of all runs, sorted by direction then
    name; the row label carries the extractor (``A->B/fid [evaluator]``) because values from
    different extractors are not comparable. Numbers to 4 significant figures, ``–`` when a
    run lacks the metric; the best value of a row (see :func:`better_direction`, at least two
    runs with finite values) is wrapped in ``**`` (markdown bold; :func:`to_html` renders it).
    Raises FileNotFoundError naming the run dir when one has no metrics.json."""
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run directory")
    docs, labels = [], []
    for d in run_dirs:
        docs.append(read_metrics_json(d))
        label = run_label(d)
        while label in labels:  # the same run given twice keeps two distinct columns
            label += "'"
        labels.append(label)

    # (metric, extractor) -> per-run value (None = missing, nan = not finite)
    table: dict[tuple[str, str], list[float | None]] = {}
    for i, doc in enumerate(docs):
        for metric, entry in doc["metrics"].items():
            key = (metric, str(entry.get("extractor") or ""))
            value = entry.get("value")
            cells = table.setdefault(key, [None] * len(docs))
            cells[i] = float(value) if isinstance(value, (int, float)) else math.nan

    rows = [
        ["model", *[str(doc.get("model") or MISSING) for doc in docs]],
        [
            "checkpoint",
            *[Path(doc["checkpoint"]).name if doc.get("checkpoint") else MISSING for doc in docs],
        ],
    ]
    for key in sorted(table, key=_sort_key):
        metric, extractor = key
        values = table[key]
        best = _best_value(metric, values)
        cells = []
        for v in values:
            text = MISSING if v is None else format_value(v if math.isfinite(v) else None)
            cells.append(f"**{text}**" if best is not None and v == best else text)
        rows.append([f"{metric} [{extractor}]" if extractor else metric, *cells])
    return ["metric", *labels], rows


def _best_value(metric: str, values: list[float | None]) -> float | None:
    direction = better_direction(metric)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if direction is None or len(finite) < 2:
        return None
    return min(finite) if direction == "lower" else max(finite)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    """GitHub-flavoured markdown table; ``|`` in cells escaped."""
    lines = [
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _html_cell(text: str) -> str:
    if len(text) > 4 and text.startswith("**") and text.endswith("**"):
        return f"<b>{html.escape(text[2:-2])}</b>"
    return html.escape(text)


def to_html(header: list[str], rows: list[list[str]], title: str) -> str:
    """A static, self-contained HTML page with the table (all text escaped, bold = best)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join(
        "<tr><td>"
        + html.escape(row[0])
        + "</td>"
        + "".join(f"<td class='num'>{_html_cell(c)}</td>" for c in row[1:])
        + "</tr>"
        for row in rows
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}td.num{text-align:right;"
        "font-family:monospace}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>\n<table><tr>{head}</tr>\n{body}\n</table>"
        "<p>bold: best of the row (lower is better for fid, kid, loss, cycle; higher for psnr,"
        " ssim, acc, iou); – : metric not evaluated for that run.</p></body></html>\n"
    )


def _write_new(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` or, if taken, ``<stem>-1<suffix>``, ... (never overwrite)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            with open(candidate, "x", encoding="utf-8") as f:  # "x": atomic exists-check
                f.write(text)
            return candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")


def compare_main(argv: list[str] | None = None) -> int:
    """CLI entry point of ``gan-suite compare``; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="gan-suite compare",
        description="Compare the metrics.json of several runs: markdown to stdout, HTML to file.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs to compare")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="HTML output (default runs/compare-<timestamp>.html; an existing file is kept "
        "and a -N suffix added)",
    )
    args = parser.parse_args(argv)
    try:
        header, rows = compare_runs(args.run_dirs)
    except (FileNotFoundError, ValueError) as err:
        print(f"gan-suite compare: error: {err}", file=sys.stderr)
        return 1
    print(to_markdown(header, rows))
    out = args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.html"
    title = "gan-suite compare: " + ", ".join(header[1:])
    path = _write_new(Path(out), to_html(header, rows, title))
    print(f"[gan-suite] comparison written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(compare_main())
