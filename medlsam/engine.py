"""CPU inference engines for medlsam's networks: PyTorch, ONNX Runtime or OpenVINO.

``[run] engine`` picks how MedLAM and the SAM image encoder run on the CPU:

* ``torch``: PyTorch eager (the reference; always used on CUDA);
* ``onnxruntime`` / ``openvino``: the network is exported once to ONNX (PyTorch's exporter),
  cached on disk (:mod:`medlsam.export_cache`, keyed by the weights' sha256, the engine's
  version and the input shapes) and run by that engine in float32;
* ``auto`` (default): the first of :data:`AUTO_ORDER` that is installed, else PyTorch (one log
  line says so). The order is the measured one (``scripts/bench_engines.py``).

Each engine's outputs agree with PyTorch's to float32 reordering (checked in the tests); only
the speed differs.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlsam.config import ENGINES
from medlsam.errors import ConfigError
from medlsam.export_cache import ExportCache

logger = logging.getLogger(__name__)

#: what ``auto`` picks on a CPU, first installed wins: engines that were measured faster than
#: PyTorch and give the same boxes and masks on the real test CT (OpenVINO moved a box wall by
#: one voxel there, so it runs only when named)
AUTO_ORDER: tuple[str, ...] = ("onnxruntime",)
#: ONNX opset of the exported graphs
OPSET = 17
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def engine_available(name: str) -> bool:
    """True when the package behind engine ``name`` can be imported (``torch``: always)."""
    if name == "torch":
        return True
    return importlib.util.find_spec(_MODULES[name]) is not None


def engine_version(name: str) -> str:
    """The version string of the engine's package."""
    if name == "torch":
        return torch.__version__
    module = importlib.import_module(_MODULES[name])
    return str(getattr(module, "__version__", None) or module.get_version())


def resolve_engine(name: str, device: str | torch.device) -> str:
    """The engine that runs on ``device`` for the configured ``name``.

    CUDA always runs PyTorch (the engine setting is for the CPU). ``auto`` falls back to PyTorch
    when no engine package is installed; an engine named explicitly but not installed is a
    :class:`ConfigError`.
    """
    if name not in ENGINES:
        raise ConfigError(f"engine {name!r}: expected one of {', '.join(ENGINES)}")
    if torch.device(device).type != "cpu":
        if name not in ("auto", "torch"):
            logger.info("engine %s is a CPU engine; %s runs PyTorch", name, device)
        return "torch"
    if name == "auto":
        for candidate in AUTO_ORDER:
            if engine_available(candidate):
                return candidate
        logger.info("engine auto: none of %s is installed; running PyTorch", AUTO_ORDER)
        return "torch"
    if not engine_available(name):
        raise ConfigError(
            f"engine {name!r}: the {_MODULES[name]} package is not installed "
            f"(pip install {_MODULES[name]}, or engine = auto)"
        )
    return name


def state_sha256(module: nn.Module) -> str:
    """sha256 of a module's state dict (keys, dtypes, shapes, bytes), in state-dict order."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    output_names: Sequence[str],
    dynamic_batch: bool = True,
) -> None:
    """Export ``module(example)`` (eval mode, float32) to an ONNX file at ``path``."""
    axes = {"x": {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["x"],
            output_names=list(output_names),
            dynamic_axes=axes if dynamic_batch else None,
            do_constant_folding=True,
        )


class _SignalStack(ctypes.Structure):
    """``stack_t`` of Linux (glibc and musl): the calling thread's alternate signal stack."""

    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


