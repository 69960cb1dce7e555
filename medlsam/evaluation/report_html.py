"""``report.html`` of a ``medlsam-eval`` run, in its output folder.

One page (:mod:`medlsam.figures.page`): the per-organ table (the Markdown table's numbers),
the box plots, per case its scores and a row of thumbnails (the evaluation's overview with
reference outlines, then the inference figures) linking to the full figures, the cases that
failed or are missing with their reasons, and the settings, configuration and versions of the
evaluation and of the inference run it scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medlsam.evaluation.report import (
    DIGITS,
    EXCLUSIONS,
    footer_text,
    organ_cells,
    table_head,
)
from medlsam.figures import page
from medlsam.figures.colors import organ_colors
from medlsam.records import read_record, record_files

REPORT = "report.html"


def organ_table(summary: dict, colors: Mapping[int, str]) -> str:
    """Per organ: n, DSC, NSD, HD95, box IoU (mean ± std) and the exclusion counts."""
    head = table_head(summary.get("settings", {}))
    rows = []
    for cid, e in summary["classes"].items():
        n, *cells = organ_cells(e)
        rows.append(
            [page.esc(cid), page.swatch(colors.get(int(cid), "#888")) + page.esc(e["name"]), n]
            + [page.esc(cell) for cell in cells]
        )
    mean = summary.get("mean", {})
    rows.append(
        ["", "<b>mean over organs</b>", ""]
        + [
            "–" if mean.get(m) is None else f"<b>{mean[m]:.{DIGITS[m]}f}</b>"
            for m in ("dsc", "nsd", "hd95", "iou")
        ]
        + [str(summary["excluded"].get(k, "")) for k in EXCLUSIONS]
    )
    return page.table(head, rows, numeric=tuple(n for n in range(len(head)) if n != 1))


def _case_scores(scores: Sequence[Any], case: str, names: Mapping[int, str]) -> str:
    cells = []
    for s in scores:
        if s.case != case or s.status == "absent":
            continue
        dsc = "–" if math.isnan(s.dsc) else f"{s.dsc:.2f}"
        cells.append(f"{page.esc(names.get(s.class_id, s.class_id))} {dsc}")
    return "DSC: " + ", ".join(cells) if cells else ""


def case_rows(
    out: Path,
    scores,
    cases: Mapping[str, Mapping],
    figures: Mapping[str, dict],
    names: Mapping[int, str],
) -> str:
    """Per scored case: its DSC per organ and its thumbnails."""
    parts = []
    for case, files in cases.items():
        fig = figures.get(case, {})
        thumbs = []
        if fig.get("figure"):
            thumbs.append((str(fig["figure"]), "overview with reference"))
        thumbs += [(str(p), p.stem) for p in files.get("inference_figures") or [] if p.is_file()]
        note = (
            f'<p class="muted">no overview: {page.esc(fig["error"])}</p>'
            if fig.get("error")
            else ""
        )
        row = page.thumbnails(thumbs, out) if thumbs else '<p class="muted">no figures</p>'
        parts.append(
            f'<div class="case"><b>{page.esc(case)}</b> <span class="muted">'
            f"{_case_scores(scores, case, names)}</span>{note}{row}</div>"
        )
    return "\n".join(parts) or "<p>no case scored</p>"


def failed_table(summary: dict) -> str:
    """Cases not scored, failed at inference, or missing on either side, with the reason."""
    rows = [[c, "not scored", r] for c, r in (summary.get("failed_cases") or {}).items()]
    rows += [
        [c, "failed at inference", r] for c, r in (summary.get("inference_failed") or {}).items()
    ]
    lost = set(summary.get("inference_failed") or {})
    rows += [
        [c, "no prediction", "a label but no prediction file"]
        for c in summary.get("missing_predictions", [])
        if c not in lost
    ]
    rows += [
        [c, "no label", "a prediction but no reference label"]
        for c in summary.get("missing_labels", [])
    ]
    if not rows:
        return "<p>none</p>"
    return page.table(
        ["case", "what", "reason"],
        [[page.esc(v) for v in r] for r in rows],
        row_class=["failed"] * len(rows),
    )


def prediction_dirs(summary: dict) -> list[Path]:
    """The prediction folder(s) an evaluation scored."""
    preds = summary.get("settings", {}).get("predictions")
    return [Path(p) for p in (preds if isinstance(preds, list) else [preds] if preds else [])]


def run_colors(summary: dict) -> dict[int, str]:
    """Organ colours of the evaluated run: by the inference run's ``fg_class`` order where its
    ``run.json`` is found (so they match its figures), else by the scored classes' order."""
    classes = [int(c) for c in summary["classes"]]
    header = inference_header(prediction_dirs(summary))
    order = [int(c) for c in (header.get("settings") or {}).get("fg_class") or []]
    return organ_colors(order + [c for c in classes if c not in order])


def inference_header(pred_dirs: Sequence[Path]) -> dict:
    """The header of the first inference run record found in the prediction folders."""
    for folder in pred_dirs:
        for path in record_files(Path(folder)):
            doc = read_record(path)
            if doc is not None:
                return {k: v for k, v in doc.items() if k != "cases"}
    return {}


def write_eval_report(
    out: Path,
    result: Any,
    plots: Sequence[Path],
    cases: Mapping[str, Mapping],
    figures: Mapping[str, dict],
    versions: Mapping[str, str],
) -> Path:
    """Write ``out/report.html`` for an :class:`medlsam.evaluate.EvalResult`."""
    summary = result.summary
    colors = run_colors(summary)
    names = {int(c): e["name"] for c, e in summary["classes"].items()}
    pred_dirs = prediction_dirs(summary)
    header = inference_header(pred_dirs)
    intro = (
        '<p class="banner">UPPER BOUND: boxes from the reference labels, not MedLSAM</p>'
        if header.get("upper_bound_baseline")
        else ""
    )
    intro += (
        f'<p class="muted">{summary.get("n_cases", 0)} case(s) scored from '
        f'{page.esc(", ".join(map(str, pred_dirs)))}.</p><p class="note">'
        f"{page.esc(footer_text(summary))}</p>"
    )
    sections = [
        ("Per organ", organ_table(summary, colors)),
        ("Box plots", page.images(list(plots), out) if plots else "<p>no figures (--no-png)</p>"),
        ("Cases", case_rows(out, result.scores, cases, figures, names)),
        ("Failed or missing cases", failed_table(summary)),
        (
            "Evaluation settings and versions",
            "<h3>Settings</h3>"
            + page.key_values(summary.get("settings", {}))
            + "<h3>Versions</h3>"
            + page.key_values(dict(versions)),
        ),
    ]
    if header:
        sections.append(("Inference run (configuration and versions)", page.run_sections(header)))
    name = pred_dirs[0].name if pred_dirs else out.name
    return page.write_page(out / REPORT, f"medlsam-eval: {name}", sections, intro)
