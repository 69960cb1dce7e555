"""The figures ``medlsam-eval`` writes (drawn by :mod:`medlsam.figures`).

* ``boxplot_<metric>.png`` for DSC, NSD, HD95 and box IoU: per organ, the values that enter
  the averages (the table's policy), organ names with ``n``, the organ's colour;
* ``figures/<case>.png``: the case overview (:mod:`medlsam.figures.overview`) with the
  reference outlines over the predicted masks and boxes, where the case's CT is known (the
  config's query image, else the image named in the prediction folder's ``run.json``);
* ``compare_<metric>.png`` (``--compare``): several evaluated runs side by side per organ,
  from their ``per_case.csv``.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medlsam.errors import InputError, MedlsamError
from medlsam.evaluation.case import align_to_label, read_boxes_json
from medlsam.figures.colors import organ_colors
from medlsam.figures.overview import OverviewInput, render_overview
from medlsam.figures.plots import boxplot_figure, compare_figure, save_figure
from medlsam.io import read_image, read_label, same_grid

#: metric -> (axis label, plot title word, axis range or None, per_case.csv column)
PLOTS = {
    "dsc": ("Dice similarity coefficient", "DSC", (0.0, 1.02), "dsc"),
    "nsd": ("normalized surface Dice", "NSD", (0.0, 1.02), "nsd"),
    "hd95": ("HD95 (mm)", "HD95", None, None),
    "iou": ("3D box IoU", "box IoU", (0.0, 1.02), "iou"),
}
FIGURES = "figures"
#: statuses whose values enter the honest averages (a missing prediction file scores as empty)
AVERAGED = {"ok", "empty_prediction", "missing_prediction", "false_positive"}


def metric_values(scores: Sequence[Any], summary: dict, metric: str) -> dict[str, list[float]]:
    """Per organ id (str), the values of ``metric`` that enter the averages."""
    settings = summary.get("settings", {})
    averaged = {"ok"} if settings.get("averages") == "published" else AVERAGED
    hd = "hd95_pooled" if settings.get("hd95_definition") == "pooled" else "hd95_monai"
    attr = {"dsc": "dsc", "nsd": "nsd", "hd95": hd, "iou": "iou"}[metric]
    out: dict[str, list[float]] = {cid: [] for cid in summary["classes"]}
    for s in scores:
        cid = str(s.class_id)
        value = getattr(s, attr)
        if cid in out and s.status in averaged and not math.isnan(value):
            out[cid].append(float(value))
    return out


def write_boxplots(
    out_dir: Path, scores: Sequence[Any], summary: dict, colors: Mapping[int, str]
) -> dict[str, Path]:
    """Write one box plot per metric that has values; ``{"boxplot_<metric>": path}``."""
    written = {}
    n_cases = summary.get("n_cases", 0)
    for metric, (ylabel, word, y_range, _) in PLOTS.items():
        values = metric_values(scores, summary, metric)
        if not any(values.values()):
            continue
        groups = [
            (summary["classes"][cid]["name"], colors.get(int(cid), "#888888"), vals)
            for cid, vals in values.items()
        ]
        title = f"{word} per organ ({n_cases} case{'s' * (n_cases != 1)})"
        if metric == "hd95":
            title += f", {summary.get('settings', {}).get('hd95_definition', 'monai')} definition"
        figure = boxplot_figure(groups, ylabel, title, y_range)
        written[f"boxplot_{metric}"] = save_figure(figure, out_dir / f"boxplot_{metric}.png")
    return written


def _boxes_on(path: Path | None, matrix, offset) -> dict[int, list]:
    if path is None:
        return {}
    out: dict[int, list] = {}
    for cid, entry in read_boxes_json(path).items():
        for box in (entry or {}).get("boxes") or []:
            corners = [[float(v) for v in box["min"]], [float(v) for v in box["max"]]]
            mapped = [
                [sum(matrix[a][b] * c[b] for b in range(3)) + offset[a] for a in range(3)]
                for c in corners
            ]
            lo = tuple(int(min(m[a] for m in mapped)) for a in range(3))
            hi = tuple(int(max(m[a] for m in mapped)) for a in range(3))
            out.setdefault(int(cid), []).append((lo, hi))
    return out


def case_overview(
    case: str,
    files: Mapping[str, Path | None],
    classes: Sequence[int],
    names: Mapping[int, str],
    out_path: Path,
    colors: Mapping[int, str] | None = None,
) -> Path:
    """Write the overview of one scored case with reference outlines.

    ``files`` names the ``image``, ``prediction``, ``label`` (reference) and ``boxes`` files.

    Raises:
        InputError: a file cannot be read or lies on another grid.
    """
    if files.get("image") is None:
        raise InputError(
            f"{case}: no CT image known (give --config, or a prediction folder with its run.json)"
        )
    if files.get("prediction") is None:
        raise InputError(f"{case}: no prediction file (scored as empty)")
    image = read_image(files["image"], check_ct=False)
    pred = read_label(files["prediction"])
    ref = read_label(files["label"])
    data, matrix, offset = (
        (pred.data, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])
        if same_grid(pred, image)
        else align_to_label(pred, image)
    )
    reference = ref.data if same_grid(ref, image) else align_to_label(ref, image)[0]
    overview = OverviewInput(
        image.data,
        image.affine,
        data,
        _boxes_on(files.get("boxes"), matrix, offset),
        [int(c) for c in classes],
        names,
        dict(colors) if colors is not None else organ_colors(classes),
        reference,
    )
    subtitle = (
        f"{'x'.join(map(str, image.shape))} voxels, "
        f"{'x'.join(f'{s:.2f}' for s in image.spacing)} mm, {image.axcodes}; "
        "filled: prediction, light line: reference"
    )
    return render_overview(overview, f"{case}  ·  prediction against reference", subtitle).save(
        out_path
    )


def write_case_figures(
    out_dir: Path, cases: Mapping[str, Mapping[str, Path | None]], classes, names, colors=None
) -> dict[str, dict]:
    """Overviews of every case; per case ``{"figure": path, "seconds": s}`` or ``{"error"}``."""
    done: dict[str, dict] = {}
    for case, files in cases.items():
        began = time.perf_counter()
        try:
            target = out_dir / FIGURES / f"{case}.png"
            path = case_overview(case, files, classes, names, target, colors)
        except (MedlsamError, KeyError, TypeError, ValueError) as err:
            done[case] = {"error": str(err)}
            continue
        done[case] = {"figure": path, "seconds": round(time.perf_counter() - began, 4)}
    return done


def read_per_case(folder: Path) -> list[dict[str, str]]:
    """Rows of an evaluated run's ``per_case.csv``."""
    path = folder / "per_case.csv" if folder.is_dir() else folder.parent / "per_case.csv"
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except OSError as err:
        raise InputError(
            f"{path}: cannot read ({err.strerror or err}); run medlsam-eval first"
        ) from err


