"""One report, two renderings: Markdown (report.md) and a self-contained HTML page (report.html).

The report is built once as a list of blocks (headings, paragraphs, bullet lists, tables, images);
``to_markdown`` and ``to_html`` render the same blocks, so the two files never disagree. The HTML
embeds every figure as a base64 PNG and needs no other file (it opens from an MLflow artifact
view or an e-mail attachment). Inline markup in text: `code`, **bold**, _italic_.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

Formatter = Callable[[object], str]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;line-height:1.45;color:#1b1b1b}
h1{border-bottom:2px solid #ddd;padding-bottom:.2em}h2{border-bottom:1px solid #eee;
padding-bottom:.15em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}code{background:#f2f2f2;padding:0 .25em;
border-radius:3px}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
"""

_NUMERIC = re.compile(r"^[+\-−<>=~]?\s?[\d.]+(e[+-]?\d+)?%?$|^–$")


def _cell(v: object) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return str(v)


def inline_html(text: str) -> str:
    """Escape ``text`` and turn its inline Markdown (`code`, **bold**, _italic_) into HTML."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w/])_(?!_)(.+?)(?<!_)_(?![\w/])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


@dataclass
class Doc:
    """A report as blocks; see the module docstring."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", list(items)))

    def table(self, df: pd.DataFrame, fmt: dict[str, Formatter] | None = None,
              empty: str = "_(none)_") -> None:
        """A table whose cells are formatted once (``fmt``: column -> formatter)."""
        fmt = fmt or {}
        if df.empty:
            self.para(empty)
            return
        cells = pd.DataFrame({c: [fmt.get(c, _cell)(v) for v in df[c]] for c in df.columns})
        self.blocks.append(("table", cells))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("image", (Path(path), alt)))

    # --- renderings -----------------------------------------------------------------------

    def to_markdown(self) -> str:
        lines: list[str] = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "heading":
                level, text = payload  # type: ignore[misc]
                lines += ["#" * level + " " + text, ""]
            elif kind == "para":
                lines += [str(payload), ""]
            elif kind == "bullets":
                lines += [f"- {item}" for item in payload] + [""]  # type: ignore[union-attr]
            elif kind == "table":
                df: pd.DataFrame = payload  # type: ignore[assignment]
                lines.append("| " + " | ".join(map(str, df.columns)) + " |")
                lines.append("|" + "|".join("---" for _ in df.columns) + "|")
                for row in df.itertuples(index=False):
                    lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ")
                                                   for c in row) + " |")
                lines.append("")
            elif kind == "image":
                path, alt = payload  # type: ignore[misc]
                lines += [f"![{alt}]({path.name})", ""]
        return "\n".join(lines)

    def to_html(self) -> str:
        body: list[str] = [f"<h1>{inline_html(self.title)}</h1>"]
        for kind, payload in self.blocks:
            if kind == "heading":
                level, text = payload  # type: ignore[misc]
                body.append(f"<h{level}>{inline_html(text)}</h{level}>")
            elif kind == "para":
                body.append(f"<p>{inline_html(str(payload))}</p>")
            elif kind == "bullets":
                items = "".join(f"<li>{inline_html(i)}</li>" for i in payload)  # type: ignore
                body.append(f"<ul>{items}</ul>")
            elif kind == "table":
                df = payload  # type: ignore[assignment]
                head = "".join(f"<th>{inline_html(str(c))}</th>" for c in df.columns)
                rows = []
                for row in df.itertuples(index=False):
                    tds = "".join(
                        f'<td class="num">{inline_html(str(c))}</td>'
                        if _NUMERIC.match(str(c).strip()) else f"<td>{inline_html(str(c))}</td>"
                        for c in row)
                    rows.append(f"<tr>{tds}</tr>")
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
                            f"</tbody></table>")
            elif kind == "image":
                path, alt = payload  # type: ignore[misc]
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(alt)}" '
                            f'src="data:image/png;base64,{data}"></figure>')
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
                f"<body>\n" + "\n".join(body) + "\n</body></html>\n")
