"""Devices, precisions and CUDA-honest timing (CPU tests; CUDA mocked where it is asked for)."""

from __future__ import annotations

import pytest
import torch

from medlsam import devices
from medlsam.errors import ConfigError


def test_cpu_always_runs_fp32_and_published_forces_the_published_precisions():
    assert devices.effective("bf16", "cpu") == "fp32"
    assert devices.effective("fp16", torch.device("cpu")) == "fp32"
    assert devices.run_precisions("bf16", "fp32", "cpu").as_dict() == {
        "sam_precision": "fp32",
        "medlam_precision": "fp32",
    }
    with pytest.raises(ValueError, match="precision"):
        devices.effective("fp8", "cpu")


def test_precisions_on_cuda_follow_the_request_or_the_published_ones(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    asked = devices.run_precisions("bf16", "fp32", "cuda")
    assert (asked.sam, asked.medlam) == ("bf16", "fp32")
    forced = devices.run_precisions("bf16", "fp32", "cuda", reproduce="published")
    assert (forced.sam, forced.medlam) == ("fp32", "fp16")
    assert (
        devices.autocast_dtype("fp16") is torch.float16 and devices.autocast_dtype("fp32") is None
    )


def test_bf16_on_a_gpu_without_it_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    with pytest.raises(ConfigError, match="Old GPU has no bfloat16"):
        devices.effective("bf16", "cuda")


@pytest.mark.parametrize(
    ("name", "count", "expected"),
    [("cuda", 2, "cuda"), ("cuda:1", 2, "cuda:1"), ("cpu", 0, "cpu")],
)
def test_resolve_device_accepts_devices_that_exist(monkeypatch, name, count, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert devices.resolve_device(name) == expected


@pytest.mark.parametrize(
    ("name", "count", "message"),
    [
        ("cuda:2", 2, "shows 2 CUDA device(s), cuda:0 to cuda:1"),
        ("cuda", 0, "CUDA is not available"),
        ("cuda:x", 1, "expected auto, cpu, cuda or cuda:N"),
        ("gpu", 1, "expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_resolve_device_refuses_missing_devices_in_one_line(monkeypatch, name, count, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(ConfigError) as err:
        devices.resolve_device(name)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert repr(name) in str(err.value)


@pytest.mark.parametrize(
    ("local_rank", "count", "expected"),
    [(0, 4, 0), (3, 4, 3), (5, 1, 0), (1, 1, 0)],  # 1 visible: one GPU per task
)
def test_rank_cuda_index(local_rank, count, expected):
    assert devices.rank_cuda_index(local_rank, count) == expected


@pytest.mark.parametrize(("local_rank", "count"), [(4, 4), (0, 0)])
def test_rank_cuda_index_refuses_impossible_layouts(local_rank, count):
    with pytest.raises(ConfigError):
        devices.rank_cuda_index(local_rank, count)


def test_stopwatch_synchronises_cuda_at_both_ends(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    with devices.Stopwatch("cuda:0") as clock:
        assert len(calls) == 1  # before the clock starts
    assert len(calls) == 2 and clock.seconds >= 0
    with devices.Stopwatch("cpu"):
        pass
    assert len(calls) == 2


def test_config_precision_keys_flags_and_published_forcing(tmp_path, caplog):
    from dataclasses import replace

    from medlsam.config import (
        force_reproduce,
        load_config,
        published_precision,
        with_precision,
    )

    (tmp_path / "q.txt").write_text("q.nii.gz\n")
    text = "[data]\nquery_image_ls = q.txt\nfg_class = [1]\nprototypes = p.pt\n"
    (tmp_path / "a.txt").write_text(text)
    cfg = load_config(tmp_path / "a.txt", check_files=False)
    assert (cfg.vit.precision, cfg.run.medlam_precision) == ("fp32", "fp16")  # published
    (tmp_path / "b.txt").write_text(
        text + "[vit]\nprecision = bf16\n[run]\nmedlam_precision = fp32\n"
    )
    asked = load_config(tmp_path / "b.txt", check_files=False)
    assert (asked.vit.precision, asked.run.medlam_precision) == ("bf16", "fp32")
    (tmp_path / "c.txt").write_text(text + "[vit]\nprecision = fp8\n")
    with pytest.raises(ConfigError, match="precision"):
        load_config(tmp_path / "c.txt", check_files=False)
    (tmp_path / "d.txt").write_text(text + "[run]\ndevice = cuda:1\n")
    assert load_config(tmp_path / "d.txt", check_files=False).run.device == "cuda:1"
    (tmp_path / "e.txt").write_text(text + "[run]\ndevice = gpu1\n")
    with pytest.raises(ConfigError, match="cuda:N"):
        load_config(tmp_path / "e.txt", check_files=False)
    flagged = with_precision(cfg, sam="fp16")
    assert (flagged.vit.precision, flagged.run.medlam_precision) == ("fp16", "fp16")
    with pytest.raises(ConfigError, match="MedLAM precision 'bf16'"):
        with_precision(cfg, medlam="bf16")
    forced = published_precision(asked)
    assert (forced.vit.precision, forced.run.medlam_precision) == ("fp32", "fp16")
    assert force_reproduce(asked) is asked  # no [run] reproduce: nothing forced

    published = replace(asked, run=replace(asked.run, reproduce="published"))
    with caplog.at_level("WARNING"):
        again = force_reproduce(published)
    assert (again.vit.precision, again.run.medlam_precision) == ("fp32", "fp16")
    assert "[vit] precision bf16 -> fp32" in caplog.text
