"""``index.html`` of a predict folder: one row per input, file name | input | outputs, like the
official CycleGAN test page. Images are linked (relative paths), not inlined, so the page
stays small for thousands of images and the PNG files remain the results."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:90%}"
    # small training crops (32 px) shown large and crisp rather than blurred
    "img{width:192px;image-rendering:pixelated}"
)


@dataclass
class Row:
    """One input: its file name, its (resized) copy and its outputs, as paths relative to the
    page's folder (``input`` is None for papers that generate without inputs)."""

    name: str
    input: str | None
    outputs: list[str]


def _img(rel: str, alt: str) -> str:
    return f'<a href="{quote(rel)}"><img src="{quote(rel)}" alt="{html.escape(alt)}"></a>'


def write_index(
    out_dir: Path, title: str, columns: list[str], rows: list[Row], notes: list[str]
) -> Path:
    """Write ``out_dir/index.html``: a table with a header (file | input | ``columns``) and
    one line per :class:`Row`; ``notes`` are shown above it (checkpoint, size mode, ...).
    File names and captions are HTML-escaped and links URL-quoted."""
    esc = html.escape
    has_input = any(r.input is not None for r in rows)
    head = ["file", *(["input"] if has_input else []), *columns]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
        *(f"<p>{esc(n)}</p>" for n in notes),
        "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>",
    ]
    for row in rows:
        cells = [f"<td>{esc(row.name)}</td>"]
        if has_input:
            cells.append(f"<td>{_img(row.input, row.name) if row.input else ''}</td>")
        cells += [f"<td>{_img(o, f'{row.name}: {c}')}</td>" for o, c in zip(row.outputs, columns)]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>\n")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
