"""HTML pieces of the report: escaping, tables, figures, notes, a small Markdown subset and the
page itself (inline CSS and a few lines of plain JavaScript that sort tables; nothing is loaded
from anywhere)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["esc", "fmt", "table", "figure", "note", "markdown", "details", "page", "anchor"]


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def fmt(value: Any) -> str:
    """A cell's text: 4 significant digits for floats, yes/no for booleans, ``—`` for none."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def _sort_key(value: Any) -> str | None:
    """The numeric value a sortable column sorts by (None: sort as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return repr(float(value))
    if isinstance(value, str):
        try:
            return repr(float(value))
        except ValueError:
            return None
    return None


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, sortable: bool = False,
          cls: str = "") -> str:
    """A table; ``sortable`` makes the column heads clickable (numbers sort numerically)."""
    classes = " ".join(c for c in (cls, "sortable" if sortable else "") if c)
    out = [f'<div class="scroll"><table class="{classes}">' if classes
           else '<div class="scroll"><table>']
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = []
        for v in row:
            key = _sort_key(v) if sortable else None
            attr = f' data-v="{esc(key)}"' if key is not None else ""
            cells.append(f"<td{attr}>{esc(fmt(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def figure(uri: str, caption: str) -> str:
    """An inline image (a ``data:`` URI) with its caption."""
    if not uri.startswith("data:image/"):
        raise ValueError("uri must be a data:image/ URI (the report loads nothing)")
    return (f'<figure><img src="{uri}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def details(summary: str, body_html: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body_html}</details>"


def anchor(name: str, taken: set[str]) -> str:
    """A unique id made of ``name``'s letters, digits and dashes (recorded in ``taken``)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "section"
    out, i = base, 2
    while out in taken:
        out, i = f"{base}-{i}", i + 1
    taken.add(out)
    return out


# --- Markdown: headings, pipe tables, lists, fenced code, paragraphs, `code` and **bold** -------
def _inline(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for p in parts:
        if len(p) >= 2 and p.startswith("`") and p.endswith("`"):
            out.append(f"<code>{esc(p[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", esc(p)))
    return "".join(out)


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]


def markdown(text: str, *, sortable_tables: bool = False) -> str:
    """HTML of the Markdown subset that the package's own files use (e.g. ``compare.md``)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre>" + esc("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
        elif s.startswith("#"):
            level = min(len(s) - len(s.lstrip("#")) + 2, 6)  # under the report's own headings
            out.append(f"<h{level}>{_inline(s.lstrip('#').strip())}</h{level}>")
            i += 1
        elif s.startswith("|") and i + 1 < len(lines) and re.fullmatch(
            r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?", lines[i + 1].strip()
        ):
            head = _cells(s)
            j = i + 2
            rows = []
            while j < len(lines) and lines[j].strip().startswith("|"):
                rows.append(_cells(lines[j]))
                j += 1
            out.append(table(head, rows, sortable=sortable_tables))
            i = j
        elif re.match(r"^\s*([-*]|\d+\.)\s+", line):
            items = []
            while i < len(lines) and re.match(r"^\s*([-*]|\d+\.)\s+", lines[i]):
                items.append(re.sub(r"^\s*([-*]|\d+\.)\s+", "", lines[i]))
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in items) + "</ul>")
        elif not s:
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(
                r"^\s*(#|\||```|[-*]\s|\d+\.\s)", lines[i]
            ):
                para.append(lines[i].strip())
                i += 1
            if not para:  # a lone table row without its separator line
                para, i = [s], i + 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9;line-height:1.45}
header{background:#1d3557;color:#fff;padding:1.2em 2em}header h1{margin:0 0 .3em;font-size:1.5em}
header p{margin:.2em 0;opacity:.9}nav a{color:#cfe3f5;margin-right:1em}
main{padding:1em 2em 3em}
section.run,section.sweep,section.comparison{background:#fff;border:1px solid #dde1e7;
border-radius:6px;padding:.6em 1.4em 1.2em;margin:1em 0;min-width:0}
.runs{display:grid;grid-template-columns:repeat(auto-fit,minmax(620px,1fr));gap:1em}
.runs>section.run{margin:0}
h2{border-bottom:2px solid #1d3557;padding-bottom:.2em}h3{margin-top:1.4em;color:#1d3557}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0}
th,td{border:1px solid #dde1e7;padding:.25em .6em;text-align:left;white-space:nowrap}
th{background:#eef1f5}tbody tr:nth-child(even){background:#fafbfc}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" ▲"}
table.sortable th[aria-sort=descending]::after{content:" ▼"}
.scroll{overflow-x:auto;max-width:100%}
figure{margin:.8em 0}figure img{max-width:100%;height:auto;border:1px solid #eef1f5}
figcaption{font-size:.85em;color:#555}
.note{color:#6b5d00;background:#fff8d6;border-left:4px solid #e5c100;padding:.3em .8em}
.bad{color:#a00}.good{color:#070}
pre{background:#f3f4f6;padding:.6em;overflow-x:auto;font-size:.85em}
details{margin:.5em 0}summary{cursor:pointer;color:#1d3557}
"""

# sorts a table.sortable by the clicked column: numbers (data-v) numerically and before the rest,
# which sorts as text
_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        if (!cell) { return ""; }
        var v = cell.getAttribute("data-v");
        return v === null ? cell.textContent : parseFloat(v);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = typeof x === "number", ny = typeof y === "number";
        if (nx !== ny) { return nx ? -1 : 1; }  // numbers first both ways, blanks last
        var c = nx ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def page(title: str, header_html: str, body_html: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<header>{header_html}</header>\n<main>{body_html}</main>\n"
        f"<script>{_JS}</script></body></html>\n"
    )
