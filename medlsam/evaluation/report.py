"""What ``medlsam-eval`` shows and writes: the Markdown table, ``summary.json``,
``per_case.csv``, the published text files, a box plot, and side-by-side run comparisons.

Files written to the output folder:

* ``summary.json``: :func:`~.folder.summarize` plus settings, missing cases and counts
  (``null`` where there is no value);
* ``per_case.csv``: one row per case and organ (status, voxel counts, DSC, NSD, both HD95
  definitions, IoU; blank where undefined), plus one row per case missing on either side;
* ``dsc.txt`` / ``hd95.txt``: the published format (method.md 5.5), one line per class,
  ``DSC for class <k>: <mean:.3f> +- <std:.3f>`` (fractions, population std; ``nan`` when an
  organ has no value);
* the figures and ``report.html`` (:mod:`medlsam.evaluation.figures`,
  :mod:`medlsam.evaluation.report_html`).
"""

from __future__ import annotations

import csv
import io as _stringio
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medlsam.errors import InputError
from medlsam.io import atomic_write_text

_LABELS = {"dsc": "DSC", "nsd": "NSD", "hd95": "HD95 (mm)", "iou": "box IoU"}
DIGITS = {"dsc": 3, "nsd": 3, "hd95": 2, "iou": 3}
CSV_FIELDS = (
    "case",
    "class_id",
    "name",
    "status",
    "gt_voxels",
    "pred_voxels",
    "dsc",
    "nsd",
    "hd95_monai",
    "hd95_pooled",
    "iou",
)


def mean_std(stats: dict | None, metric: str, n_expected: int | None = None) -> str:
    if not stats or not stats.get("n"):
        return "–"
    d = DIGITS[metric]
    text = f"{stats['mean']:.{d}f} ± {stats['std']:.{d}f}"
    if n_expected is not None and stats["n"] != n_expected:
        text += f" (n={stats['n']})"
    return text


def _num(value: float | None, metric: str) -> str:
    return "–" if value is None else f"{value:.{DIGITS[metric]}f}"


#: the exclusion counts of an organ, in table order (keys of a summary's class entry)
EXCLUSIONS = ("absent", "empty_prediction", "missing_prediction", "false_positive", "hd95_missing")


def table_head(settings: Mapping[str, Any]) -> list[str]:
    """The per-organ table's columns (Markdown and ``report.html``)."""
    return [
        "id",
        "organ",
        "n",
        "DSC",
        f"NSD@{settings.get('tolerance_mm', 2.0):g}mm",
        f"HD95 ({settings.get('hd95_definition', 'monai')}, mm)",
        "box IoU",
        "absent",
        "empty pred",
        "no pred file",
        "false pos",
        "HD95 missing",
    ]


def organ_cells(entry: Mapping[str, Any]) -> list[str]:
    """One organ's cells after its id and name: n, the four metrics, the exclusion counts."""
    n = entry["n"]
    return [
        str(n),
        mean_std(entry["dsc"], "dsc", n),
        mean_std(entry["nsd"], "nsd", n),
        mean_std(entry["hd95"], "hd95", n),
        mean_std(entry["iou"], "iou"),
    ] + [str(entry.get(k, 0)) for k in EXCLUSIONS]


