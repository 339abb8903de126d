"""HTML building blocks of `RUN/report.html`: escaping, tables, thumbnails, galleries, SVG bar charts.

Every function here escapes what it is given (`esc`), so a string that came from the data (a
source path, a URL, a dataset name, a reject message) can never become markup. The page loads
nothing from outside: thumbnails are JPEG data URIs, styles are inline, and its
Content-Security-Policy forbids scripts and every non-`data:` resource.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

THUMB_SIDE = 96
THUMB_QUALITY = 70
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c8d0dc;font-size:12px;word-break:break-all}
nav{padding:8px 24px;background:#e9ecf1;position:sticky;top:0}nav a{margin-right:14px;color:#1d4ed8;text-decoration:none}
main{padding:0 24px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;margin:18px 0;padding:12px 18px}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0}td:first-child{white-space:nowrap}th,td{border-bottom:1px solid #e5e8ee;padding:3px 10px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.track{width:260px;background:#eef0f4;border-radius:2px}.bar{background:#3b82f6;height:12px;border-radius:2px}.bar.rm{background:#ef4444}
.empty{color:#8a5a00;background:#fff7e0;border:1px solid #f0d48a;padding:6px 10px;border-radius:4px}
.note{color:#5b6473;font-size:12px}
.gallery{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start;margin:4px 0 10px}
figure{margin:0;width:100px;font-size:11px;color:#39414d}figure img,.noimg{width:96px;height:96px;object-fit:contain;background:#eef0f4;border:1px solid #d6dae2;display:block}
.noimg{display:flex;align-items:center;justify-content:center;color:#8a93a3}
figcaption{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
figure.lead img,figure.lead .noimg{border:2px solid #1d4ed8}.arrow{font-size:28px;color:#8a93a3;align-self:center}
code{font-size:12px;word-break:break-all}
"""


def esc(value: Any) -> str:
    """Text (or attribute value) safe to put in the page: every `<>&"'` escaped."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt_count(value: Any) -> str:
    """A count with thousands separators; '–' for unknown."""
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.4g}"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return esc(value)


def thumbnail_uri(data: bytes, side: int = THUMB_SIDE) -> str | None:
    """A small JPEG `data:` URI of encoded image bytes (None when they do not decode)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (side, side))  # JPEG: decode at reduced scale
            small = img.convert("RGB")
            small.thumbnail((side, side))
            out = io.BytesIO()
            small.save(out, format="JPEG", quality=THUMB_QUALITY)
    except Exception:  # a thumbnail is decoration: never fail the report for one
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Tile:
    """One thumbnail of a gallery: the image (by id), a caption and a hover title."""

    image_id: str | None
    caption: str = ""
    title: str = ""


@dataclass
class Group:
    """One gallery row: an optional lead image (a query, an evaluation image), then tiles."""

    title: str
    tiles: list[Tile] = field(default_factory=list)
    lead: Tile | None = None
    note: str = ""


def figure(tile: Tile, thumbs: Mapping[str, str], lead: bool = False) -> str:
    uri = thumbs.get(tile.image_id or "")
    alt = tile.title or tile.caption or tile.image_id or ""
    if uri:
        img = f'<img src="{esc(uri)}" alt="{esc(alt)}" width="96" height="96">'
    else:
        img = '<div class="noimg">no image</div>'
    cls = ' class="lead"' if lead else ""
    return f'<figure{cls} title="{esc(alt)}">{img}<figcaption>{esc(tile.caption)}</figcaption></figure>'


def gallery(groups: Sequence[Group], thumbs: Mapping[str, str]) -> str:
    parts = []
    for group in groups:
        parts.append(f"<h3>{esc(group.title)}</h3>")
        if group.note:
            parts.append(f'<p class="note">{esc(group.note)}</p>')
        row = []
        if group.lead is not None:
            row += [figure(group.lead, thumbs, lead=True), '<span class="arrow">&rarr;</span>']
        row += [figure(t, thumbs) for t in group.tiles]
        parts.append(f'<div class="gallery">{"".join(row)}</div>')
    return "".join(parts)


