"""SAM's image encoder through a CPU inference engine (:mod:`medlsam.engine`).

:class:`EngineEncoder` is called like the encoder: ``(B, 3, 1024, 1024)`` float32 in,
``(B, C, 64, 64)`` out. The encoder is exported once (batch 1, looped over the batch: the CPU
encodes one slice at a time) and cached on disk by its weights' sha256. The export always
traces the stock ``segment_anything`` forward (the fused-attention forward of
:mod:`medlsam.segment.fast` writes into preallocated tensors, which ONNX cannot express; the
engines fuse attention themselves).
"""

from __future__ import annotations

import torch
from torch import nn

from medlsam.engine import Graph, compiled_graph, state_sha256
from medlsam.export_cache import ExportCache
from medlsam.segment.fast import accelerate_image_encoder, is_accelerated, restore_image_encoder


class EngineEncoder:
    """``encoder`` (a ``segment_anything`` ``ImageEncoderViT``, stock or fast) run by ``engine``."""

    def __init__(self, encoder: nn.Module, engine: str, cache: ExportCache | None = None) -> None:
        self.encoder = encoder
        self.engine = engine
        self.cache = cache
        self._graph: Graph | None = None

    @property
    def size(self) -> int:
        return int(self.encoder.img_size)

    def graph(self) -> Graph:
        """The exported encoder (exported on first use, then read from the cache)."""
        if self._graph is None:
            example = torch.zeros(1, 3, self.size, self.size)
            fast = is_accelerated(self.encoder)
            restore_image_encoder(self.encoder)  # in place, for the export only
            try:
                self._graph = compiled_graph(
                    self.engine,
                    self.encoder,
                    example,
                    f"sam-encoder-{self.size}",
                    ["embedding"],
                    state_sha256(self.encoder),
                    cache=self.cache,
                    extra={"module": type(self.encoder).__name__},
                    dynamic_batch=False,
                )
            finally:
                if fast:
                    accelerate_image_encoder(self.encoder)
        return self._graph

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or tuple(x.shape[1:]) != (3, self.size, self.size)
        ):
            return self.encoder(x)
        graph = self.graph()
        parts = [torch.from_numpy(graph(x[i : i + 1].numpy())[0]) for i in range(len(x))]
        return torch.cat(parts)