def markdown_table(summary: dict) -> str:
    """The per-organ table (mean ± population std) with exclusion counts and a footer."""
    settings = summary.get("settings", {})
    published = settings.get("averages") == "published"
    head = table_head(settings)
    if published:
        head.append("dropped")
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---:", "---", "---:"] + ["---"] * 4 + ["---:"] * (len(head) - 7)) + "|",
    ]
    for cid, e in summary["classes"].items():
        row = [cid, e["name"], *organ_cells(e)]
        if published:
            row.append(str(e["dropped"]))
        lines.append("| " + " | ".join(row) + " |")
    mean, mstd, n_org = summary["mean"], summary.get("mean_std", {}), summary.get("n_organs", {})
    ex = summary["excluded"]
    cells = []
    for metric in ("dsc", "nsd", "hd95", "iou"):
        if mean.get(metric) is None:
            cells.append("–")
            continue
        d = DIGITS[metric]
        cells.append(
            f"**{mean[metric]:.{d}f}** ± {mstd.get(metric, 0.0):.{d}f} ({n_org.get(metric)} organs)"
        )
    total = [
        "",
        "**mean over organs**",
        "",
        *cells,
        str(ex["absent"]),
        str(ex["empty_prediction"]),
        str(ex.get("missing_prediction", 0)),
        str(ex["false_positive"]),
        str(ex["hd95_missing"]),
    ]
    if published:
        total.append(str(ex["dropped"]))
    lines.append("| " + " | ".join(total) + " |")
    lines.append("")
    lines.append(footer_text(summary))
    return "\n".join(lines)


def footer_text(summary: dict) -> str:
    settings = summary.get("settings", {})
    miss_p, miss_l = summary.get("missing_predictions", []), summary.get("missing_labels", [])

    def shown(names: list[str]) -> str:
        return (
            ""
            if not names
            else " (" + ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") + ")"
        )

    scored = (
        "scored as empty predictions: DSC 0, column 'no pred file'"
        if settings.get("missing_as_empty", True)
        else "NOT scored (--skip-missing): averages biased upward"
    )
    text = (
        f"{summary.get('n_cases', 0)} case(s) scored; labels without prediction: {len(miss_p)}"
        f"{shown(miss_p)} ({scored}); predictions without label: {len(miss_l)}{shown(miss_l)}.\n"
    )
    if settings.get("averages") == "published":
        text += (
            "Averages: PUBLISHED (organ/cases without HD95 dropped from every average; "
            "biased upward, for comparison with the paper only)."
        )
    else:
        text += (
            "Averages: an empty prediction counts DSC 0 and NSD 0 (HD95 missing); a "
            "prediction of an organ absent from the label counts DSC 0 (false pos); organs "
            "absent from both are excluded (absent). Std: population (ddof 0)."
        )
    return text


def per_case_csv(scores: Sequence[Any], summary: dict, class_names: Mapping[int, str]) -> str:
    """``per_case.csv`` as text (see the module docstring).

    Args:
        scores: :class:`medlsam.evaluation.case.OrganScore` records.
        summary: :func:`~.folder.summarize` output with the missing-case lists.
        class_names: ``{id: name}``.
    """
    buffer = _stringio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)

    def fmt(value: float) -> str:
        return "" if math.isnan(value) else f"{value:.6g}"

    for s in scores:
        writer.writerow(
            [
                s.case,
                s.class_id,
                class_names.get(s.class_id, ""),
                s.status,
                s.gt_voxels,
                s.pred_voxels,
                fmt(s.dsc),
                fmt(s.nsd),
                fmt(s.hd95_monai),
                fmt(s.hd95_pooled),
                fmt(s.iou),
            ]
        )
    if not summary.get("settings", {}).get("missing_as_empty", True):
        for case in summary.get("missing_predictions", []):
            writer.writerow([case, "", "", "missing_prediction"] + [""] * 7)
    for case in summary.get("missing_labels", []):
        writer.writerow([case, "", "", "missing_label"] + [""] * 7)
    return buffer.getvalue()


def published_text(summary: dict, metric: str) -> str:
    """``dsc.txt``/``hd95.txt`` lines in the published format (method.md 5.5)."""
    word = {"dsc": "DSC", "hd95": "HD95", "nsd": "NSD", "iou": "IOU"}[metric]
    lines = []
    for cid, e in summary["classes"].items():
        stats = e[metric]
        mean = math.nan if stats["mean"] is None else stats["mean"]
        std = math.nan if stats["std"] is None else stats["std"]
        lines.append(f"{word} for class {cid}: {mean:.3f} +- {std:.3f}")
    return "\n".join(lines) + "\n"


