"""Inference engines (medlsam.engine) and the export cache (medlsam.export_cache), tiny models."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from medlsam import engine as engines
from medlsam.errors import ConfigError
from medlsam.export_cache import ExportCache, cache_key


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8 * 8, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(torch.flatten(y, 1)), y


def _tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().eval()


def _counting_build(calls: list, payload: str = "graph"):
    def build(folder):
        calls.append(folder)
        (folder / "model.onnx").write_text(payload)

    return build


# ---------------------------------------------------------------- cache


def test_cache_builds_once_per_key(tmp_path):
    cache, calls = ExportCache(tmp_path), []
    fields = {"weights_sha256": "a" * 64, "engine": "x", "shape": [1, 8]}
    first = cache.get("net", fields, _counting_build(calls))
    again = cache.get("net", dict(fields), _counting_build(calls))
    assert first == again and len(calls) == 1
    assert (first / "model.onnx").read_text() == "graph"
    assert json.loads((first / "meta.json").read_text())["key"] == cache_key(fields)


@pytest.mark.parametrize(
    "change", [{"weights_sha256": "b" * 64}, {"engine_version": "2"}, {"shape": [2, 8]}]
)
def test_cache_rebuilds_when_stale_and_drops_old_entry(tmp_path, change):
    cache, calls = ExportCache(tmp_path), []
    fields = {"weights_sha256": "a" * 64, "engine_version": "1", "shape": [1, 8]}
    old = cache.get("net", fields, _counting_build(calls, "old"))
    new = cache.get("net", {**fields, **change}, _counting_build(calls, "new"))
    assert len(calls) == 2 and new != old
    assert (new / "model.onnx").read_text() == "new"
    assert not old.exists()  # the stale export is removed
    assert [p.name for p in tmp_path.iterdir()] == [new.name]


def test_cache_write_is_atomic(tmp_path):
    """A build that fails leaves nothing under the entry's name, and the next call rebuilds."""
    cache = ExportCache(tmp_path)
    fields = {"weights_sha256": "a" * 64}

    def broken(folder):
        (folder / "model.onnx").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        cache.get("net", fields, broken)
    assert list(tmp_path.iterdir()) == []  # no partial entry, no temp folder left
    calls = []
    entry = cache.get("net", fields, _counting_build(calls))
    assert len(calls) == 1 and (entry / "model.onnx").read_text() == "graph"


def test_cache_rebuilds_an_entry_without_meta(tmp_path):
    cache, calls = ExportCache(tmp_path), []
    fields = {"weights_sha256": "a" * 64}
    entry = cache.get("net", fields, _counting_build(calls))
    (entry / "meta.json").unlink()  # e.g. a copy interrupted half-way
    (entry / "model.onnx").write_text("truncated")
    again = cache.get("net", fields, _counting_build(calls))
    assert len(calls) == 2 and (again / "model.onnx").read_text() == "graph"


def test_state_sha256_follows_the_weights():
    a, b = _tiny(0), _tiny(0)
    assert engines.state_sha256(a) == engines.state_sha256(b)
    with torch.no_grad():
        b.fc.bias[0] += 1e-6
    assert engines.state_sha256(a) != engines.state_sha256(b)


# ---------------------------------------------------------------- engine choice


def test_resolve_engine_cuda_and_torch_are_torch():
    assert engines.resolve_engine("torch", "cpu") == "torch"
    for name in ("auto", "onnxruntime", "openvino"):
        assert engines.resolve_engine(name, "cuda") == "torch"
    with pytest.raises(ConfigError, match="expected one of"):
        engines.resolve_engine("tensorrt", "cpu")


def test_auto_falls_back_to_torch_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(engines, "engine_available", lambda name: name == "torch")
    with caplog.at_level(logging.INFO, logger="medlsam.engine"):
        assert engines.resolve_engine("auto", "cpu") == "torch"
    assert len(caplog.records) == 1 and "running PyTorch" in caplog.records[0].message
    with pytest.raises(ConfigError, match="not installed"):
        engines.resolve_engine("openvino", "cpu")


def test_auto_takes_the_first_installed(monkeypatch):
    order = engines.AUTO_ORDER
    monkeypatch.setattr(engines, "engine_available", lambda name: name == order[-1])
    assert engines.resolve_engine("auto", "cpu") == order[-1]


