"""``medlsam-weights``: list the published checkpoints, fetch one on request, verified.

Usage::

    medlsam-weights list
    medlsam-weights download NAME [--from URL_OR_FILE] [--sha256 HEX] [--dest DIR]

``download`` streams the file with a progress bar to a temporary ``.NAME.part`` beside its
destination, resumes an interrupted transfer (HTTP ``Range``; run the same command again),
checks the sha256 before renaming it into place, and on a mismatch exits 4 with one line and
keeps nothing. A published checkpoint without a known checksum needs ``--sha256``, one without
a direct link needs ``--from``; any other NAME is a file name of the user's and needs both.
This command is the only way medlsam downloads anything.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from medlsam.cli import EXIT_OK, add_common_arguments, run_main
from medlsam.errors import ConfigError

_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def _sha256(text: str) -> str:
    if not _HEX.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 64 hexadecimal digits")
    return text.lower()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlsam-weights",
        description="List the published checkpoints and fetch one, verified by sha256.",
    )
    add_common_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="name, size, sha256, source, licence, destination")
    get = commands.add_parser("download", help="fetch one checkpoint, verified")
    get.add_argument("name", help="a name of `medlsam-weights list`, or a file name of yours")
    get.add_argument("--from", dest="source", help="http(s) URL or local file to fetch from")
    get.add_argument("--sha256", type=_sha256, help="expected sha256 (64 hex digits)")
    get.add_argument(
        "--dest", type=Path, default=Path("checkpoint"), help="folder (default: ./checkpoint)"
    )
    get.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def list_table() -> str:
    """The registry as a Markdown table (the demo first, with its real size and sha256)."""
    from medlsam.weights import REGISTRY, demo_checkpoint, sha256_of

    rows = [("name", "file", "size", "sha256", "source", "licence", "destination")]
    demo = demo_checkpoint()
    rows.append(
        (
            "demo",
            demo.name,
            f"{demo.stat().st_size:,} bytes",
            sha256_of(demo),
            "ships inside medlsam (scripts/train_demo_checkpoint.sh)",
            "Apache-2.0",
            "in the package: medlam_load_path = demo",
        )
    )
    for c in REGISTRY.values():
        sha = c.sha256 or "unknown: give --sha256"
        source = c.source + (f", {c.url}" if c.url else ": no direct link, give --from")
        rows.append((c.name, c.file, c.size, sha, source, c.licence, f"checkpoint/{c.file}"))
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(rows[0]))
    return "\n".join(lines)


def _plan(args: argparse.Namespace) -> tuple[str, Path, str]:
    """(source, destination file, sha256) for ``download``, or a one-line ConfigError."""
    from medlsam.weights import DEMO, REGISTRY

    if args.name == DEMO:
        raise ConfigError(
            "demo: ships inside medlsam; nothing to download (medlam_load_path = demo)"
        )
    known = REGISTRY.get(args.name)
    if known is None and "/" in args.name:
        raise ConfigError(f"{args.name!r}: expected a name, not a path (use --dest for the folder)")
    source = args.source or (known.url if known else None)
    sha = args.sha256 or (known.sha256 if known else None)
    names = ", ".join(REGISTRY)
    if source is None:
        why = "has no direct download link" if known else f"is not one of {names}"
        raise ConfigError(f"{args.name}: {why}; give --from URL_OR_FILE")
    if sha is None:
        why = "has no sha256 known to medlsam" if known else "is not a published checkpoint"
        raise ConfigError(
            f"{args.name}: {why}; give --sha256 HEX from a source you trust "
            "(a download is never accepted unverified)"
        )
    return source, args.dest / (known.file if known else args.name), sha


def _body(args: argparse.Namespace) -> int:
    from medlsam.download import digest_matches, fetch

    if args.command == "list":
        print(list_table())
        return EXIT_OK
    source, dest, sha = _plan(args)
    if dest.exists():
        if digest_matches(dest, sha):
            print(f"{dest}: already there, sha256 verified")
            return EXIT_OK
        from medlsam.errors import CheckpointError

        raise CheckpointError(
            f"{dest}: exists with another sha256 than {sha}; move it away to download again"
        )
    fetch(source, dest, sha, progress=not args.no_progress and sys.stderr.isatty())
    print(f"{dest}: downloaded, sha256 {sha} verified")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medlsam-weights``; returns the exit code."""
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
