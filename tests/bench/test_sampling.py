"""Sampled timing (python -m medlsam.bench --sample N): exact counts, replayed outputs."""

from __future__ import annotations

import numpy as np
import torch
from conftest import make_ct
from infer_helpers import tiny_sam

from medlsam.bench.sampling import SampledNetwork, Sampler, medlam_key
from medlsam.localization.localizer import Localizer
from medlsam.localization.network import MedLAM
from medlsam.segment import SamSegmenter, SliceRequest


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
        network = SampledNetwork(model, sampler, "medlam") if sample else model
        loc = Localizer(network, "cpu", feature_scales=("feature0",), seed=1, batch_size=2)
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


def test_sampled_network_keeps_the_network_attributes():
    model = MedLAM(2).eval()
    wrapped = SampledNetwork(model, Sampler(1), "medlam")
    assert wrapped.base_chns == 2 and wrapped.feature_chns == model.feature_chns
    assert wrapped.state_dict().keys() == model.state_dict().keys()


def test_sampled_segmenter_counts_every_call_and_replays_the_rest(one_thread):
    image, _ = make_ct()
    box = np.array([[100.0, 100.0, 900.0, 900.0], [200.0, 150.0, 700.0, 800.0]])
    requests = [
        SliceRequest(k, box[: 1 + k % 2], np.array([1, 2][: 1 + k % 2]), np.zeros(1 + k % 2))
        for k in range(4, 9)
    ]
    seg = SamSegmenter(tiny_sam())
    sampler = Sampler(2)
    seg.encoder = SampledNetwork(seg.encoder, sampler, "sam_encoder", "encoder")
    seg.decoder = SampledNetwork(seg.decoder, sampler, "sam_decoder", "decoder")
    results = list(seg.segment(image, requests))
    assert [r.masks.shape[0] for r in results] == [len(r) for r in requests]
    assert seg.stats.encoder_calls == 5 and seg.stats.decoder_calls == 5
    enc, dec = sampler.kinds["sam_encoder"], sampler.kinds["sam_decoder"]
    assert (enc.real_calls, enc.replayed_items) == (2, 3)
    assert (dec.real_calls, dec.replayed_items) == (2, 3)
    assert set(sampler.projected) == {"encoder", "decoder"}
    assert sampler.projected["encoder"] == 3 * enc.seconds_per_item