def write_outputs(
    out_dir: str | Path, scores: Sequence[Any], summary: dict, class_names: Mapping[int, str]
) -> dict[str, Path]:
    """Write every output file into ``out_dir`` (arguments as :func:`per_case_csv`).

    Returns ``{kind: path}`` for ``summary``, ``per_case``, ``dsc_txt`` and ``hd95_txt``.
    """
    out = Path(out_dir)
    written = {
        "summary": atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n"),
        "per_case": atomic_write_text(
            out / "per_case.csv", per_case_csv(scores, summary, class_names)
        ),
        "dsc_txt": atomic_write_text(out / "dsc.txt", published_text(summary, "dsc")),
        "hd95_txt": atomic_write_text(out / "hd95.txt", published_text(summary, "hd95")),
    }
    return written


# --------------------------------------------------------------------------------------------
# comparison


def load_summary(path: str | Path) -> dict:
    """A run's ``summary.json`` (``path`` is the file or its folder)."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{path}: no summary.json here; run medlsam-eval on it first")
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(summary.get("classes"), dict):
            raise ValueError("no 'classes' mapping")
    except (ValueError, AttributeError) as err:
        raise InputError(f"{file}: not a medlsam-eval summary ({err})") from err
    return summary


def run_names(paths: Sequence[Path]) -> list[str]:
    names = [p.name if p.name != "summary.json" else p.parent.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{n}" for p, n in zip(paths, names, strict=True)]
    if len(set(names)) < len(names):
        names = [f"{n} #{i + 1}" for i, n in enumerate(names)]
    return names


def compare(
    dirs: Sequence[str | Path], metrics: Sequence[str] = ("dsc", "nsd", "hd95", "iou")
) -> str:
    """A Markdown table of several runs side by side: per organ, mean ± std of each metric.

    Args:
        dirs: output folders of ``medlsam-eval`` (or their ``summary.json`` files).
        metrics: which metrics to show; a metric no run has is left out.
    """
    if len(dirs) < 1:
        raise InputError("--compare needs at least one folder with a summary.json")
    paths = [Path(d) for d in dirs]
    summaries = [load_summary(p) for p in paths]
    names = run_names(paths)
    shown = [m for m in metrics if any(s["mean"].get(m) is not None for s in summaries)]
    ids = sorted({cid for s in summaries for cid in s["classes"]}, key=lambda c: (len(c), c))
    head = ["id", "organ"] + [f"{_LABELS[m]} {n}" for m in shown for n in names]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|" + "---|" * (len(head) - 2)]
    for cid in ids:
        organ = next(s["classes"][cid]["name"] for s in summaries if cid in s["classes"])
        row = [cid, organ]
        for m in shown:
            for s in summaries:
                e = s["classes"].get(cid)
                row.append("not scored" if e is None else mean_std(e[m], m, e["n"]))
        lines.append("| " + " | ".join(row) + " |")
    row = ["", "**mean over organs**"]
    for m in shown:
        row += [_num(s["mean"].get(m), m) for s in summaries]
    lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for name, path, s in zip(names, paths, summaries, strict=True):
        st = s.get("settings", {})
        lines.append(
            f"- {name}: {path} ({s.get('n_cases', '?')} cases, "
            f"HD95 {st.get('hd95_definition', '?')}, "
            f"NSD@{st.get('tolerance_mm', '?')}mm, {st.get('averages', '?')} averages, "
            f"{len(s.get('missing_predictions', []))} missing predictions)"
        )
    keys = ("hd95_definition", "tolerance_mm", "averages")
    if len({tuple(s.get("settings", {}).get(k) for k in keys) for s in summaries}) > 1:
        lines.append(
            "- WARNING: the runs were evaluated with different settings; compare with care."
        )
    return "\n".join(lines)
