"""``medlsam-lists``: write support/query list files from image and label folders.

Usage::

    medlsam-lists --images IMG_DIR [IMG_DIR ...] --labels LAB_DIR [LAB_DIR ...] \
        --supports case_a,case_b --out configs/data/MYDATA

Images and labels are paired by case name (file name without extension). Cases named with
``--supports`` go to the support lists (in that order), every other case to the query lists
(``query_label.txt`` only when every query has a label). Exit codes as every medlsam command
(:mod:`medlsam.cli`): 2 for a support case without image or label, 3 for a missing folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medlsam.cli import EXIT_OK, add_common_arguments, run_main
from medlsam.errors import ConfigError, InputError
from medlsam.io import KNOWN_SUFFIXES, case_name, write_path_list


def _cases(folders: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder (expected a folder of images or labels)")
        for path in sorted(folder.iterdir()):
            if path.name.lower().endswith(KNOWN_SUFFIXES):
                found[case_name(path)] = path.resolve()
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlsam-lists",
        description="Write support_image/support_label/query_image/query_label list files "
        "from folders of images and labels (paired by case name).",
    )
    parser.add_argument("--images", nargs="+", type=Path, required=True, help="image folder(s)")
    parser.add_argument("--labels", nargs="+", type=Path, required=True, help="label folder(s)")
    parser.add_argument("--supports", required=True, help="comma-separated support case names")
    parser.add_argument("--out", type=Path, required=True, help="folder for the list files")
    add_common_arguments(parser)
    return parser


def _body(args: argparse.Namespace) -> int:
    images, labels = _cases(args.images), _cases(args.labels)
    supports = [s.strip() for s in args.supports.split(",") if s.strip()]
    missing = [s for s in supports if s not in images or s not in labels]
    if missing:
        raise ConfigError(f"--supports: case(s) without image or label: {', '.join(missing)}")
    unlabelled = sorted(set(images) - set(labels))
    queries = [c for c in sorted(images) if c not in supports]
    args.out.mkdir(parents=True, exist_ok=True)
    write_path_list(args.out / "support_image.txt", [images[c] for c in supports])
    write_path_list(args.out / "support_label.txt", [labels[c] for c in supports])
    write_path_list(args.out / "query_image.txt", [images[c] for c in queries])
    if not unlabelled:
        write_path_list(args.out / "query_label.txt", [labels[c] for c in queries])
    print(
        f"{len(supports)} supports, {len(queries)} queries written to {args.out}"
        + (f" ({len(unlabelled)} queries have no label: no query_label.txt)" if unlabelled else "")
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``medlsam-lists``; returns the exit code."""
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