_SS_DISABLE = 2


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Give the calling thread back the alternate signal stack it had on entry.

    OpenVINO's CPU plugin installs an alternate signal stack of its own on the thread that
    compiles a model and puts back the one it found when that compiled model is released.
    Released in another order than compiled, the thread is left with the stack of a model
    already freed: the next signal it handles (SIGTERM or Ctrl-C through Python's handler,
    a crash through faulthandler's) runs on freed memory and the process dies of SIGSEGV
    without a word. Compiling and releasing inside this block leaves the thread's stack as
    it was. Linux only (elsewhere nothing is changed).
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    saved = _SignalStack()
    if libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    saved.ss_flags &= _SS_DISABLE  # drop SS_ONSTACK, which sigaltstack() only reports
    try:
        yield
    finally:
        if libc.sigaltstack(ctypes.byref(saved), None) != 0:
            logger.warning("could not restore the signal stack (errno %d)", ctypes.get_errno())


class Graph:
    """An exported network run by ONNX Runtime or OpenVINO on the CPU.

    ``graph(x)`` takes one float32 array and returns the outputs as float32 arrays, in the
    order of ``output_names``.
    """

    def __init__(self, engine: str, onnx_path: Path, threads: int | None = None) -> None:
        self.engine = engine
        self.path = Path(onnx_path)
        self.threads = int(threads or torch.get_num_threads())
        if engine == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            # no memory arena: it keeps the largest activations of every call size it has
            # seen (full-width MedLAM, 4 patches: peak RSS 4,050 MB after two calls with it,
            # 2,608 MB without, same CPU seconds)
            opts.enable_cpu_mem_arena = False
            self._session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
            self.output_names = [o.name for o in self._session.get_outputs()]
        elif engine == "openvino":
            import openvino as ov

            core = ov.Core()
            config = {
                "INFERENCE_NUM_THREADS": self.threads,
                "INFERENCE_PRECISION_HINT": "f32",  # never bf16/f16 behind our back
                "PERFORMANCE_HINT": "LATENCY",
            }
            with kept_signal_stack():
                self._compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
            self.output_names = [o.get_any_name() for o in self._compiled.outputs]
        else:
            raise ValueError(f"Graph runs onnxruntime or openvino, not {engine!r}")

    def close(self) -> None:
        """Release the engine's session or compiled model (the graph cannot run after this)."""
        for name in ("_session", "_compiled"):
            handle = self.__dict__.pop(name, None)
            if handle is not None:
                with kept_signal_stack():  # OpenVINO swaps the signal stack back here
                    del handle

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules already torn down
            pass

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.engine == "onnxruntime":
            return self._session.run(None, {"x": x})
        result = self._compiled([x])
        return [np.asarray(result[i]) for i in range(len(self.output_names))]


def compiled_graph(
    engine: str,
    module: nn.Module,
    example: torch.Tensor,
    name: str,
    output_names: Sequence[str],
    weights_sha256: str,
    cache: ExportCache | None = None,
    extra: dict | None = None,
    dynamic_batch: bool = True,
) -> Graph:
    """``module`` exported to ONNX (cached by weights, engine version and shapes) and loaded.

    Args:
        engine: ``onnxruntime`` or ``openvino``.
        module: the float32 CPU module; ``module(x)`` returns a tensor or a tuple of tensors.
        example: an input of the shape to serve (the batch dimension stays dynamic).
        name: the cache entry's name (for example ``medlam-fc``; the engine is appended).
        output_names: one name per output.
        weights_sha256: sha256 of the weights (a checkpoint file's, or :func:`state_sha256`).
        cache: where exports live (default :class:`ExportCache` at its default root).
        extra: more fields that the export depends on (module class, options).
        dynamic_batch: export with a free batch dimension (else fixed to ``example``'s).
    """
    cache = cache or ExportCache()
    fields = {
        "weights_sha256": weights_sha256,
        "engine": engine,
        "engine_version": engine_version(engine),
        "torch": torch.__version__,
        "opset": OPSET,
        "input_shape": [int(s) for s in example.shape[1:]],
        "outputs": list(output_names),
        "batch": "dynamic" if dynamic_batch else int(example.shape[0]),
        **(extra or {}),
    }

    def build(folder: Path) -> None:
        export_onnx(module, example, folder / "model.onnx", output_names, dynamic_batch)

    folder = cache.get(f"{name}-{engine}", fields, build)
    return Graph(engine, folder / "model.onnx", threads=torch.get_num_threads())


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