def write_compare(
    out_dir: Path, folders: Sequence[Path], names: Sequence[str], summaries: Sequence[dict]
) -> dict[str, Path]:
    """Box plots of several runs side by side per organ (DSC, NSD, box IoU)."""
    tables = [read_per_case(Path(f)) for f in folders]
    ids = sorted({cid for s in summaries for cid in s["classes"]}, key=lambda c: (len(c), c))
    organ = {
        cid: next(s["classes"][cid]["name"] for s in summaries if cid in s["classes"])
        for cid in ids
    }
    written = {}
    for metric, (ylabel, word, y_range, column) in PLOTS.items():
        if column is None:
            continue
        runs = []
        for name, rows, summary in zip(names, tables, summaries, strict=True):
            averaged = (
                {"ok"} if summary.get("settings", {}).get("averages") == "published" else AVERAGED
            )
            per = {
                cid: [
                    float(r[column])
                    for r in rows
                    if r["class_id"] == cid
                    and r["status"] in averaged
                    and r[column] not in ("", None)
                ]
                for cid in ids
            }
            runs.append((name, [per[cid] for cid in ids]))
        if not any(v for _, values in runs for v in values):
            continue
        figure = compare_figure(
            [organ[c] for c in ids], runs, ylabel, f"{word} per organ: {len(runs)} runs", y_range
        )
        written[f"compare_{metric}"] = save_figure(figure, Path(out_dir) / f"compare_{metric}.png")
    return written
