"""SAM and MedSAM box-prompted segmentation over the ``segment_anything`` package.

What is published (method.md 1.2 and 6) and kept:

* slice input: window [-500, 1000] HU, min-max over the whole volume to [0, 255], resize to
  1024 x 1024 (order 2), 3 channels (:func:`medlsam.preprocess.sam_slice`);
* normalisation: SAM's ImageNet pixel mean/std for SAM *and* MedSAM checkpoints (the published
  reference). ``normalization="unit"`` instead scales each 1024 image to [0, 1] by its own
  min and max, as MedSAM's own inference code does; it applies to MedSAM only;
* prompt: one box (XYXY, 1024 frame) through the prompt encoder, ``multimask_output=False``;
* threshold: the low-resolution logits ``(256, 256)`` go through a sigmoid, are up-sampled
  bilinearly to 1024 x 1024 (``align_corners=False``) and thresholded at > 0.5 (SAM's own
  predictor up-samples the logits and thresholds at 0; the two differ only where
  interpolating the sigmoid and the logit disagree about the side of the boundary);
* back to the slice's ``(H, W)`` grid by nearest resizing (OpenCV ``INTER_NEAREST``
  convention, :func:`medlsam.segment.base.nearest_index`).

What is different (method.md 10.1 items 13 and 18-19): each slice goes through the image
encoder once, whatever the number of organs and sub-boxes crossing it, and all boxes of a
slice are decoded in one batched prompt-encoder + mask-decoder call; slices with no box are
never encoded; embeddings are not cached beyond the current batch of slices. On CUDA several
slices are encoded per batch, in the precision asked for (``precision``: ``fp32`` as
published, or ``bf16``/``fp16`` autocast), while a pool of worker *processes* prepares the next
batches (the order-2 resize holds the GIL, so threads would prepare one slice at a time); on
the CPU everything runs in float32 and slices are prepared by one thread ahead of the
encoder. Checkpoints are read with ``map_location="cpu"`` and ``weights_only=True`` and
checked key by key before anything runs; nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from medlsam.checkpoint import describe, file_sha256, fit_problems, load_weights
from medlsam.devices import Stopwatch, autocast_dtype, effective
from medlsam.engine import resolve_engine
from medlsam.errors import CheckpointError
from medlsam.export_cache import ExportCache
from medlsam.io import Volume
from medlsam.preprocess import (
    SAM_WINDOW,
    sam_slice_from_hu,
    sam_slices_from_hu,
    slice_2d,
    slice_frame,
)
from medlsam.segment.base import FRAME, SegmenterStats, SliceRequest, SliceResult, nearest_index
from medlsam.segment.engine import EngineEncoder
from medlsam.segment.fast import accelerate_image_encoder

logger = logging.getLogger(__name__)

#: Image-encoder width of each published SAM size (``patch_embed.proj.weight.shape[0]``).
ENCODER_WIDTH = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}
NORMALIZATIONS = ("imagenet", "unit")
_PATCH_KEY = "image_encoder.patch_embed.proj.weight"


# --------------------------------------------------------------------------------------------
# checkpoints


def read_sam_state_dict(path: str | os.PathLike[str], what: str = "SAM") -> dict[str, torch.Tensor]:
    """Read a SAM/MedSAM checkpoint on the CPU (tensors only, no code is unpickled).

    Accepts a bare state dict (the published files) or one wrapped as ``{"model": ...}`` or
    ``{"state_dict": ...}``, with or without a ``module.`` prefix.

    Raises:
        CheckpointError: missing, empty, truncated or corrupt file, or not a state dict.
    """
    path = Path(path)
    obj = load_weights(
        path,
        what,
        " (weights are never downloaded; put the file there or fix [weight] vit_load_path)",
    )
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: holds {type(obj).__name__}, expected a {what} state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(state) != len(obj):
        bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise CheckpointError(f"{path}: entries that are not tensors: {describe(bad)}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_sam_state(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    path: Path,
    label: str,
) -> None:
    """Raise :class:`CheckpointError` (one line) unless ``state`` fits ``expected`` exactly."""
    found = fit_problems(state, expected)
    if not found:
        return
    problems = [f"{kind} {text}" for kind, text in found.items()]
    hint = ""
    if _PATCH_KEY in state and state[_PATCH_KEY].ndim == 4:
        width = int(state[_PATCH_KEY].shape[0])
        found = [n for n, w in ENCODER_WIDTH.items() if w == width]
        if found and found[0] not in label:
            hint = f"; it looks like a {found[0]} checkpoint: set [vit] net_type = {found[0]}"
    raise CheckpointError(f"{path}: does not fit {label}: " + "; ".join(problems) + hint)


def build_sam_model(
    net_type: str, checkpoint: str | os.PathLike[str] | None, device: torch.device | str = "cpu"
) -> Sam:
    """A published-size SAM (``vit_b``/``vit_l``/``vit_h``) with the weights of ``checkpoint``.

    The network is first built on the ``meta`` device (no memory, no random initialisation),
    the checkpoint is checked against its keys and shapes, then the weights are assigned.
    """
    if net_type not in ENCODER_WIDTH:
        raise ValueError(f"net_type must be one of {sorted(ENCODER_WIDTH)}, not {net_type!r}")
    if checkpoint is None:
        raise CheckpointError(
            f"[weight] vit_load_path is not set: a SAM {net_type} checkpoint is needed "
            "(weights are never downloaded; or use [vit] backend = classic)"
        )
    path = Path(checkpoint)
    state = read_sam_state_dict(path)
    with torch.device("meta"):
        model = sam_model_registry[net_type]()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_sam_state(state, expected, path, f"SAM {net_type}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# segmenter


class SamSegmenter:
    """Box-prompted segmentation with a :class:`segment_anything.modeling.Sam` passed in.

    Args:
        model: a Sam with a 1024 input (any size: the published ones or a tiny test model).
        device: where it runs; the model is moved there.
        name: registry name recorded in outputs.
        normalization: ``"imagenet"`` (published: the model's pixel mean/std) or ``"unit"``
            (each 1024 image min-max scaled to [0, 1], MedSAM's own code).
        batch_size: slices per encoder pass (default 8 on CUDA, 1 on the CPU).
        precision: the image encoder's precision on CUDA: ``"fp32"`` (published), ``"bf16"``
            or ``"fp16"`` (autocast). The CPU always runs float32.
        workers: how many slice batches are prepared ahead of the encoder (default 4 on
            CUDA, 1 on the CPU).
        worker_kind: ``"process"`` (default on CUDA with several workers: a spawned process
            pool, so preparation runs in parallel with the encoder and itself) or
            ``"thread"`` (default otherwise).
        checkpoint_sha256: recorded in ``run.json``.
        zero_raw_zero: force voxels of exactly 0 HU to black, as the published code does.
        engine: how the image encoder runs on the CPU (``[run] engine``: ``torch`` or ``auto``
            run PyTorch, ``onnxruntime`` or ``openvino`` an exported graph; see
            :mod:`medlsam.engine`); CUDA always runs PyTorch.
        export_cache: where exported encoders are kept (default: the user cache folder).
        window: ``"medlsam"`` (float window resized, then clipped to uint8) or ``"published"``
            (the published slice exactly: :func:`medlsam.preprocess.sam_window_published`, then
            the order-2 resize; 0 HU black, int32 truncation before resizing).
    """

    def __init__(
        self,
        model: Sam,
        device: torch.device | str = "cpu",
        name: str = "sam",
        normalization: str = "imagenet",
        batch_size: int | None = None,
        precision: str = "fp32",
        workers: int | None = None,
        checkpoint_sha256: str | None = None,
        zero_raw_zero: bool = False,
        fast_encoder: bool = True,
        worker_kind: str | None = None,
        engine: str = "torch",
        export_cache: ExportCache | None = None,
        window: str = "medlsam",
    ) -> None:
        if model.image_encoder.img_size != FRAME:
            raise ValueError(f"SAM input size must be {FRAME}, not {model.image_encoder.img_size}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, not {normalization!r}"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if fast_encoder:
            # same parameters and outputs (within fp32 reordering), about 1.2x faster on CPU
            accelerate_image_encoder(self.model)
        self.name = name
        self.normalization = normalization
        cuda = self.device.type == "cuda"
        self.batch_size = max(1, int(batch_size or (8 if cuda else 1)))
        self.workers = max(1, int(workers or (min(4, os.cpu_count() or 1) if cuda else 1)))
        kind = worker_kind or ("process" if cuda and self.workers > 1 else "thread")
        if kind not in ("process", "thread"):
            raise ValueError(f"worker_kind must be 'process' or 'thread', not {kind!r}")
        self.worker_kind = kind
        #: the precision the encoder really runs in (``fp32`` on the CPU)
        self.precision = effective(precision, self.device)
        self.autocast_dtype = autocast_dtype(self.precision)
        self.checkpoint_sha256 = checkpoint_sha256
        self.zero_raw_zero = zero_raw_zero
        if window not in ("medlsam", "published"):
            raise ValueError(f"window must be 'medlsam' or 'published', not {window!r}")
        self.window = window
        self.stats = SegmenterStats()
        self._lock = threading.Lock()
        # ``auto`` keeps the fused PyTorch encoder: exporting ViT-B at 1024^2 to ONNX took more
        # than 8.5 GB RSS here (killed), over the 6 GB a default run may use
        self.engine = "torch" if engine == "auto" else resolve_engine(engine, self.device)
        #: what :meth:`encode` runs on normalised images ``(B, 3, 1024, 1024)`` -> embeddings
        #: ``(B, C, 64, 64)``: the model's image encoder, its inference-engine graph, or anything
        #: called like it (a wrapper that counts or replays it, as the benchmark's)
        self.encoder = (
            self.model.image_encoder
            if self.engine == "torch"
            else EngineEncoder(self.model.image_encoder, self.engine, export_cache)
        )
        #: what :meth:`decode` runs after the prompt encoder: the model's mask decoder, or
        #: anything called like it (keyword arguments, returns ``(low_res_masks, iou)``)
        self.decoder = self.model.mask_decoder
        self._processes: ProcessPoolExecutor | None = None

    #: SAM needs no support scans (it is prompted with boxes only)
    needs_supports = False

    def fit(self, supports: Sequence[tuple[Volume, Volume]], classes: Sequence[int]) -> None:
        """Nothing to learn: SAM is prompted by boxes only."""

    # -- the three network steps -------------------------------------------------------------

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1024, 1024, 3)`` uint8 (channels last) -> ``(B, 3, 1024, 1024)`` float32."""
        x = images.to(self.device).permute(0, 3, 1, 2).float()
        if self.normalization == "imagenet":
            return (x - self.model.pixel_mean) / self.model.pixel_std
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        return (x - lo) / torch.clamp(hi - lo, min=1e-8)

    @torch.inference_mode()
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Image embeddings ``(B, C, 64, 64)`` float32 of ``(B, 1024, 1024, 3)`` uint8 images."""
        with Stopwatch(self.device) as clock:  # synchronises CUDA at both ends
            x = self.normalize(torch.as_tensor(images))
            if self.autocast_dtype is not None:
                with torch.autocast("cuda", dtype=self.autocast_dtype):
                    emb = self.encoder(x)
            else:
                emb = self.encoder(x)
            emb = emb.float()
        self.stats.encoder_calls += int(x.shape[0])
        self.stats.encoder_batches += 1
        self.stats.add_time("encoder", clock.seconds)
        return emb

    @torch.inference_mode()
    def decode(
        self, embedding: torch.Tensor, boxes: np.ndarray, out_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """All boxes of one slice in one prompt-encoder + mask-decoder call.

        Args:
            embedding: ``(1, C, 64, 64)`` of the slice.
            boxes: ``(N, 4)`` XYXY in the 1024 frame.
            out_hw: the slice's own ``(H, W)``.

        Returns:
            probs ``(N, H, W)`` float32 (sigmoid, bilinear to 1024, nearest to ``(H, W)``) and
            the predicted IoU ``(N,)`` float32.
        """
        self._sync_for_timing()
        began = time.perf_counter()
        box_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32), device=self.device)
        sparse, dense = self.model.prompt_encoder(points=None, boxes=box_t, masks=None)
        low_res, iou = self.decoder(
            image_embeddings=embedding,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        prob = torch.sigmoid(low_res.float())
        prob = F.interpolate(prob, size=(FRAME, FRAME), mode="bilinear", align_corners=False)
        rows = torch.as_tensor(nearest_index(out_hw[0]), device=self.device)
        cols = torch.as_tensor(nearest_index(out_hw[1]), device=self.device)
        prob = prob[:, 0].index_select(1, rows).index_select(2, cols)
        out = prob.cpu().numpy(), iou[:, 0].float().cpu().numpy()  # .cpu() waits for CUDA
        self.stats.decoder_calls += 1
        self.stats.add_time("decoder", time.perf_counter() - began)
        return out

    def segment_slice(
        self, image: np.ndarray, boxes: np.ndarray, out_hw: tuple[int, int] = (FRAME, FRAME)
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment one ``(1024, 1024, 3)`` uint8 slice image with ``(N, 4)`` boxes (1024 frame).

        Returns masks ``(N, H, W)`` bool, scores ``(N,)`` and probs ``(N, H, W)`` float32.
        """
        emb = self.encode(np.asarray(image)[None])
        probs, scores = self.decode(emb, boxes, out_hw)
        self.stats.slices += 1
        self.stats.boxes += int(len(boxes))
        return probs > 0.5, scores, probs

    # -- whole volume ------------------------------------------------------------------------

    def _sync_for_timing(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def slice_image(
        self, volume: Volume, axis: int, index: int, lo: float, hi: float
    ) -> np.ndarray:
        """The published SAM input ``(1024, 1024, 3)`` uint8 of one slice.

        ``lo``/``hi`` are the volume's clipped minimum and maximum, so this equals
        ``sam_slice(slice_2d(sam_window(volume.data), axis, index))`` without windowing the
        whole volume.
        """
        began = time.perf_counter()
        image = sam_slice_from_hu(
            slice_2d(volume.data, axis, index), lo, hi, self.zero_raw_zero, self.window
        )
        with self._lock:  # called from worker threads
            self.stats.add_time("slice_preprocess", time.perf_counter() - began)
        return image

    def _pool(self) -> Executor:
        """The preparation pool: a process pool kept for the segmenter's life, or threads."""
        if self.worker_kind == "thread":
            return ThreadPoolExecutor(max_workers=self.workers)
        if self._processes is None:
            # spawn: never fork a process that holds CUDA state and torch's threads
            self._processes = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
            weakref.finalize(self, self._processes.shutdown, wait=False, cancel_futures=True)
        return self._processes

    def close(self) -> None:
        """Stop the preparation processes (a later :meth:`segment` starts new ones)."""
        if self._processes is not None:
            self._processes.shutdown(wait=True, cancel_futures=True)
            self._processes = None

    def segment(self, volume: Volume, requests: Sequence[SliceRequest]) -> Iterator[SliceResult]:
        """Segment every request of a query, encoding each requested slice exactly once."""
        if not requests:
            return
        axis = volume.slice_axis()
        row_axis, col_axis = slice_frame(volume.shape, axis)
        out_hw = (volume.shape[row_axis], volume.shape[col_axis])
        lo, hi = (float(np.clip(v, *SAM_WINDOW)) for v in (volume.data.min(), volume.data.max()))
        chunks = [
            requests[i : i + self.batch_size] for i in range(0, len(requests), self.batch_size)
        ]
        pool = self._pool()
        submit = self._submitter(pool, volume, axis, lo, hi)
        try:
            ahead = [submit(chunk) for chunk in chunks[: self.workers]]
            for n, chunk in enumerate(chunks):
                images = self._collect(ahead.pop(0))
                if n + self.workers < len(chunks):
                    ahead.append(submit(chunks[n + self.workers]))
                embeddings = self.encode(images)
                for k, request in enumerate(chunk):
                    if len(request) == 0:
                        raise ValueError(f"slice {request.index}: a request needs at least one box")
                    probs, scores = self.decode(embeddings[k : k + 1], request.boxes, out_hw)
                    self.stats.slices += 1
                    self.stats.boxes += len(request)
                    yield SliceResult(request.index, probs > 0.5, scores, probs)
                del embeddings
        finally:
            if isinstance(pool, ThreadPoolExecutor):
                pool.shutdown(wait=True, cancel_futures=True)

    def _submitter(self, pool: Executor, volume: Volume, axis: int, lo: float, hi: float):
        """``submit(chunk) -> Future`` of the chunk's images (and, from processes, seconds)."""
        if isinstance(pool, ThreadPoolExecutor):

            def prepare(chunk: Sequence[SliceRequest]) -> np.ndarray:
                return np.stack([self.slice_image(volume, axis, r.index, lo, hi) for r in chunk])

            return lambda chunk: pool.submit(prepare, chunk)

        def submit_to_process(chunk: Sequence[SliceRequest]):
            planes = np.stack([slice_2d(volume.data, axis, r.index) for r in chunk])
            return pool.submit(sam_slices_from_hu, planes, lo, hi, self.zero_raw_zero, self.window)

        return submit_to_process

    def _collect(self, future) -> np.ndarray:
        out = future.result()
        if isinstance(out, tuple):  # from a worker process: (images, seconds spent there)
            images, seconds = out
            self.stats.add_time("slice_preprocess", seconds)
            return images
        return out


def build_sam_segmenter(
    checkpoint: str | os.PathLike[str] | None,
    device: torch.device | str = "cpu",
    *,
    family: str = "sam",
    net_type: str = "vit_b",
    normalization: str = "imagenet",
    **options: object,
) -> SamSegmenter:
    """Build a SAM-family backend from a published checkpoint (``family`` sam or medsam).

    ``normalization`` applies to MedSAM only; SAM checkpoints always use ImageNet mean/std.
    """
    model = build_sam_model(net_type, checkpoint, device)
    sha = file_sha256(checkpoint) if checkpoint is not None else None
    norm = normalization if family == "medsam" else "imagenet"
    return SamSegmenter(
        model,
        device,
        name=f"{family}_{net_type}",
        normalization=norm,
        checkpoint_sha256=sha,
        **options,  # type: ignore[arg-type]
    )
