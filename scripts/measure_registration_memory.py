"""Memory the registration localizer holds for the supports' warped organ masks of one query.

Each support's organ mask (on the query's padded 3 mm grid) is reduced to its points on
arrival, plus one per-voxel count per organ when ``vote`` fusion is asked for; this script
measures what that holds (Python's ``tracemalloc``, which traces numpy's buffers) after the
supports of one query are gathered, and the peak while gathering, for ``median`` alone and
for ``median`` + ``vote``. The registrations themselves run once and are reused.

Data: a synthetic cohort (``medlsam.synth``, seed 7, default phantom size), ``--supports``
supports and one query, all organs, WPL.

Usage (from the repository root)::

    python scripts/measure_registration_memory.py [--supports 5] [--refine none|organ|both]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from medlsam.config import REGISTRATION_REFINES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supports", type=int, default=5)
    parser.add_argument("--refine", choices=REGISTRATION_REFINES, default="none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from medlsam.config import load_config
    from medlsam.io import read_image, read_label
    from medlsam.localization.registration import Frame, RegistrationLocalizer
    from medlsam.preprocess import PAD, medlam_image
    from medlsam.synth import make_cohort

    with tempfile.TemporaryDirectory() as tmp:
        make_cohort(Path(tmp), args.supports + 1, args.supports, seed=7)
        data = load_config(Path(tmp) / "config.txt").data
        loc = RegistrationLocalizer(refine=args.refine, workers=1)  # tracemalloc sees this process
        pairs = zip(data.support_images, data.support_labels, strict=True)
        loc.fit([(read_image(i), read_label(lab)) for i, lab in pairs], list(data.fg_class))
        query = read_image(data.query_images[0])
    grid = medlam_image(query, "linear")
    frame = Frame.of(query, grid)
    matches = {id(a): loc.registrar.register(grid.array, frame, a) for a in loc.atlases}
    loc.registrar.register = lambda q, f, atlas, levels=None: matches[id(atlas)]  # again
    shape = tuple(n + 2 * PAD for n in grid.array.shape)
    print(
        f"{args.supports} supports, {len(loc.classes)} organs, refine {args.refine}, "
        f"padded query grid {shape}"
    )
    for fusions in (("median",), ("median", "vote")):
        tracemalloc.start()
        gathered = loc.support_organs(grid, frame, fusions)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        masks = sum(len(g.points) for g in gathered.values())
        whole = masks * int(np.prod(shape)) / 1e6
        print(
            f"{'+'.join(fusions)}: {masks} warped masks; held {held / 1e6:.1f} MB after "
            f"gathering (whole bool masks: {whole:.1f} MB), peak {peak / 1e6:.1f} MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
