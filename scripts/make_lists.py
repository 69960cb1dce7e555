"""Write support/query list files from image and label folders.

Images and labels are paired by case name (file name without extension). Cases named with
``--supports`` go to the support lists (in that order), every other case to the query lists.

    python scripts/make_lists.py --images IMG_DIR [IMG_DIR ...] --labels LAB_DIR [LAB_DIR ...] \
        --supports case_a,case_b --out configs/data/MYDATA
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medlsam.io import KNOWN_SUFFIXES, case_name, write_path_list


def _cases(folders: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.name.lower().endswith(KNOWN_SUFFIXES):
                found[case_name(path)] = path.resolve()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", type=Path, required=True)
    parser.add_argument("--labels", nargs="+", type=Path, required=True)
    parser.add_argument("--supports", required=True, help="comma-separated support case names")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    images, labels = _cases(args.images), _cases(args.labels)
    supports = [s.strip() for s in args.supports.split(",") if s.strip()]
    missing = [s for s in supports if s not in images or s not in labels]
    if missing:
        print(
            f"make_lists: support case(s) without image or label: {', '.join(missing)}",
            file=sys.stderr,
        )
        return 2
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
