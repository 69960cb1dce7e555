"""The HTML page of a run's report: one self-contained file (inline style, no script, nothing
fetched from the internet) whose images are PNG files referenced by relative paths, so the
folder can be moved, zipped or served as it is."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medlsam.io import atomic_write_text

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 24px; color: #1a1a1a; max-width: 1400px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h3 { font-size: 1em; margin: 1em 0 0.3em; }
h2 { font-size: 1.2em; margin-top: 1.6em;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.muted { color: #666; font-size: 0.9em; }
.banner { background: #aa0000; color: white; padding: 8px 12px; font-weight: bold; }
table { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
th, td { border: 1px solid #d8d8d8; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px;
  vertical-align: -0.1em; margin-right: 4px; border: 1px solid #0003; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 10px; }
.plots img { width: 100%; border: 1px solid #eee; }
.note { white-space: pre-line; color: #555; font-size: 0.85em; }
.case { margin: 10px 0 18px 0; }
.thumbs { display: flex; gap: 6px; overflow-x: auto; padding-bottom: 4px; }
.thumbs a { flex: none; text-decoration: none; color: #444; font-size: 0.75em; text-align: center; }
.thumbs img { height: 150px; display: block; border: 1px solid #ccc; background: #111; }
.failed td { color: #900; }
details pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 0.8em; }
"""


def esc(value: object) -> str:
    """Text for HTML (``None`` shows as an en dash)."""
    return "–" if value is None else html.escape(str(value), quote=True)


def rel_url(target: Path, folder: Path) -> str:
    """``target`` as a relative URL from ``folder`` (the page's folder)."""
    rel = os.path.relpath(Path(target).resolve(), Path(folder).resolve())
    return quote(Path(rel).as_posix())


def swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{esc(color)}"></span>'


def table(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Sequence[int] = (),
    row_class: Sequence[str] | None = None,
) -> str:
    """An HTML table; cells are already HTML; ``numeric`` columns align right."""
    out = ["<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for n, row in enumerate(rows):
        cls = f' class="{row_class[n]}"' if row_class and row_class[n] else ""
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        out.append(f"<tr{cls}>{cells}</tr>")
    return "\n".join(out) + "</tbody></table>"


def key_values(pairs: Mapping[str, object]) -> str:
    """A two-column table of names and values (no header row)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs.items())
    return f"<table><tbody>{rows}</tbody></table>"


def thumbnails(items: Sequence[tuple[str, str]], folder: Path) -> str:
    """A row of thumbnails of ``(png path, caption)``, each linking to the full figure."""
    cells = []
    for path, caption in items:
        url = rel_url(Path(path), folder)
        img = f'<img src="{url}" alt="{esc(caption)}" loading="lazy">'
        cells.append(f'<a href="{url}">{img}{esc(caption)}</a>')
    return '<div class="thumbs">' + "".join(cells) + "</div>"


def images(paths: Sequence[Path], folder: Path) -> str:
    """Full-width figures (the box plots), each linking to itself."""
    cells = [
        f'<a href="{rel_url(p, folder)}"><img src="{rel_url(p, folder)}" alt="{esc(p.stem)}"></a>'
        for p in paths
    ]
    return '<div class="plots">' + "".join(cells) + "</div>"


def json_block(title: str, doc: object) -> str:
    """A collapsed block showing ``doc`` as JSON."""
    text = json.dumps(doc, indent=2, default=str)
    return f"<details><summary>{esc(title)}</summary><pre>{esc(text)}</pre></details>"


def run_sections(header: Mapping[str, Any]) -> str:
    """Versions, models, settings and the full resolved config of a ``run.json`` header."""
    seg, loc = header.get("segmenter") or {}, header.get("localizer") or {}
    models = {
        "segmenter": seg.get("backend"),
        "segmenter checkpoint": seg.get("checkpoint"),
        "segmenter sha256": seg.get("checkpoint_sha256"),
        "MedLAM checkpoint": loc.get("checkpoint"),
        "MedLAM sha256": loc.get("checkpoint_sha256"),
        "device": header.get("device"),
        "config file": header.get("config_file"),
        "started": header.get("started"),
        "updated": header.get("updated"),
    }
    return (
        "<h3>Models and run</h3>"
        + key_values(models)
        + "<h3>Versions</h3>"
        + key_values(header.get("versions") or {})
        + "<h3>Settings the outputs depend on</h3>"
        + key_values(header.get("settings") or {})
        + json_block("full resolved configuration", header.get("config"))
    )


def write_page(
    path: Path, title: str, sections: Sequence[tuple[str, str]], intro: str = ""
) -> Path:
    """Write the page: ``sections`` are ``(heading, HTML body)`` pairs (empty heading: none)."""
    body = [f"<h1>{esc(title)}</h1>", intro]
    for heading, content in sections:
        if heading:
            body.append(f"<h2>{esc(heading)}</h2>")
        body.append(content)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    return atomic_write_text(path, page)
