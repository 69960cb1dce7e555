"""Sampled timing for ``python -m medlsam.bench --sample N``: run the first ``N`` network calls
of each kind for real and replay their outputs for the rest, pricing each replayed item at the
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

How: the networks are wrapped, not patched. :class:`SampledNetwork` is called like the network
it holds and is what the stages are given: the MedLAM passed to the localizer's builder
(:func:`medlsam.pipeline.setup.build_localizer`), and the segmenter's ``encoder`` and
``decoder`` (:class:`~medlsam.segment.sam.SamSegmenter`), the image encoder and mask decoder
that its ``encode`` and ``decode`` run.

Kinds: fc-only MedLAM calls (the 10 initial patches of a query and any further
relative-distance steps; one encoder pass each, the cheapest kind) always run for real, so the
query's coarse points, and with them which refinement patches are distinct, are those of a full
run. The other MedLAM calls are keyed by what they compute (fc head and which feature scales), so a
prototype patch (fc + all scales), an initial query patch (fc only) and a refinement patch
(scales only) are each priced at their own measured cost. SAM encoder calls are priced per
image, decoder calls per call (one call decodes all boxes of one slice; a replayed decoder
call still runs the prompt encoder and the up-sampling to the slice, which are counted as
measured).
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

    def call(
        self,
        key: str,
        items: int,
        compute: Callable[[], object],
        replay: Callable[[object, int], object],
        stage: str | None = None,
    ) -> object:
        """``compute()`` for real while ``key`` has fewer than ``sample`` real calls (or
        nothing to replay yet), else ``replay(cached, items)``, priced into ``stage`` (default:
        :attr:`stage`)."""
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
        stage = stage or self.stage
        self.projected[stage] = self.projected.get(stage, 0.0) + items * kind.seconds_per_item
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


def rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``tensor`` (cycled when it has fewer)."""
    if tensor.shape[0] >= n:
        return tensor[:n]
    return tensor[torch.arange(n, device=tensor.device) % tensor.shape[0]]


def medlam_key(fc: bool, features) -> str:
    """The kind of a MedLAM call, e.g. ``medlam_fc+feature0+feature1``."""
    return ("medlam_fc" if fc else "medlam") + "".join(f"+{f}" for f in features)


def _replay_outputs(cached: object, n: int) -> object:
    """``n`` rows of a cached output: a tensor, a dict or a tuple of them (the first axis of
    every tensor is the batch)."""
    if isinstance(cached, torch.Tensor):
        return rows(cached, n)
    if isinstance(cached, dict):
        return {k: _replay_outputs(v, n) for k, v in cached.items()}
    if isinstance(cached, tuple):
        return tuple(_replay_outputs(v, n) for v in cached)
    raise TypeError(f"cannot replay a {type(cached).__name__}")


class SampledNetwork:
    """``network`` called through a :class:`Sampler`: the first calls of each kind run, the
    others replay (module docstring). Called like ``network``; every other attribute is the
    network's (``base_chns``, ``checkpoint_sha256``, ``state_dict``, ...), so prototypes and
    records name the same weights.

    Args:
        network: the callable (MedLAM, an image encoder, a mask decoder, or an engine's wrapper
            of one).
        sampler: shared by every network of a run.
        kind: ``"medlam"`` (keyed by fc head and feature scales, items = patches), or a fixed
            key (``"sam_encoder"``: items = images; ``"sam_decoder"``: one item per call).
        stage: the benchmark stage replayed seconds go to (None: the sampler's current one).
    """

    def __init__(self, network, sampler: Sampler, kind: str, stage: str | None = None) -> None:
        self.network, self.sampler, self.kind, self.stage = network, sampler, kind, stage

    def __getattr__(self, name: str):
        return getattr(self.__dict__["network"], name)

    def __call__(self, *args, **kwargs):
        if self.kind == "sam_decoder":  # keyword arguments; one call, one output row per box
            key, items = self.kind, 1
            out_rows = int(kwargs["sparse_prompt_embeddings"].shape[0])
        else:  # a batch of patches or images: one item and one output row each
            items = out_rows = int(args[0].shape[0])
            key = self.kind
            if self.kind == "medlam":
                key = medlam_key(kwargs.get("fc", True), kwargs.get("features", ()))
        return self.sampler.call(
            key,
            items,
            lambda: self.network(*args, **kwargs),
            lambda cached, n: _replay_outputs(cached, out_rows),
            stage=self.stage,
        )
