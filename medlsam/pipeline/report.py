"""``report.html`` of a ``medlsam-infer`` run, in its segmentation folder.

Built from the run records of the folder (``run.json`` and any shard records), so every shard
that finishes can rewrite it with all the cases done so far. It shows the run's configuration
and versions, per organ how many cases have a mask and their predicted volumes (no score:
inference never reads a reference), per case a row of thumbnails linking to its figures, and
the failed cases with their reasons (:mod:`medlsam.figures.page`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medlsam.figures import page
from medlsam.figures.colors import organ_colors
from medlsam.records import read_record, record_files

REPORT = "report.html"


def _records(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The header of the folder's main record and the case entries of all its records."""
    header: dict[str, Any] = {}
    cases: dict[str, dict[str, Any]] = {}
    for path in reversed(record_files(folder)):  # run.json last: its entries win
        doc = read_record(path)
        if doc is None:
            continue
        header = {k: v for k, v in doc.items() if k != "cases"}
        cases.update(doc["cases"])
    return header, cases


def organ_rows(cases: Mapping[str, Mapping], classes, names, colors) -> list[list[str]]:
    """Per organ: cases with a mask, and the mean, spread and range of the predicted volume."""
    rows = []
    ok = [e for e in cases.values() if e.get("status") == "ok"]
    for c in classes:
        ml = np.array(
            [e["organs"][str(c)]["ml"] for e in ok if str(c) in (e.get("organs") or {})], float
        )
        found = ml[ml > 0]
        stats = (
            [f"{found.mean():.1f} ± {found.std():.1f}", f"{found.min():.1f} – {found.max():.1f}"]
            if found.size
            else ["–", "–"]
        )
        rows.append(
            [
                str(c),
                page.swatch(colors[c]) + page.esc(names.get(c, f"class_{c}")),
                f"{found.size} / {ml.size}",
                *stats,
            ]
        )
    return rows


def _case_rows(folder: Path, cases: Mapping[str, Mapping]) -> str:
    parts = []
    for case, entry in cases.items():
        if entry.get("status") != "ok":
            continue
        pngs = [folder / p for p in (entry.get("outputs") or {}).get("png", [])]
        seconds = entry.get("seconds") or {}
        fig = seconds.get("figures")
        info = f"{seconds.get('total', 0):.1f} s" + (f", figures {fig:.2f} s" if fig else "")
        thumbs = (
            page.thumbnails([(str(p), p.stem) for p in pngs if p.is_file()], folder)
            if pngs
            else '<p class="muted">no figures (--no-png)</p>'
        )
        head = f'<b>{page.esc(case)}</b> <span class="muted">{info}</span>'
        parts.append(f'<div class="case">{head}{thumbs}</div>')
    return "\n".join(parts) or '<p class="muted">no case finished yet</p>'


def _failed(cases: Mapping[str, Mapping]) -> str:
    rows = [
        [page.esc(c), page.esc(e.get("status")), page.esc(e.get("error"))]
        for c, e in cases.items()
        if e.get("status") != "ok"
    ]
    if not rows:
        return "<p>none</p>"
    return page.table(["case", "status", "reason"], rows, row_class=["failed"] * len(rows))


def write_infer_report(folder: Path) -> Path | None:
    """Write ``folder/report.html`` from the folder's run records (None when there is none)."""
    folder = Path(folder)
    header, cases = _records(folder)
    if not header:
        return None
    data = (header.get("config") or {}).get("data") or {}
    classes = [int(c) for c in (header.get("settings") or {}).get("fg_class", [])]
    names = {int(c): str(n) for c, n in (data.get("class_names") or {}).items()}
    colors = organ_colors(classes)
    n_ok = sum(e.get("status") == "ok" for e in cases.values())
    intro = (
        '<p class="banner">UPPER BOUND: boxes from the reference labels, not MedLSAM</p>'
        if header.get("upper_bound_baseline")
        else ""
    ) + (
        f'<p class="muted">{n_ok} of {len(cases)} case(s) done; folder {page.esc(folder)}. '
        "Inference never reads reference labels: this page has no scores (run medlsam-eval for "
        "them).</p>"
    )
    organ_table = page.table(
        ["id", "organ", "cases with a mask", "predicted volume ml (mean ± std)", "range ml"],
        organ_rows(cases, classes, names, colors),
        numeric=(0, 2, 3, 4),
    )
    sections = [
        ("Organs", organ_table),
        ("Cases", _case_rows(folder, cases)),
        ("Failed cases", _failed(cases)),
        ("Configuration and versions", page.run_sections(header)),
    ]
    return page.write_page(folder / REPORT, f"medlsam-infer: {folder.name}", sections, intro)
