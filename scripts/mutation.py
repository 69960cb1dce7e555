"""Mutation testing of medlsam's core, one module at a time, in bounded time (not part of CI).

    python scripts/mutation.py                       # every module below, coordinate chain first
    python scripts/mutation.py boxes preprocess      # some of them
    python scripts/mutation.py --list                # the modules and the tests that run for each

Each module runs in its own copy of the project under ``--workdir`` (default
``/tmp/medlsam-mutation/<module>``) with a ``[tool.mutmut]`` section naming that one module and
only the test files that exercise it; mutmut then runs, for each mutant, only the tests that
executed the mutated function. ``--max-children`` (default 2) bounds the cores, ``--budget``
(minutes, default 30) the wall time of one module: a module that runs out is reported as
interrupted, with what it finished. ``--again`` runs only the mutants the last run left alive
or did not reach, against today's tests, and merges the verdicts (after adding tests).

Survivors listed in ``scripts/mutation_equivalent.txt`` (``mutant name  # reason``) are
equivalent mutants: they change no behaviour, so no test can kill them. They are reported
apart and left out of the score. Mutant names are numbered within each function, so they go
stale when the function changes: each module's list carries a ``# checked <source> <digest>``
line (``--list`` prints the current digests), and a module whose source no longer has that
digest is reported with a warning until its equivalent mutants are checked again (their
diffs are in the JSON). The summary (one line per module, survivors with their diffs) is
printed and written to ``<workdir>/<module>.json``.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = ROOT / "scripts" / "mutation_equivalent.txt"

#: module name -> (source file, test files (or test ids) that exercise it). The coordinate chain
#: comes first. matching, prototypes and localizer run their hand-made tests (and test_localize's
#: fast ones) only: test_localize's tests that fit a MedLAM take minutes per surviving mutant
#: on two shared cores.
MODULES: dict[str, tuple[str, list[str]]] = {
    "volume": (
        "medlsam/volume.py",
        [
            "tests/test_golden_grid.py",
            "tests/test_golden_align.py",
            "tests/test_volume_checks.py",
            "tests/pipeline/test_golden_chain.py",
            "tests/test_io.py",
            "tests/test_geometry_real.py",
        ],
    ),
    "preprocess": (
        "medlsam/preprocess.py",
        [
            "tests/test_golden_grid.py",
            "tests/pipeline/test_golden_chain.py",
            "tests/segment/test_golden_prompts.py",
            "tests/test_golden_preprocess.py",
            "tests/test_golden_published.py",
            "tests/test_preprocess.py",
        ],
    ),
    "boxes": (
        "medlsam/boxes.py",
        [
            "tests/test_golden_boxes.py",
            "tests/test_golden_grid.py",
            "tests/pipeline/test_golden_chain.py",
            "tests/evaluation/test_box_eval.py",
        ],
    ),
    "assemble": (
        "medlsam/segment/assemble.py",
        [
            "tests/segment/test_golden_prompts.py",
            "tests/pipeline/test_golden_chain.py",
            "tests/segment/test_assemble.py",
        ],
    ),
    "segment_base": (
        "medlsam/segment/base.py",
        [
            "tests/segment/test_golden_prompts.py",
            "tests/segment/test_segmenter_stats.py",
            "tests/pipeline/test_golden_chain.py",
        ],
    ),
    "localizer": (
        "medlsam/localization/localizer.py",
        [
            "tests/localization/test_golden_localizer.py",
            "tests/pipeline/test_golden_chain.py",
            *(
                f"tests/localization/test_localize.py::{name}"
                for name in (
                    "test_refinement_recovers_a_pure_shift",
                    "test_shared_search_patches_recover_a_pure_shift_with_fewer_patches",
                    "test_more_rdr_steps_converge_on_the_target",
                    "test_rdr_steps_stop_once_no_point_moves",
                    "test_rdr_steps_must_be_positive",
                )
            ),
        ],
    ),
    "prototypes": (
        "medlsam/localization/prototypes.py",
        [
            "tests/localization/test_golden_prototypes.py",
            *(
                f"tests/localization/test_localize.py::{name}"
                for name in (
                    "test_extreme_points_hand_made",
                    "test_extreme_point_plane_on_y_is_ordered_x_then_z",
                    "test_split_points_hand_made",
                    "test_split_points_search_next_slice_of_whole_organ",
                    "test_split_points_empty_slab_reuses_previous_box",
                    "test_split_count",
                    "test_template_cubes_are_published",
                )
            ),
        ],
    ),
    "matching": (
        "medlsam/localization/matching.py",
        [
            "tests/localization/test_golden_matching.py",
            *(
                f"tests/localization/test_localize.py::{name}"
                for name in (
                    "test_fft_correlation_equals_convolution",
                    "test_argmax_offset_convention",
                    "test_crop_patches_zero_fills_outside",
                    "test_initial_centres_are_tissue_deterministic_and_terminate",
                )
            ),
        ],
    ),
    "metrics": ("medlsam/evaluation/metrics.py", ["tests/evaluation/test_metrics.py"]),
    "box_metrics": ("medlsam/evaluation/box_metrics.py", ["tests/evaluation/test_box_eval.py"]),
}
#: mutmut statuses: a mutant that made a test fail (or hang), and one that was not run at all
KILLED = ("killed", "timeout")
NOT_RUN = ("not checked", "skipped", "check was interrupted by user")
#: the modules that hold the coordinate chain (target: no surviving non-equivalent mutant)
COORDINATE_CHAIN = ("volume", "preprocess", "boxes", "assemble", "segment_base", "localizer")


def read_equivalent(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """``mutant name -> reason`` from the equivalent-mutant list (``name  # reason`` lines)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition("#")
        out[name.strip()] = reason.strip()
    return out


def read_checked(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """``source -> digest`` of the ``# checked <source> <digest>`` lines of the list."""
    if not path.is_file():
        return {}
    found = re.findall(r"^# checked (\S+) (\w+)\s*$", path.read_text(), flags=re.M)
    return dict(found)


def source_digest(source: str) -> str:
    """First 16 hex digits of the sha256 of a module's source as it is now."""
    return hashlib.sha256((ROOT / source).read_bytes()).hexdigest()[:16]


def mutmut_config(source: str, tests: list[str]) -> str:
    """The ``[tool.mutmut]`` section for one module."""
    quoted = ", ".join(f'"{t}"' for t in tests)
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["medlsam"]\n'
        f'only_mutate = ["{source}"]\n'
        f"pytest_add_cli_args_test_selection = [{quoted}]\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
    )


def prepare(workdir: Path, source: str, tests: list[str]) -> None:
    """A fresh copy of the package and tests with a one-module mutmut config."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "medlsam", workdir / "medlsam", ignore=ignore)
    shutil.copytree(ROOT / "tests", workdir / "tests", ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = re.split(r"\n\[tool\.mutmut\]\n", pyproject)[0]
    (workdir / "pyproject.toml").write_text(pyproject + mutmut_config(source, tests))
    shared = ROOT.parent / "shared"
    if (
        shared.is_dir()
    ):  # tests find the real CT data at <project>/../shared; mutmut runs in mutants/
        (workdir / "shared").symlink_to(shared)


def mutmut(workdir: Path, args: list[str], timeout: float | None = None) -> tuple[int, str]:
    """Run ``python -m mutmut ARGS`` in ``workdir``; on timeout stop it and all its workers."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # mutmut puts mutants/ first on the path itself
    proc = subprocess.Popen(
        [sys.executable, "-m", "mutmut", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout stops the workers too
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return -1, out or ""


def results(workdir: Path) -> dict[str, str]:
    """``mutant name -> status`` of every mutant that was run (killed ones included)."""
    _, text = mutmut(workdir, ["results", "--all", "true"])
    out = {}
    for line in text.splitlines():
        match = re.match(r"\s+(\S+): (.+)$", line)
        if match:
            out[match.group(1)] = match.group(2).strip()
    return out


def run_module(
    name: str, base: Path, max_children: int, budget_min: float, again: bool = False
) -> dict:
    """Mutate one module and run its tests; with ``again``, run only the mutants the last run
    did not kill (when the module's source is unchanged), on a fresh copy with today's tests."""
    source, tests = MODULES[name]
    workdir = base / name
    old: dict[str, str] = {}
    if again and (workdir / "mutants").is_dir() and (workdir / source).is_file():
        if filecmp.cmp(workdir / source, ROOT / source, shallow=False):
            old = last_status(workdir)
    names = sorted(k for k, v in old.items() if v not in KILLED)
    prepare(workdir, source, tests)
    began = time.monotonic()
    if old and not names:
        code, log = 0, "every mutant was killed in the last run\n"
    else:
        run_args = ["run", "--max-children", str(max_children), *names]
        code, log = mutmut(workdir, run_args, budget_min * 60)
    (workdir / "run.log").write_text(log)
    status = results(workdir)
    if old:  # the last run's verdicts, updated with this run's
        status = {**old, **{k: v for k, v in status.items() if k in names and v not in NOT_RUN}}
    (workdir / STATUS_FILE).write_text(json.dumps(status, indent=0, sort_keys=True))
    report = summarize(name, workdir, status)
    report.update(finished=code == 0, seconds=round(time.monotonic() - began, 1))
    return report


#: the verdict of every mutant after a module's last run, merged over ``--again`` runs (mutmut's
#: own records in a fresh copy hold only the mutants that copy ran)
STATUS_FILE = "status.json"


def last_status(workdir: Path) -> dict[str, str]:
    """``mutant name -> status`` after the last run in ``workdir`` (merged), else mutmut's."""
    path = workdir / STATUS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return results(workdir)


#: prints the diff of every mutant named on the command line, in one process (``mutmut show``
#: costs a start-up each)
_SHOW_ALL = """
import json, sys
from mutmut.__main__ import find_mutant, get_diff_for_mutant
print(json.dumps({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in sys.argv[1:]}))
"""


def diffs_of(workdir: Path, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", _SHOW_ALL, *names],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {n: f"(no diff: {done.stderr.strip()[-300:]})" for n in names}


def summarize(name: str, workdir: Path, status: dict[str, str] | None = None) -> dict:
    """Counts, score and surviving mutants (with diffs) of a module's last run."""
    source, tests = MODULES[name]
    if status is None:
        status = results(workdir)
    equivalent = read_equivalent()
    counts: dict[str, int] = {}
    for value in status.values():
        counts[value] = counts.get(value, 0) + 1
    done = {k: v for k, v in status.items() if v not in NOT_RUN}
    survivors = sorted(k for k, v in done.items() if v not in KILLED)
    live = [k for k in survivors if k not in equivalent]
    tested = len(done) - (len(survivors) - len(live))
    killed = sum(1 for v in done.values() if v in KILLED)
    diffs = diffs_of(workdir, live)
    equivalent_diffs = diffs_of(workdir, sorted(set(survivors) - set(live)))
    checked = read_checked().get(source) == source_digest(source)
    return {
        "module": name,
        "source": source,
        "tests": tests,
        "finished": True,
        "seconds": None,
        "mutants": len(status),
        "tested": tested,
        "not_run": len(status) - len(done),
        "counts": counts,
        "equivalent": sorted(set(survivors) - set(live)),
        "survived": live,
        "score": round(100.0 * killed / tested, 1) if tested else None,
        "diffs": diffs,
        "equivalent_checked": checked or not equivalent_diffs,
        "equivalent_diffs": equivalent_diffs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medlsam-mutation"))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--budget", type=float, default=30.0, help="minutes per module")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument(
        "--report", action="store_true", help="summarize the last run again, running nothing"
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="run only the mutants the last run did not kill (module source unchanged)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, (source, tests) in MODULES.items():
            chain = " (coordinate chain)" if name in COORDINATE_CHAIN else ""
            print(f"{name}{chain}: {source} <- {' '.join(tests)}")
            print(f"    # checked {source} {source_digest(source)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown modules {unknown}; expected some of {list(MODULES)}")
    summary = []
    for name in args.modules or list(MODULES):
        if args.report:
            report = summarize(name, args.workdir / name, last_status(args.workdir / name))
        else:
            report = run_module(name, args.workdir, args.max_children, args.budget, args.again)
        summary.append(report)
        line = (
            f"{name}: {report['mutants']} mutants, score {report['score']}%, "
            f"{len(report['survived'])} surviving, {len(report['equivalent'])} equivalent, "
            f"{report['not_run']} not run, "
            f"{report['seconds'] or 0:.0f} s{'' if report['finished'] else ' (interrupted)'}"
        )
        print(line, flush=True)
        if not report["equivalent_checked"]:
            print(
                f"warning: {report['source']} changed since its equivalent mutants were checked "
                f"(names may be stale): check them ({args.workdir / name}.json) and update the "
                "'# checked' line of scripts/mutation_equivalent.txt",
                flush=True,
            )
        for mutant in report["survived"]:
            print(report["diffs"][mutant], flush=True)
        (args.workdir / f"{name}.json").write_text(json.dumps(report, indent=2))
    killed = sum(sum(r["counts"].get(k, 0) for k in KILLED) for r in summary)
    tested = sum(r["tested"] for r in summary)
    if tested:
        print(
            f"all: {killed}/{tested} non-equivalent mutants killed ({100 * killed / tested:.1f}%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
