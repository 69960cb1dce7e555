"""How well SAM slice preparation overlaps the image encoder (threads vs worker processes).

Each segmented slice is windowed and resized to 1024x1024 with the published order-2 spline
(about 0.1 s of CPU for a 512x512 slice, holding the GIL). On a GPU the encoder takes a few
tens of ms per slice and waits on the device without holding the GIL, so preparation can
bound the run. This script runs :meth:`SamSegmenter.segment` on a synthetic 512x512 volume with
the encoder replaced by a stand-in that sleeps (as a thread waiting on CUDA does: GIL
released) for ``--encoder-ms`` per slice, and reports for each preparation layout the wall time
and how much of the preparation was hidden behind the encoder::

    python scripts/measure_slice_overlap.py [--slices 32] [--batch 4] [--encoder-ms 40]
        [--workers 1 2 4] [--json FILE]

``hidden`` = (prep + encoder - wall) / prep, where ``prep`` is the serial preparation time of
the same slices measured first: 1 means preparation cost nothing extra, 0 that it ran serially.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segment_anything import sam_model_registry  # noqa: E402

from medlsam.io import Volume  # noqa: E402
from medlsam.preprocess import SAM_WINDOW, sam_slice_from_hu, slice_2d  # noqa: E402
from medlsam.segment import SamSegmenter, SliceRequest  # noqa: E402


class StandInEncoder(SamSegmenter):
    """SamSegmenter whose encoder sleeps ``seconds_per_slice`` (GIL released) and whose
    decoder returns empty masks, so only slice preparation does real work."""

    seconds_per_slice = 0.04

    def encode(self, images):
        time.sleep(self.seconds_per_slice * len(images))
        self.stats.encoder_calls += len(images)
        return torch.zeros(len(images), 1)

    def decode(self, embedding, boxes, out_hw):
        n = len(boxes)
        return np.zeros((n, *out_hw), np.float32), np.zeros(n, np.float32)


def synthetic_volume(slices: int, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 300, (512, 512, slices)).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    return Volume(data=data, affine=affine)


def measure(args: argparse.Namespace) -> dict:
    volume = synthetic_volume(args.slices)
    axis = volume.slice_axis()
    requests = [
        SliceRequest(k, np.array([[100.0, 100, 900, 900]]), np.array([1]), np.array([0]))
        for k in range(args.slices)
    ]
    lo, hi = (float(np.clip(v, *SAM_WINDOW)) for v in (volume.data.min(), volume.data.max()))
    began = time.perf_counter()
    for k in range(args.slices):
        sam_slice_from_hu(slice_2d(volume.data, axis, k), lo, hi)
    prep = time.perf_counter() - began
    encoder = args.encoder_ms / 1000 * args.slices
    with torch.device("meta"):
        model = sam_model_registry["vit_b"]().to_empty(device="cpu")  # never run: no init
    rows = []
    for kind in args.kinds:
        for workers in args.workers:
            seg = StandInEncoder(
                model,
                "cpu",
                batch_size=args.batch,
                workers=workers,
                worker_kind=kind,
                fast_encoder=False,
            )
            seg.seconds_per_slice = args.encoder_ms / 1000
            if kind == "process":  # start the pool (spawn + imports) outside the timing
                list(seg.segment(volume, requests[: args.batch * workers]))
            began = time.perf_counter()
            for _ in seg.segment(volume, requests):
                pass
            wall = time.perf_counter() - began
            seg.close()
            hidden = (prep + encoder - wall) / prep
            rows.append(
                {
                    "kind": kind,
                    "workers": workers,
                    "wall_s": round(wall, 2),
                    "hidden": round(hidden, 2),
                }
            )
            print(
                f"{kind:8s} workers {workers}: wall {wall:6.2f} s, preparation hidden {hidden:5.2f}"
            )
    return {
        "slices": args.slices,
        "batch": args.batch,
        "prep_serial_s": round(prep, 2),
        "prep_per_slice_s": round(prep / args.slices, 3),
        "encoder_s": round(encoder, 2),
        "serial_s": round(prep + encoder, 2),
        "layouts": rows,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--encoder-ms", type=float, default=40.0, help="stand-in encoder ms per slice")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--kinds", nargs="+", default=["thread", "process"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = measure(args)
    print(
        f"serial: preparation {out['prep_serial_s']} s ({out['prep_per_slice_s']} s/slice) + "
        f"encoder {out['encoder_s']} s = {out['serial_s']} s"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
