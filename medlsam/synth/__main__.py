"""``python -m medlsam.synth``: write a synthetic CT cohort (phantoms, or deformed copies of one
real CT with ``--from``), its list files and a ready ``config.txt``."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from medlsam.errors import InputError, MedlsamError

_CLASS_ITEM = re.compile(r"^\s*(\d+)\s*(?:[:=]\s*([A-Za-z0-9_.\-]+))?\s*$")


def parse_classes(text: str) -> dict[int, str | None]:
    """``"1,2,5"`` or ``"5:liver,1:spleen"`` -> ``{id: name or None}`` (order kept)."""
    classes: dict[int, str | None] = {}
    for item in text.split(","):
        match = _CLASS_ITEM.match(item)
        if not match or int(match.group(1)) < 1:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r} in {text!r}: expected class ids > 0, optionally with names, "
                "e.g. 1,2,5 or 5:liver,1:spleen"
            )
        cid = int(match.group(1))
        if cid in classes:
            raise argparse.ArgumentTypeError(f"class {cid} is given twice in {text!r}")
        classes[cid] = match.group(2)
    return classes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medlsam.synth",
        description=(
            "Write a synthetic CT cohort: image/label NIfTI pairs under OUT/images and "
            "OUT/labels, the list files OUT/{support,query}_{image,label}.txt (the first K "
            "subjects are supports) and OUT/config.txt. Without --from, procedural abdominal "
            "phantoms with labels 1 liver, 2 spleen, 3 kidney_right, 4 kidney_left, 5 stomach, "
            "6 aorta, 7 bladder, 8 vertebra_L1, 9 gallbladder, 10 pancreas."
        ),
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=_positive, default=10, help="number of subjects (default 10)")
    parser.add_argument(
        "--supports",
        type=_positive,
        default=5,
        help="how many of them are supports, the first K (default 5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--from",
        dest="source",
        nargs=2,
        metavar=("IMAGE", "LABEL"),
        help="deform this real CT and its label map instead of drawing phantoms",
    )
    parser.add_argument(
        "--shape",
        nargs=3,
        type=_positive,
        metavar=("NX", "NY", "NZ"),
        help="phantom grid: NX x NY voxels in plane, about NZ slices (default 128 128 100)",
    )
    parser.add_argument(
        "--classes",
        type=parse_classes,
        help="label ids to keep, optionally named, e.g. 5:liver,1:spleen "
        "(default: all; with --from, every id in LABEL named class_<id>)",
    )
    parser.add_argument(
        "--orientations",
        default=None,
        help="comma-separated axis codes used in turn (default RAS,LPS,LAS,PLS,LPI,RPS)",
    )
    parser.add_argument(
        "--medlam",
        default=None,
        metavar="PATH",
        help="MedLAM checkpoint to name in [weight] medlam_load_path",
    )
    parser.add_argument("--prefix", default="synth", help="file name prefix (default synth)")
    # the same switches as the medlsam commands (medlsam.cli sits above synth; not imported)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return parser


def _run(args: argparse.Namespace) -> int:
    from medlsam.synth import DEFAULT_ORIENTATIONS, DEFAULT_SHAPE, make_cohort, make_cohort_from

    orientations = (
        tuple(c.strip() for c in args.orientations.split(",") if c.strip())
        if args.orientations
        else DEFAULT_ORIENTATIONS
    )
    common = dict(
        classes=args.classes, orientations=orientations, medlam=args.medlam, prefix=args.prefix
    )
    if args.source and args.shape:
        raise InputError("--shape: only for phantoms; with --from the grid is the source CT's")
    if args.source:
        cohort = make_cohort_from(
            args.source[0], args.source[1], args.out, args.n, args.supports, args.seed, **common
        )
    else:
        shape = tuple(args.shape) if args.shape else DEFAULT_SHAPE
        cohort = make_cohort(args.out, args.n, args.supports, args.seed, shape=shape, **common)
    print(
        f"wrote {len(cohort.subjects)} subjects to {cohort.out} "
        f"({len(cohort.supports)} support, {len(cohort.queries)} query):"
    )
    for s in cohort.subjects:
        shape_text = "x".join(str(v) for v in s.shape)
        spacing_text = "x".join(f"{v:.2f}" for v in s.spacing)
        print(
            f"  {s.name}  {s.role:<7}  {shape_text:<12} {spacing_text} mm  {s.axcodes}  "
            f"{len(s.organs)} organs  images/{s.image.name}  labels/{s.label.name}"
        )
    print("classes: " + ", ".join(f"{c} {name}" for c, name in cohort.classes.items()))
    print("lists:   " + "  ".join(p.name for p in cohort.lists.values()))
    print(f"config:  {cohort.config}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (a user error: one line on stderr, its exit code)."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", force=True)
    try:
        return _run(args)
    except MedlsamError as err:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