# ---------------------------------------------------------------- exported graphs


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_graph_matches_torch_and_is_cached(tmp_path, engine, one_thread):
    pytest.importorskip(engine)
    model, x = _tiny(), torch.randn(2, 1, 8, 8, 8)
    cache = ExportCache(tmp_path)
    sha = engines.state_sha256(model)
    graph = engines.compiled_graph(engine, model, x[:1], "tiny", ["fc", "y"], sha, cache=cache)
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    out = graph(x.numpy())  # batch 2 through a graph exported at batch 1
    for a, r in zip(out, ref):
        assert a.shape == r.shape
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5 * np.abs(r).max())
    stamp = graph.path.stat().st_mtime_ns
    again = engines.compiled_graph(engine, model, x[:1], "tiny", ["fc", "y"], sha, cache=cache)
    assert again.path == graph.path and again.path.stat().st_mtime_ns == stamp


def test_onnxruntime_session_keeps_no_memory_arena(tmp_path, one_thread):
    """The arena would keep the largest activations of every batch size seen (GBs for MedLAM)."""
    pytest.importorskip("onnxruntime")
    model, x = _tiny(), torch.randn(1, 1, 8, 8, 8)
    sha = engines.state_sha256(model)
    cache = ExportCache(tmp_path)
    graph = engines.compiled_graph("onnxruntime", model, x, "tiny", ["fc", "y"], sha, cache=cache)
    assert graph._session.get_session_options().enable_cpu_mem_arena is False
    assert len(graph(x.numpy())) == 2


def test_cache_keeps_entries_of_other_names(tmp_path):
    cache, calls = ExportCache(tmp_path), []
    a = cache.get("net-onnxruntime", {"k": 1}, _counting_build(calls))
    b = cache.get("net-openvino", {"k": 1}, _counting_build(calls))
    c = cache.get("net", {"k": 1}, _counting_build(calls))
    assert a.exists() and b.exists() and c.exists() and len(calls) == 3


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_new_weights_rebuild_the_export(tmp_path, engine, one_thread):
    pytest.importorskip(engine)
    model, x = _tiny(), torch.randn(1, 1, 8, 8, 8)
    cache = ExportCache(tmp_path)

    def graph():
        sha = engines.state_sha256(model)
        return engines.compiled_graph(engine, model, x, "tiny", ["fc", "y"], sha, cache=cache)

    old = graph()
    with torch.no_grad():
        model.fc.bias += 1.0
    new = graph()
    assert new.path != old.path and not old.path.exists()
    with torch.no_grad():
        want = model(x)[0].numpy()
    np.testing.assert_allclose(new(x.numpy())[0], want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- signals after OpenVINO

_SIGNAL_AFTER_GRAPHS = """
import os, signal, sys
from pathlib import Path
import torch
from medlsam import engine as engines
from medlsam.export_cache import ExportCache

net, x = torch.nn.Conv3d(1, 2, 3).eval(), torch.zeros(1, 1, 8, 8, 8)
cache, sha = ExportCache(Path(sys.argv[1])), engines.state_sha256(net)
first = engines.compiled_graph("openvino", net, x, "first", ["y"], sha, cache=cache)
second = engines.compiled_graph("openvino", net, x, "second", ["y"], sha, cache=cache)
del first  # released before the graph compiled after it
del second
signal.signal(signal.SIGTERM, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGTERM)
print("alive", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signal stacks: Linux only")
def test_signal_after_openvino_graphs_released_out_of_order(tmp_path):
    """OpenVINO swaps the compiling thread's alternate signal stack and swaps it back on
    release; released out of order, the next signal ran on freed memory (SIGSEGV, no
    message). Graphs keep the thread's own stack, so the signal reaches its handler."""
    pytest.importorskip("openvino")
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _SIGNAL_AFTER_GRAPHS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["handled", "alive"]


def test_kept_signal_stack_restores_the_thread_stack():
    """Whatever runs inside the block, the thread's alternate signal stack is the one before."""
    if not sys.platform.startswith("linux"):
        pytest.skip("signal stacks: Linux only")
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    before, after = engines._SignalStack(), engines._SignalStack()
    libc.sigaltstack(None, ctypes.byref(before))
    other = ctypes.create_string_buffer(1 << 16)
    replaced = engines._SignalStack(ctypes.addressof(other), 0, len(other))
    with engines.kept_signal_stack():
        assert libc.sigaltstack(ctypes.byref(replaced), None) == 0
    libc.sigaltstack(None, ctypes.byref(after))
    assert (after.ss_sp, after.ss_size) == (before.ss_sp, before.ss_size)
    assert after.ss_flags & 2 == before.ss_flags & 2  # SS_DISABLE as before
