"""``lantern ls``: the models in lantern's cache."""

from __future__ import annotations

import argparse
import json

from .. import hub


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ls",
        help="list the models in the cache",
        description="List the models downloaded into lantern's cache ($LANTERN_CACHE, default "
        "~/.cache/lantern). NAME is what to pass to -m. Interrupted downloads are listed as partial, "
        "with the bytes they hold; the next download of the same model removes them.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    models = hub.list_cached()
    if args.json:
        print(json.dumps(
            [{"name": m.name, "spec": m.spec, "path": str(m.path), "size_bytes": m.size_bytes, "partial": m.partial}
             for m in models],
            indent=2,
        ))
        return 0
    if not models:
        print(f"no models in {hub.cache_dir()}; fetch one with 'lantern pull smollm2'")
        return 0
    rows = [("NAME", "SIZE", "PATH")] + [(m.name, hub.human_size(m.size_bytes), str(m.path)) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for name, size, path in rows:
        print(f"{name:<{widths[0]}}  {size:>{widths[1]}}  {path}")
    complete = [m for m in models if not m.partial]
    partial = [m for m in models if m.partial]
    total = sum(m.size_bytes for m in complete)
    summary = f"{len(complete)} model{'s' if len(complete) != 1 else ''}, {hub.human_size(total)}"
    if partial:
        summary += (f", and {len(partial)} partial download{'s' if len(partial) != 1 else ''} "
                    f"({hub.human_size(sum(m.size_bytes for m in partial))}; pulling the same model again "
                    f"removes {'them' if len(partial) != 1 else 'it'})")
    print(f"{summary} in {hub.cache_dir()}")
    return 0
