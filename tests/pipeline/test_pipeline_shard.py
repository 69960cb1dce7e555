"""Scale-out: --shard K/N, shard records and their merge, torchrun ranks, determinism.

The masks of a one-process run, of two shards sharing a folder and of a two-rank ``torchrun``
(gloo, CPU) must be byte-identical; ``medlsam-eval`` scores the union of shard folders.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from robust_helpers import build_kit, write_config

from medlsam.cli.evaluate import main as evaluate_main
from medlsam.cli.infer import main as infer_main
from medlsam.errors import ConfigError, OutputError
from medlsam.io import read_label, write_path_list
from medlsam.pipeline.distributed import DistEnv, dist_env
from medlsam.pipeline.shard import (
    Shard,
    merge_if_complete,
    parse_shard,
    sibling_entries,
)

CASES = ["query_0", "query_1", "query_2"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs with one torch thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_kit(tmp_path_factory.mktemp("kit"), n_queries=3)


@pytest.fixture(scope="module")
def single(tmp_path_factory, kit):
    """A one-process run of the three queries: ``(config, output folder, {case: mask bytes})``."""
    folder = tmp_path_factory.mktemp("single")
    config = write_config(folder, kit)
    torch.set_num_threads(1)
    assert infer_main(["--config", str(config), "--device", "cpu", "--quiet"]) == 0
    out = folder / "out"
    masks = {c: (out / f"{c}.nii.gz").read_bytes() for c in CASES}
    organs = [set(np.unique(read_label(out / f"{c}.nii.gz").data)) - {0} for c in CASES]
    assert any(organs), "every mask is empty: the determinism checks would be vacuous"
    return config, out, masks


def _infer(config: Path, *extra: str) -> int:
    return infer_main(["--config", str(config), "--device", "cpu", "--quiet", *extra])


def _record(path: Path) -> dict:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------
# the split


@pytest.mark.parametrize("n_items", [0, 1, 2, 5, 11])
@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_shards_partition_the_list_evenly(n_items, count):
    parts = [Shard(k, count).select(n_items) for k in range(1, count + 1)]
    flat = sorted(i for part in parts for i in part)
    assert flat == list(range(n_items))  # every query once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(part == sorted(part) for part in parts)


def test_parse_shard_and_record_names():
    assert parse_shard("2/8") == Shard(2, 8) and parse_shard(" 1 / 1 ") == Shard(1, 1)
    assert Shard(2, 8).record_name == "run.shard-2-of-8.json"
    assert Shard(1, 1).record_name == "run.json"
    for bad in ("0/2", "3/2", "2", "a/b", "-1/2"):
        with pytest.raises(ConfigError, match="expected K/N"):
            parse_shard(bad)


def test_torchrun_environment():
    assert dist_env({}) is None
    env = dist_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env == DistEnv(3, 4, 1) and env.shard == Shard(4, 4)
    with pytest.raises(ConfigError, match="inconsistent"):
        dist_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="RANK"):
        dist_env({"RANK": "x", "WORLD_SIZE": "4"})
    assert env.device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert env.device("auto") == "cpu"
        with pytest.raises(ConfigError, match="CUDA is not available"):
            env.device("cuda")


def test_torchrun_ranks_take_their_gpu_or_the_one_visible_gpu(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert DistEnv(5, 8, 3).device("auto") == "cuda:3"  # one node, one GPU per process
    with pytest.raises(ConfigError, match="LOCAL_RANK 4: only 4 CUDA device"):
        DistEnv(4, 8, 4).device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES per task
    assert DistEnv(5, 8, 3).device("cuda") == "cuda:0"
    assert chosen == [3, 0]


# --------------------------------------------------------------------------------------------
# records


def _doc(index: int, count: int, statuses: dict[str, str], seed: int = 1) -> dict:
    return {
        "format": "medlsam-run",
        "settings": {"seed": seed},
        "shard": {"index": index, "count": count, "cases": list(statuses)},
        "cases": {c: {"status": s} for c, s in statuses.items()},
    }


def test_merge_waits_for_every_shard_to_finish(tmp_path):
    header = {"format": "medlsam-run", "settings": {"seed": 1}}
    (tmp_path / "run.shard-1-of-2.json").write_text(
        json.dumps(_doc(1, 2, {"a": "ok", "c": "failed"}))
    )
    (tmp_path / "run.shard-2-of-2.json").write_text(json.dumps(_doc(2, 2, {"b": "interrupted"})))
    assert merge_if_complete(tmp_path, Shard(2, 2), header, ["a", "b", "c"]) is None
    assert not (tmp_path / "run.json").exists()
    (tmp_path / "run.shard-2-of-2.json").write_text(json.dumps(_doc(2, 2, {"b": "ok"})))
    merged = _record(merge_if_complete(tmp_path, Shard(2, 2), header, ["a", "b", "c"]))
    assert list(merged["cases"]) == ["a", "b", "c"]  # in query-list order
    assert [merged["cases"][c]["status"] for c in "abc"] == ["ok", "ok", "failed"]
    assert merged["shards"] == {
        "count": 2,
        "records": ["run.shard-1-of-2.json", "run.shard-2-of-2.json"],
    }


def test_records_of_other_settings_are_refused_or_removed_with_overwrite(tmp_path):
    stale = tmp_path / "run.shard-1-of-3.json"
    stale.write_text(json.dumps(_doc(1, 3, {"a": "ok"}, seed=7)))
    same = tmp_path / "run.json"
    same.write_text(json.dumps({"settings": {"seed": 1}, "cases": {"b": {"status": "ok"}}}))
    with pytest.raises(OutputError, match="run.shard-1-of-3.json: the outputs there come from"):
        sibling_entries(tmp_path, "run.shard-1-of-2.json", {"seed": 1}, overwrite=False)
    stale.unlink()
    done = sibling_entries(tmp_path, "run.shard-1-of-2.json", {"seed": 1}, overwrite=False)
    assert list(done) == ["b"]
    stale.write_text(json.dumps(_doc(1, 3, {"a": "ok"}, seed=7)))
    assert sibling_entries(tmp_path, "run.shard-1-of-2.json", {"seed": 1}, overwrite=True) == {}
    assert not stale.exists() and same.exists()  # only the stale record is deleted


# --------------------------------------------------------------------------------------------
# runs


def test_shards_in_one_folder_give_the_same_masks_and_merge(tmp_path, capsys, kit, single):
    _, _, masks = single
    config = write_config(tmp_path, kit)
    out = tmp_path / "out"
    assert _infer(config, "--shard", "2/2") == 0  # the second shard first: order is free
    assert "[shard 2/2]: 1 done" in capsys.readouterr().err
    assert not (out / "run.json").exists()  # shard 1 has not run yet
    second = (out / "run.shard-2-of-2.json").read_text()
    assert _infer(config, "--shard", "1/2") == 0
    assert "[shard 1/2]: 2 done" in capsys.readouterr().err
    assert (out / "run.shard-2-of-2.json").read_text() == second  # never clobbered
    shard1 = _record(out / "run.shard-1-of-2.json")
    assert shard1["shard"]["cases"] == ["query_0", "query_2"]  # round robin
    merged = _record(out / "run.json")
    assert list(merged["cases"]) == CASES and merged["shards"]["count"] == 2
    assert all(merged["cases"][c]["status"] == "ok" for c in CASES)
    for case in CASES:  # byte-identical across shard layouts
        assert (out / f"{case}.nii.gz").read_bytes() == masks[case], case
    # across runs: redo shard 2 from scratch
    assert _infer(config, "--shard", "2/2", "--overwrite") == 0
    assert (out / "query_1.nii.gz").read_bytes() == masks["query_1"]
    capsys.readouterr()
    # another layout resumes from these records: nothing left to do
    assert _infer(config) == 0
    assert "0 done, 3 already done, 0 failed of 3 queries" in capsys.readouterr().err


def test_eval_scores_the_union_of_shard_folders(tmp_path, capsys, kit, single):
    _, out, _ = single
    labels = []
    (tmp_path / "labels").mkdir()
    for case in CASES:  # references named like the cases
        labels.append(tmp_path / "labels" / f"{case}.nii.gz")
        shutil.copy(kit.labels[case].path, labels[-1])
    write_path_list(tmp_path / "labels.txt", labels)
    parts = []
    for k in (1, 2):  # the single run's files split as two shard folders would hold them
        folder = tmp_path / f"shard{k}"
        folder.mkdir()
        for n in Shard(k, 2).select(len(CASES)):
            for suffix in (".nii.gz", ".boxes.json"):
                shutil.copy(out / f"{CASES[n]}{suffix}", folder)
        (folder / f"run.shard-{k}-of-2.json").write_text(json.dumps(_doc(k, 2, {})))
        parts.append(folder)

    def evaluate(*pred: Path, output: Path) -> dict:
        args = ["--pred", *map(str, pred), "--labels", str(tmp_path / "labels.txt")]
        assert evaluate_main([*args, "--classes", "1,2", "--output", str(output)]) == 0
        return _record(output / "summary.json")

    whole = evaluate(out, output=tmp_path / "whole")
    union = evaluate(*parts, output=tmp_path / "union")
    assert union["n_cases"] == whole["n_cases"] == 3
    assert union["classes"] == whole["classes"] and union["mean"] == whole["mean"]
    capsys.readouterr()
    half = evaluate(parts[0], output=tmp_path / "half")  # one shard alone
    assert half["missing_predictions"] == ["query_1"]  # scored as empty (DSC 0), and shown
    assert half["n_cases"] == 3 and sum(c["missing_prediction"] for c in half["classes"].values())
    assert "shard record(s) 2 of 2 missing" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _torchrun(config: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "medlsam.cli.infer",
        "--config",
        str(config),
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDLSAM_DIST_TIMEOUT_S": "120"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, cwd=cwd)


def test_two_torchrun_ranks_on_cpu_share_prototypes_and_write_the_same_masks(tmp_path, kit, single):
    _, _, masks = single
    config = write_config(tmp_path, kit, prototypes=False)
    shared = tmp_path / "fitted_prototypes.pt"  # named but absent: rank 0 fits and writes it
    config.write_text(config.read_text().replace("[data]\n", f"[data]\nprototypes = {shared}\n"))
    out = tmp_path / "out"
    began = time.perf_counter()
    done = _torchrun(config, tmp_path)
    seconds = time.perf_counter() - began
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("prototypes saved to") == 1  # fitted once, by rank 0
    assert done.stderr.count("prototypes received from rank 0") == 1
    assert shared.is_file()
    merged = _record(out / "run.json")
    assert list(merged["cases"]) == CASES and merged["shards"]["count"] == 2
    assert all(merged["cases"][c]["status"] == "ok" for c in CASES)
    assert _record(out / "run.shard-2-of-2.json")["shard"]["cases"] == ["query_1"]
    for case in CASES:
        assert (out / f"{case}.nii.gz").read_bytes() == masks[case], case
    # rank 0 reports the whole run
    assert "3 done, 0 already done, 0 failed of 3 queries" in done.stderr
    print(f"two-rank torchrun: {seconds:.1f} s")


def test_a_rank_failing_outside_a_case_keeps_the_merge_of_the_others(tmp_path, kit):
    config = write_config(tmp_path, kit)
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.shard-2-of-2.json").write_text("{ not json")  # rank 1 cannot open its record
    done = _torchrun(config, tmp_path, "--quiet")
    assert done.returncode != 0
    merged = _record(out / "run.json")
    assert merged["shards"]["count"] == 2
    assert {c: e["status"] for c, e in merged["cases"].items()} == {
        "query_0": "ok",
        "query_2": "ok",
    }
    assert "unreadable run record" in done.stderr
    assert "rank 1: OutputError" in done.stderr  # rank 0's summary names the failed rank
