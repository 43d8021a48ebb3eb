"""lantern beside llama.cpp on the same GGUF file, with the same threads, in the same run.

A thin wrapper over ``lantern bench --compare`` (the measuring code is lantern.benchmark): prompt
tok/s (256 and 512 tokens), decode tok/s (128 greedy tokens), time to first token, load time and
peak RSS, each engine in a fresh process per repeat, medians and the ratio lantern / llama.cpp.

    python bench/compare_llamacpp.py smollm2
    python bench/compare_llamacpp.py ~/.cache/lantern/fixtures/synthetic/phi3-*/Q4_K_M.gguf --repeats 3
    python bench/compare_llamacpp.py phi3-mini-synthetic        # the Phi-3-mini-shaped Q4_K_M fixture
    python bench/compare_llamacpp.py smollm2 --json --threads 2 --prompt-lengths 128 --decode-tokens 64

Every other option is passed to ``lantern bench`` (see ``lantern bench --help``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lantern.cli import main  # noqa: E402

PHI3_FIXTURE = "phi3-mini-synthetic"


def fixture_path() -> str:
    """The full-size Phi-3-mini-shaped Q4_K_M (built once by the fixture code, ~10 minutes)."""
    from lantern.testing.synthetic import PHI3_MINI, cached_model

    return str(cached_model(PHI3_MINI, "Q4_K_M"))


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    model, rest = argv[0], argv[1:]
    if model == PHI3_FIXTURE:
        model = fixture_path()
    return main(["bench", "--compare", "-m", model, *rest])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
