"""Time medlsam's networks on the CPU under each inference engine, side by side in one process.

Usage::

    python scripts/bench_engines.py                       # every model and engine, 3 rounds
    python scripts/bench_engines.py --models medlam-fc medlam-full --rounds 5
    python scripts/bench_engines.py --engines eager onnxruntime openvino --json out.json

Models (random weights, built the normal way; timing does not depend on the weights):

* ``sam-stock``: SAM ViT-B image encoder from ``segment_anything.sam_model_registry['vit_b']``,
  one 1024x1024 image;
* ``sam-fast``: the same encoder and weights with medlsam's fused-attention forward
  (:mod:`medlsam.segment.fast`);
* ``medlam-fc``: MedLAM at width 24, fc-only (``fc_position``), one 64^3 patch;
* ``medlam-full``: MedLAM at width 24, ``fc_position`` and the three decoder feature maps.

Engines: ``eager`` (PyTorch), ``compile`` (``torch.compile``, default inductor backend; its
compile time is reported apart), ``onnxruntime`` and ``openvino`` (float32, the exported ONNX
graph of :mod:`medlsam.engine`), ``ort-int8`` (ONNX Runtime with dynamically quantized int8
weights; reported apart because it changes outputs).

Every round calls each (model, engine) once, in turn (A, B, C, A, B, C, ...), so load from other
processes hits all engines alike; the table gives the median seconds per call, the ratio to
PyTorch eager measured in the same rounds, the median CPU seconds of this process per call (all
its threads; under load from other jobs the wall time grows, CPU seconds much less) and the
largest relative error of each output against eager (``max |y - y_eager| / max |y_eager|``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlsam import engine as engines
from medlsam.export_cache import ExportCache

MODELS = ("sam-stock", "sam-fast", "medlam-fc", "medlam-full")
ENGINES = ("eager", "compile", "onnxruntime", "openvino", "ort-int8")
FEATURES = ("feature0", "feature1", "feature2")


class MedLAMOutputs(nn.Module):
    """MedLAM returning a tuple (fc_position[, feature0, feature1, feature2])."""

    def __init__(self, net: nn.Module, features: tuple[str, ...]) -> None:
        super().__init__()
        self.net = net
        self.features = features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x, fc=True, features=self.features)
        return tuple(out[k] for k in ("fc_position", *self.features))


def build_models(names: list[str], width: int) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """``name -> (float32 eval module, example input)``."""
    built: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    gen = torch.Generator().manual_seed(0)
    if any(n.startswith("sam") for n in names):
        from segment_anything import sam_model_registry

        from medlsam.segment.fast import accelerate_image_encoder

        torch.manual_seed(0)
        stock = sam_model_registry["vit_b"]().image_encoder.eval()
        image = torch.randn(1, 3, 1024, 1024, generator=gen)
        if "sam-stock" in names:
            built["sam-stock"] = (stock, image)
        if "sam-fast" in names:
            fast = accelerate_image_encoder(copy.deepcopy(stock) if "sam-stock" in names else stock)
            built["sam-fast"] = (fast.eval(), image)
    if any(n.startswith("medlam") for n in names):
        from medlsam.localization.network import MedLAM

        torch.manual_seed(0)
        net = MedLAM(width).eval()
        patch = torch.randn(1, 1, 64, 64, 64, generator=gen)
        if "medlam-fc" in names:
            built["medlam-fc"] = (MedLAMOutputs(net, ()).eval(), patch)
        if "medlam-full" in names:
            built["medlam-full"] = (MedLAMOutputs(net, FEATURES).eval(), patch)
    return {n: built[n] for n in names}


def as_tuple(out) -> tuple[np.ndarray, ...]:
    if isinstance(out, torch.Tensor):
        out = (out,)
    return tuple(o.detach().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in out)


def quantize_int8(onnx_path: Path, out_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(out_path), weight_type=QuantType.QInt8)


def make_runner(engine: str, name: str, module: nn.Module, x: torch.Tensor, cache: ExportCache):
    """``(callable(x) -> outputs, setup seconds)`` for one model and engine."""
    began = time.perf_counter()
    if engine == "eager":

        def run(inp):
            with torch.inference_mode():
                return module(inp)

        return run, 0.0
    if engine == "compile":
        compiled = torch.compile(module)
        with torch.inference_mode():
            compiled(x)  # compiles
        return (lambda inp: _no_grad(compiled, inp)), time.perf_counter() - began
    if name == "sam-fast":  # the engines run the stock graph (see medlsam.segment.engine)
        raise ValueError("not exported: the engines run the stock encoder graph (sam-stock)")
    n_out = len(as_tuple(_no_grad(module, x)))
    outputs = [f"y{i}" for i in range(n_out)]
    sha = engines.state_sha256(module)
    kind = "ort" if engine == "ort-int8" else engine
    graph = engines.compiled_graph(
        "onnxruntime" if kind == "ort" else kind,
        module,
        x,
        f"bench-{name}",
        outputs,
        sha,
        cache=cache,
        extra={"module": type(module).__name__},
    )
    if engine == "ort-int8":
        qpath = graph.path.with_name("model.int8.onnx")
        if not qpath.exists():
            quantize_int8(graph.path, qpath)
        graph = engines.Graph("onnxruntime", qpath)
    return (lambda inp: graph(inp.numpy())), time.perf_counter() - began


def _no_grad(module, x):
    with torch.inference_mode():
        return module(x)


def rel_err(a: tuple[np.ndarray, ...], ref: tuple[np.ndarray, ...]) -> float:
    worst = 0.0
    for y, r in zip(a, ref):
        scale = float(np.abs(r).max()) or 1.0
        worst = max(worst, float(np.abs(y.astype(np.float64) - r).max()) / scale)
    return worst


def bench(models, engine_names, rounds, cache) -> list[dict]:
    """Interleaved rounds over every (model, engine); one row per pair."""
    runners, setup, refs, times, cpu, errs = {}, {}, {}, {}, {}, {}
    for name, (module, x) in models.items():
        refs[name] = as_tuple(_no_grad(module, x))
        for eng in engine_names:
            try:
                runners[name, eng], setup[name, eng] = make_runner(eng, name, module, x, cache)
            except Exception as err:  # an engine that cannot run this model is reported
                logging.warning("%s on %s: %s", name, eng, err)
                continue
            times[name, eng], cpu[name, eng], errs[name, eng] = [], [], 0.0
    for r in range(rounds):
        for key, run in runners.items():
            x = models[key[0]][1]
            began, began_cpu = time.perf_counter(), time.process_time()
            out = run(x)
            times[key].append(time.perf_counter() - began)
            cpu[key].append(time.process_time() - began_cpu)
            errs[key] = max(errs[key], rel_err(as_tuple(out), refs[key[0]]))
        logging.info("round %d/%d done", r + 1, rounds)
    rows = []
    for (name, eng), ts in times.items():
        med = statistics.median(ts)
        eager = times.get((name, "eager"))
        rows.append(
            {
                "model": name,
                "engine": eng,
                "median_s": med,
                "times_s": ts,
                "cpu_s": statistics.median(cpu[name, eng]),
                "vs_eager": statistics.median(eager) / med if eager else None,
                "rel_err": errs[name, eng],
                "setup_s": setup[name, eng],
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| model | engine | median s/call | CPU s/call | speed vs eager | max rel. error "
        "| setup s |"
    )
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['vs_eager']:.2f}x" if r["vs_eager"] else "-"
        lines.append(
            f"| {r['model']} | {r['engine']} | {r['median_s']:.3f} | {r['cpu_s']:.3f} | {ratio} | "
            f"{r['rel_err']:.1e} | {r['setup_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--width", type=int, default=24, help="MedLAM base width (24 as published)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--cache", type=Path, default=None, help="export cache (default: a temp dir)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads or engines.default_threads())
    if "eager" not in args.engines:
        args.engines.insert(0, "eager")
    with tempfile.TemporaryDirectory() as tmp:
        cache = ExportCache(args.cache or tmp)
        rows = bench(build_models(args.models, args.width), args.engines, args.rounds, cache)
    print(table(rows))
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {torch.get_num_threads()} "
        f"threads, {args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}; "
        f"torch {torch.__version__}"
        + "".join(
            f", {e} {engines.engine_version(e)}"
            for e in ("onnxruntime", "openvino")
            if engines.engine_available(e)
        )
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
