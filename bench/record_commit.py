"""Call-cycle throughput with records committed before the end frames, against a baseline tree.

Issue 12 item 6 holds every frame of a step until its records are committed (group commit).
This bench measures what that costs: the server-load bench's closed-loop 1v1 call cycles
(:mod:`bench.loadgen` ``cycles``: calls, accept, offer/answer relay, hangup, CALLING_END) against
``python -m signaling_server`` of this tree and of a baseline tree (``--baseline DIR``, e.g.
``git worktree add /tmp/base main``), in alternating windows on fresh file databases, so both
suffer the same load from the rest of the machine. Each window's completed cycles must all
have a final ``normal_end`` record once its server stopped.

Run: ``python -m bench.record_commit --baseline DIR [--rounds 3] [--pairs 200] [--seconds 6]``.
Writes ``bench/results/record_commit.json``; prints cycles/s per window, the medians and the
ratio this tree / baseline. The target (≥ 1,000 cycles/s) is the server-load bench's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.bare_relay import raise_fd_limit
from bench.machine import stamp
from bench.server_load import (
    _LISTENING,
    ROOT,
    TARGET_CYCLES_PER_S,
    _loadgen,
    _readline,
    _verify_records,
)

__all__ = ["main"]

RESULTS_PATH = ROOT / "bench" / "results" / "record_commit.json"


class _Server:
    """``python -m signaling_server`` run from ``root`` (its own code) on ``db``."""

    def __init__(self, root: Path, db: Path, log: Path) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "signaling_server", "--port", "0", "--db", str(db)],
            cwd=root, stdout=subprocess.PIPE, stderr=self._log, text=True,
            preexec_fn=raise_fd_limit,
        )
        assert self.proc.stdout is not None
        match = _LISTENING.search(_readline(self.proc.stdout, 30.0) or "")
        if match is None:
            self.stop()
            raise RuntimeError(f"server in {root} did not start; see {log}")
        self.url = match.group(1)
        self.ps = psutil.Process(self.proc.pid)

    def stop(self) -> int:
        """SIGTERM and wait (the server flushes its records); the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def _window(root: Path, tmp: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    db, ids = tmp / f"{name}.db", tmp / f"{name}.ids"
    server = _Server(root, db, tmp / f"{name}.log")
    try:
        result, cpu = _loadgen(server, "cycles", [  # duck-typed: url and ps
            "--target", "stack", "--ids-out", str(ids), "--pairs", str(args.pairs),
            "--warmup", str(args.warmup), "--seconds", str(args.seconds),
        ])
    finally:
        status = server.stop()
    return {**result, **cpu, "exit_status": status, "records": _verify_records(db, [ids])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate windows of the baseline and this tree; the results."""
    raise_fd_limit()
    trees = {"baseline": Path(args.baseline).resolve(), "this": ROOT}
    windows: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="record-commit-") as tmp_name:
        for i in range(args.rounds):
            order = ("baseline", "this") if i % 2 == 0 else ("this", "baseline")
            for label in order:
                w = _window(trees[label], Path(tmp_name), f"{label}{i}", args)
                windows[label].append(w)
                print(f"round {i + 1} {label:8s}: {w['cycles_per_s']:7.0f} cycles/s, server "
                      f"CPU {w.get('server_cpu', 0):.2f}, records "
                      f"{w['records']['completed_cycles'] - w['records']['missing_or_wrong']}"
                      f"/{w['records']['completed_cycles']}", flush=True)
    median = {k: statistics.median(w["cycles_per_s"] for w in v) for k, v in windows.items()}
    return {
        "commit": _git_commit(),
        "baseline": str(trees["baseline"]),
        "baseline_commit": _git_commit(trees["baseline"]),
        "pairs": args.pairs,
        "seconds": args.seconds,
        "windows": windows,
        "median_cycles_per_s": median,
        "ratio_this_vs_baseline": median["this"] / median["baseline"],
        "target_cycles_per_s": TARGET_CYCLES_PER_S,
        "records_ok": all(w["records"]["ok"] for v in windows.values() for w in v),
    }


def _git_commit(root: Path = ROOT) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the summary, write the JSON; 0 unless the bench itself broke."""
    parser = argparse.ArgumentParser(prog="python -m bench.record_commit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="a checkout to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    results = run(args)
    median = results["median_cycles_per_s"]
    met = "met" if median["this"] >= TARGET_CYCLES_PER_S else "MISSED"
    print(f"median cycles/s: baseline {median['baseline']:.0f}, this {median['this']:.0f} "
          f"(ratio {results['ratio_this_vs_baseline']:.2f}; target >= "
          f"{TARGET_CYCLES_PER_S:.0f}: {met}); "
          f"every completed cycle recorded: {results['records_ok']}; "
          f"{time.perf_counter() - started:.0f} s")
    stamp(results)  # commit, date, machine and this run's calibration figure
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
