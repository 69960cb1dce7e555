"""The segmenter's work counters: per-case shares are differences of cumulative counters."""

from __future__ import annotations

import numpy as np

from medlsam.segment.base import SegmenterStats, SliceRequest


def test_counters_and_timers_add_copy_and_subtract():
    stats = SegmenterStats(slices=3, boxes=5, encoder_calls=3, encoder_batches=1, decoder_calls=3)
    stats.add_time("encode", 1.5)
    stats.add_time("encode", 0.25)
    stats.add_time("decode", 2.0)
    assert stats.seconds == {"encode": 1.75, "decode": 2.0}
    before = stats.copy()
    stats.slices += 4
    stats.boxes += 6
    stats.encoder_calls += 4
    stats.encoder_batches += 2
    stats.decoder_calls += 4
    stats.add_time("encode", 1.0)
    stats.add_time("mask", 0.5)
    assert before.seconds == {"encode": 1.75, "decode": 2.0}  # the copy does not follow
    share = stats - before
    assert (share.slices, share.boxes, share.encoder_calls) == (4, 6, 4)
    assert (share.encoder_batches, share.decoder_calls) == (2, 4)
    assert share.seconds == {"encode": 1.0, "decode": 0.0, "mask": 0.5}


def test_as_dict_rounds_seconds_to_a_tenth_of_a_millisecond():
    stats = SegmenterStats(slices=2, boxes=3, encoder_calls=2, encoder_batches=1, decoder_calls=2)
    stats.add_time("encode", 0.123456)
    assert stats.as_dict() == {
        "slices": 2,
        "boxes": 3,
        "encoder_calls": 2,
        "encoder_batches": 1,
        "decoder_calls": 2,
        "seconds": {"encode": 0.1235},
    }


def test_request_length_is_its_number_of_boxes():
    request = SliceRequest(4, np.zeros((3, 4)), np.array([1, 2, 3]), np.zeros(3, np.int64))
    assert len(request) == 3
