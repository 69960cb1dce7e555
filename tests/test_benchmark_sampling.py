"""Sampled timing of scripts/benchmark.py (--sample N): exact counts, replayed outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import make_ct

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchmark_sampling import Sampler, medlam_key, sample_medlam  # noqa: E402

from medlsam.localization.localizer import Localizer  # noqa: E402
from medlsam.localization.network import MedLAM  # noqa: E402


def test_sampler_runs_n_calls_and_prices_the_rest():
    sampler = Sampler(sample=2, stage="s")
    computed = []

    def compute():
        computed.append(1)
        return torch.ones(3, 2)

    outs = [sampler.call("k", 3, compute, lambda c, n: c[:n] * 0) for _ in range(5)]
    assert len(computed) == 2  # two real calls, three replays
    assert outs[0].sum() == 6 and outs[4].sum() == 0
    kind = sampler.kinds["k"]
    assert kind.real_items == 6 and kind.replayed_items == 9
    assert sampler.projected["s"] == 9 * kind.seconds_per_item
    sampler.enabled = False
    sampler.call("k", 3, compute, lambda c, n: c)
    assert len(computed) == 3 and sampler.kinds["k"].replayed_items == 9


def test_warmup_calls_run_but_do_not_price_replayed_calls():
    import time

    sampler = Sampler(sample=2, stage="s", warmup=1)
    costs = iter([0.3, 0.01, 0.01])  # a slow first call, as on CUDA

    def compute():
        time.sleep(next(costs))
        return torch.ones(1)

    for _ in range(6):
        sampler.call("k", 1, compute, lambda c, n: c)
    kind = sampler.kinds["k"]
    assert kind.warmup_calls == 1 and kind.real_calls == 2 and kind.replayed_items == 3
    assert kind.warmup_seconds >= 0.3 and kind.warmup_seconds > 2 * kind.seconds_per_item
    assert Sampler(sample=1, cuda=True).warmup is None  # resolved per call: 1 on CUDA
    assert sampler.report()["kinds"]["k"]["warmup_calls"] == 1


def test_sampled_localizer_counts_the_same_work(one_thread):
    image, label = make_ct()
    counts = []
    for sample in (None, 1):
        torch.manual_seed(0)
        model = MedLAM(2).eval()
        sampler = Sampler(sample or 0, always=frozenset({medlam_key(True, ())}))
        if sample:
            sample_medlam(model, sampler)
        loc = Localizer(model, "cpu", feature_scales=("feature0",), seed=1, batch_size=2)
        loc.fit([(image, label)], [1, 2])
        fit_patches = loc.stats["patches"]
        loc.predict(image)
        points = sum(len(p.fc) for p in loc.prototypes.classes.values())
        query_patches = loc.stats["patches"] - fit_patches
        assert 10 < query_patches <= 10 + points
        counts.append(fit_patches)
    assert counts[0] == counts[1]  # support points come from the labels: exact
    fit_kind = sampler.kinds[medlam_key(True, ("feature0",))]
    assert fit_kind.real_calls == 1 and fit_kind.replayed_items > 0
    assert (
        sum(k.real_items + k.replayed_items for k in sampler.kinds.values())
        == (loc.stats["patches"])
    )
