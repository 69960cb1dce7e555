"""report.html as a person sees it: rendered by headless Chromium, every image loaded, every
organ in the table, failed cases listed.

A small run (two queries and one unreadable query, classic backend, true boxes) is inferred
and evaluated once; Chromium then opens both reports. Without a Chromium on the machine
(Debian's ``chromium`` package) the browser tests skip, saying so.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from infer_helpers import FakeLocalizer, make_cohort
from PIL import Image

from medlsam.config import load_config
from medlsam.evaluation.folder import evaluate
from medlsam.io import read_path_list
from medlsam.pipeline.run import run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Appended to a copy of the page (in the same folder, so relative paths resolve; lazy loading
#: off, so the load event waits for every image): writes what it found into the DOM.
CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const broken = imgs.filter((img) => !(img.complete && img.naturalWidth > 0))
                     .map((img) => img.getAttribute("src"));
  const rows = [...document.querySelector("table").rows].map((r) => r.innerText);
  const out = document.createElement("pre");
  out.id = "medlsam-check";
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, rows: rows,
                                    text: document.body.innerText});
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium found (tried " + ", ".join(BROWSERS) + "): install Debian's chromium "
        "package to render report.html in tests"
    )


def _chromium(*args: str) -> str:
    command = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_page(report: Path) -> dict:
    """Open a copy of ``report`` with :data:`CHECK` in Chromium; what the page reported."""
    probe = report.with_name("_browser_check.html")
    text = report.read_text(encoding="utf-8").replace(' loading="lazy"', "")
    probe.write_text(text.replace("</body>", CHECK + "</body>"))
    try:
        dom = _chromium("--virtual-time-budget=20000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    found = re.search(r'<pre id="medlsam-check">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run: " + dom[-500:]
    return json.loads(html.unescape(found.group(1)))


def screenshot(report: Path, out: Path) -> np.ndarray:
    _chromium(
        "--hide-scrollbars", "--window-size=1300,1600", f"--screenshot={out}", report.as_uri()
    )
    return np.asarray(Image.open(out).convert("RGB"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """An inferred and evaluated run: ``(seg folder, eval folder)``."""
    root = tmp_path_factory.mktemp("report_run")
    config, labels = make_cohort(root, n_queries=3, query_labels=True)
    (root / "query_2.nii.gz").write_bytes(b"not a NIfTI file")  # fails alone, with a reason
    cfg = load_config(config)
    report = run(cfg, "cpu", progress=False, localizer=FakeLocalizer(labels, [1, 2]))
    assert report.ok == ["query_0", "query_1"] and [c for c, _ in report.failed] == ["query_2"]
    seg = cfg.data.seg_save_path
    label_files = read_path_list(root / "query_label.txt")
    result = evaluate(
        seg,
        {f"query_{n}": p for n, p in enumerate(label_files)},
        classes=[1, 2],
        class_names={1: "liver", 2: "kidney_r"},
    )
    result.write(root / "eval")
    return seg, root / "eval"


def test_eval_report_renders_with_every_image_and_organ(finished_run, tmp_path):
    _, out = finished_run
    page = out / "report.html"
    found = check_page(page)
    assert found["broken"] == []
    # 4 box plots + per case (2): the overview with reference + inference overview + 2 organs
    assert found["images"] == 4 + 2 * 4
    organs = [row.split("\t")[1].strip() for row in found["rows"][1:-1]]
    assert organs == ["liver", "kidney_r"]
    assert "query_2" in found["text"] and "failed at inference" in found["text"]
    assert "https://" not in page.read_text() and "<script" not in page.read_text()
    shot = screenshot(page, tmp_path / "eval.png")
    assert shot.shape[:2] == (1600, 1300) and shot.std() > 10  # a drawn page, not a blank one


def test_infer_report_renders_without_scores(finished_run, tmp_path):
    seg, _ = finished_run
    page = seg / "report.html"
    found = check_page(page)
    assert found["broken"] == [] and found["images"] == 2 * 3  # overview + 2 organs, 2 cases
    organs = [row.split("\t")[1].strip() for row in found["rows"][1:]]
    assert organs == ["liver", "kidney_r"]
    assert "DSC" not in found["text"] and "query_2" in found["text"]
    assert "not a NIfTI" in found["text"] or "query_2.nii.gz" in found["text"]
    shot = screenshot(page, tmp_path / "infer.png")
    assert shot.std() > 10


def test_evaluation_colours_follow_the_inference_run(finished_run):
    from medlsam.evaluation.report_html import run_colors
    from medlsam.figures.colors import organ_colors

    seg, out = finished_run
    labels = {f"query_{n}": out.parent / f"query_{n}_seg.nii.gz" for n in range(2)}
    result = evaluate(seg, labels, classes=[2, 1])  # scored in another order than fg_class
    assert list(result.summary["classes"]) == ["2", "1"]
    assert run_colors(result.summary) == organ_colors([1, 2])  # as in the inference figures
