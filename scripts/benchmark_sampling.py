"""Sampled timing for ``scripts/benchmark.py --sample N``: run the first ``N`` network calls of
each kind for real and replay their outputs for the rest, pricing each replayed item at the
mean measured seconds per item of its kind.

Why: on 2 CPU cores the default WORD-like case needs thousands of full-width MedLAM patches
(5-15 s each) and about 150 ViT-B encoder calls (~20-40 s each): hours. Everything else in the
run stays real (reading, resampling, support points, de-duplication, FFT matching, slice
preprocessing, assembly, writing), and the replayed calls are still made, just not computed,
so the counts are those of the run: prototype patches (points come from the support labels),
encoder and decoder calls (boxes come from the query labels when MedLAM has random weights)
and forward passes are exact, and so are the query's refinement patches when its coarse points
come from its labels (random weights, the benchmark's default); with trained weights and
replayed support codes they may differ from a full run's by how many points coincide. With
random weights the outputs carry no information anyway; replayed ones are copies of measured
ones, so shapes and dtypes downstream are unchanged.

The projection is checked against a full run on the ``--quick`` case (README, Speed).

Kinds: fc-only MedLAM calls (the 10 initial patches of a query and any further
relative-distance steps; one encoder pass each, the cheapest kind) always run for real, so the
query's coarse points, and with them which refinement patches are distinct, are those of a full
run. The other MedLAM calls are keyed by what they compute (fc head and which feature scales), so a
prototype patch (fc + all scales), an initial query patch (fc only) and a refinement patch
(scales only) are each priced at their own measured cost. SAM encoder calls are priced per
image, decoder calls per call (one call decodes all boxes of one slice).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Kind:
    """Measured and replayed work of one kind of call."""

    real_calls: int = 0
    real_items: int = 0
    real_seconds: float = 0.0
    warmup_calls: int = 0
    warmup_seconds: float = 0.0
    replayed_items: int = 0
    cached: object = None

    @property
    def seconds_per_item(self) -> float:
        return self.real_seconds / max(1, self.real_items)

    @property
    def projected_seconds(self) -> float:
        return self.replayed_items * self.seconds_per_item


@dataclass
class Sampler:
    """Runs the first ``sample`` calls of every kind, replays the rest (see module docstring).

    ``stage`` names the benchmark stage the next calls belong to; replayed seconds are summed
    per stage in :attr:`projected`. The first ``warmup`` calls of each kind (default: 1 on
    CUDA, where a first call pays for kernel selection and lazy initialisation; 0 on the CPU)
    run for real but do not enter the price of replayed calls.
    """

    sample: int
    cuda: bool = False
    warmup: int | None = None
    stage: str = "other"
    enabled: bool = True
    always: frozenset[str] = frozenset()
    kinds: dict[str, Kind] = field(default_factory=dict)
    projected: dict[str, float] = field(default_factory=dict)

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def call(self, key: str, items: int, compute: Callable[[], object], replay) -> object:
        """``compute()`` for real while ``key`` has fewer than ``sample`` real calls (or
        nothing to replay yet), else ``replay(cached, items)``."""
        if not self.enabled:
            return compute()
        kind = self.kinds.setdefault(key, Kind())
        warmup = self.warmup if self.warmup is not None else (1 if self.cuda else 0)
        if kind.warmup_calls < warmup and key not in self.always:
            began = self._now()
            out = compute()
            kind.warmup_seconds += self._now() - began
            kind.warmup_calls += 1
            return out
        if key in self.always or kind.real_calls < self.sample or kind.cached is None:
            began = self._now()
            out = compute()
            kind.real_seconds += self._now() - began
            kind.real_calls += 1
            kind.real_items += items
            kind.cached = out
            return out
        kind.replayed_items += items
        self.projected[self.stage] = (
            self.projected.get(self.stage, 0.0) + items * kind.seconds_per_item
        )
        return replay(kind.cached, items)

    def seconds_per_item(self, key: str) -> float | None:
        kind = self.kinds.get(key)
        return None if kind is None or kind.real_items == 0 else kind.seconds_per_item

    def report(self) -> dict:
        return {
            "sample_calls_per_kind": self.sample,
            "kinds": {
                key: {
                    "warmup_calls": k.warmup_calls,
                    "warmup_seconds": round(k.warmup_seconds, 3),
                    "real_calls": k.real_calls,
                    "real_items": k.real_items,
                    "real_seconds": round(k.real_seconds, 3),
                    "replayed_items": k.replayed_items,
                    "seconds_per_item": round(k.seconds_per_item, 4),
                }
                for key, k in self.kinds.items()
            },
            "projected_seconds_per_stage": {s: round(v, 3) for s, v in self.projected.items()},
        }


def _rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``tensor`` (cycled when it has fewer)."""
    if tensor.shape[0] >= n:
        return tensor[:n]
    return tensor[torch.arange(n) % tensor.shape[0]]


def medlam_key(fc: bool, features) -> str:
    """The kind of a MedLAM call, e.g. ``medlam_fc+feature0+feature1``."""
    return ("medlam_fc" if fc else "medlam") + "".join(f"+{f}" for f in features)


def sample_medlam(model: torch.nn.Module, sampler: Sampler) -> None:
    """Route ``model``'s forward through ``sampler`` (keyed by fc and feature scales)."""
    forward = model.forward

    def sampled(x, fc=True, features=()):
        key = medlam_key(fc, features)
        return sampler.call(
            key,
            int(x.shape[0]),
            lambda: forward(x, fc=fc, features=features),
            lambda cached, n: {k: _rows(v, n) for k, v in cached.items()},
        )

    model.forward = sampled  # type: ignore[method-assign]


def sample_sam(segmenter, sampler: Sampler) -> None:
    """Route a :class:`~medlsam.segment.SamSegmenter`'s image encoder and per-slice decoder
    through ``sampler`` (stages ``encoder`` and ``decoder``)."""
    import numpy as np

    encode = segmenter.encoder  # the image encoder, or its inference-engine graph
    decode = segmenter.decode

    def sampled_encode(x):
        sampler.stage = "encoder"
        return sampler.call(
            "sam_encoder", int(x.shape[0]), lambda: encode(x), lambda c, n: _rows(c, n)
        )

    def sampled_decode(embedding, boxes, out_hw):
        sampler.stage = "decoder"

        def replay(cached, n):
            probs, _ = cached
            segmenter.stats.decoder_calls += 1
            return np.zeros((len(boxes), *probs.shape[1:]), np.float32), np.zeros(
                len(boxes), np.float32
            )

        return sampler.call("sam_decoder", 1, lambda: decode(embedding, boxes, out_hw), replay)

    segmenter.encoder = sampled_encode
    segmenter.decode = sampled_decode