@dataclass(frozen=True)
class Raw:
    """Markup built by this module (never data), for a `table` cell."""

    html: str


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """A table of escaped cells; columns in `numeric` are right-aligned and formatted as counts.
    A cell given as `Raw` is inserted as it is (markup this module built)."""
    num = set(numeric)
    head = "".join(f'<th{" class=n" if i in num else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell.html if isinstance(cell, Raw) else fmt_count(cell) if i in num else esc(cell)
            cells.append(f'<td{" class=n" if i in num else ""}>{text}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def bar(value: int | None, maximum: int, removal: bool = False) -> Raw:
    """A horizontal bar proportional to value / maximum."""
    if not value or maximum <= 0:
        return Raw("")
    width = max(0.5, 100.0 * value / maximum)
    return Raw(f'<div class="track"><div class="bar{" rm" if removal else ""}" style="width:{width:.1f}%"></div></div>')


def histogram_svg(values: Sequence[int], bins: int = 24, width: int = 640, height: int = 170, label: str = "") -> str:
    """An inline SVG histogram of integer values (e.g. cluster sizes)."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    bins = max(1, min(bins, hi - lo + 1))
    step = (hi - lo + 1) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / step))] += 1
    titles = [f"sizes {lo + math.ceil(i * step)}–{lo + math.ceil((i + 1) * step) - 1}: {c}" for i, c in enumerate(counts)]
    return bars_svg(counts, titles, lo, hi, label, width=width, height=height)


@dataclass(frozen=True)
class Mark:
    """A vertical line across a bar chart at `at` (0: the axis' left end, 1: its right end)."""

    at: float
    label: str
    color: str = "#dc2626"


def bars_svg(counts: Sequence[int], titles: Sequence[str], left: Any, right: Any, label: str = "",
             marks: Sequence[Mark] = (), log: bool = False, width: int = 640, height: int = 170) -> str:
    """An inline SVG bar chart: one bar per count, left to right (hover: its title), the axis
    labelled `left` and `right` at its ends, `marks` drawn over it. `log`: bar heights by
    log(1 + count), so a tail of a few pairs shows beside millions."""
    top = max(counts, default=0)
    scale = (lambda c: math.log1p(c) / math.log1p(top)) if log and top else (lambda c: c / top if top else 0)
    pad_l, plot_h = 44, height - 40
    plot_w = width - pad_l - 10
    bar_w = plot_w / max(len(counts), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{esc(label)}">']
    for i, (c, title) in enumerate(zip(counts, titles)):
        h = plot_h * scale(c)
        x, y = pad_l + i * bar_w, 10 + plot_h - h
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="#3b82f6">'
                     f"<title>{esc(title)}</title></rect>")
    axis_y = 10 + plot_h
    parts.append(f'<line x1="{pad_l}" y1="{axis_y}" x2="{width - 10}" y2="{axis_y}" stroke="#555"/>')
    for mark in marks:
        x = pad_l + plot_w * min(max(mark.at, 0.0), 1.0)
        parts.append(f'<line class="mark" x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="{axis_y}" stroke="{esc(mark.color)}" '
                     f'stroke-width="2"><title>{esc(mark.label)}</title></line>'
                     f'<text x="{x + 3:.1f}" y="20" font-size="11" fill="{esc(mark.color)}">{esc(mark.label)}</text>')
    parts.append(f'<text x="{pad_l}" y="{axis_y + 16}" font-size="11">{esc(left)}</text>')
    parts.append(f'<text x="{width - 10}" y="{axis_y + 16}" font-size="11" text-anchor="end">{esc(right)}</text>')
    parts.append(f'<text x="{(width + pad_l) / 2:.0f}" y="{axis_y + 26}" font-size="11" text-anchor="middle">{esc(label)}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="16" font-size="11" text-anchor="end">{esc(top)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def section(section_id: str, title: str, body: str, empty: str | None = None) -> str:
    """A report section; `empty` (why there is nothing to show) replaces the body when given."""
    content = f'<p class="empty">{esc(empty)}</p>' if empty else body
    return f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{content}</section>'


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], sections: Sequence[str]) -> str:
    links = "".join(f'<a href="#{esc(sid)}">{esc(name)}</a>' for sid, name in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{links}</nav>"
        f"<main>{''.join(sections)}</main></body></html>\n"
    )
