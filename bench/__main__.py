"""``python -m bench [name ...]``: run every benchmark in :data:`bench.BENCHES` (or those named)."""

from __future__ import annotations

import importlib
import sys

from bench import BENCHES


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks in turn; non-zero if any reported a failure."""
    names = sys.argv[1:] if argv is None else argv
    selected = [b for b in BENCHES if not names or b.rsplit(".", 1)[-1] in names]
    status = 0
    for name in selected:
        print(f"== {name}", flush=True)
        result = importlib.import_module(name).main([])
        status |= int(result or 0)  # a main() returning None counts as success
    return status


if __name__ == "__main__":
    raise SystemExit(main())
