"""Signaling server under load (issue 2): idle memory, call-cycle throughput, relay latency.

The real server runs as a subprocess (``python -m signaling_server --port 0 --db FILE``, a
SQLite file in a temporary directory so records are really written); the load comes from a
separate :mod:`bench.loadgen` process, so the 2-core machine splits into one server core and one
load-generator core. In the same run, :mod:`bench.bare_relay` (a websockets relay with no
validation, state or storage, same websockets settings) carries the same message pattern from
the same load generator: it is the baseline of the messages/s ratio.

Measured:

* **idle memory**: server RSS (psutil) before and after ``--conns`` logged-in idle connections
  (plus a short settle); per connection = delta / N. The bare relay's per-connection memory with
  and without permessage-deflate shows what compression would cost.
* **throughput**: ``--pairs`` caller/callee pairs run complete 1v1 call cycles back to back
  (calls, ON_CALL_RECEIVED, accept, ON_CALL_BEGIN, offer/answer relay with a ~2 KB SDP,
  hangup, CALLING_END) for ``--seconds`` after a warm-up; cycles/s and messages/s (every frame
  into and out of the server). Every completed cycle's call must have a final ``normal_end``
  record in the database once the server has stopped.
* **relay latency**: cycles started at half the measured cycle rate (open loop); the time from
  sending an offer/answer to its receipt by the other client, p50/p99.
* **ratio**: stack messages/s / bare relay messages/s.

CPU time of the server and load generator over each measured window is reported too, with the
CPU used by everything else on the machine, since other work on the box skews the absolute
numbers (the ratio is measured in the same run and suffers less).

Run: ``python -m bench.server_load [--conns 10000] [--pairs 200] [--seconds 8]`` or
``make bench``. Writes ``bench/results/server_load.json``. Missed targets are reported, not
failures: the exit status is 0 unless the bench itself breaks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from bench.bare_relay import raise_fd_limit
from bench.loadgen import DEV_SDK_APP_ID, FRAMES_PER_CYCLE
from bench.machine import stamp

__all__ = ["main", "run"]

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "server_load.json"
ROOT = Path(__file__).resolve().parent.parent
TARGET_KIB_PER_CONN = 20.0
TARGET_CYCLES_PER_S = 1000.0
TARGET_P99_MS = 5.0
TARGET_RATIO = 0.5
_LISTENING = re.compile(r"listening on (ws://\S+)")


def _cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process and its threads."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.system + times.nice + getattr(times, "irq", 0.0)
                 + getattr(times, "softirq", 0.0))


@dataclass
class _Window:
    """CPU use over a measured window: server, load generator and the rest of the machine."""

    start: tuple[float, float, float, float] | None = None
    result: dict[str, float] = field(default_factory=dict)

    def mark(self, server: psutil.Process, loadgen: psutil.Process) -> None:
        now = (time.perf_counter(), _cpu_s(server), _cpu_s(loadgen), _machine_busy_s())
        if self.start is None:
            self.start = now
            return
        dt = now[0] - self.start[0]
        server_s = now[1] - self.start[1]
        loadgen_s = now[2] - self.start[2]
        other_s = max(0.0, now[3] - self.start[3] - server_s - loadgen_s)
        self.result = {
            "server_cpu": server_s / dt,
            "loadgen_cpu": loadgen_s / dt,
            "other_cpu": other_s / dt,
        }


class _Service:
    """A server subprocess that prints ``listening on ws://...`` once ready."""

    def __init__(self, argv: list[str], log: Path, cwd: Path = ROOT) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            preexec_fn=raise_fd_limit,
        )
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, 30.0)
        match = _LISTENING.search(line or "")
        if match is None:
            self.stop()
            raise RuntimeError(f"{argv[2]} did not start: {line!r}; see {log}")
        self.url = match.group(1)
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        """Resident set size in bytes."""
        return int(self.ps.memory_info().rss)

    def stop(self) -> int:
        """SIGTERM, then wait (the signaling server flushes its records); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return int(self.proc.returncode)


def _readline(stream: IO[str], timeout: float) -> str | None:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
    return stream.readline()


def _loadgen(
    server: _Service,
    mode: str,
    options: Sequence[str],
    on_ready: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run one load-generator process to completion; its result and the window's CPU use."""
    argv = [sys.executable, "-m", "bench.loadgen", mode, "--url", server.url, *options]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    ps = psutil.Process(proc.pid)
    window = _Window()
    result: dict[str, Any] | None = None
    for line in proc.stdout:
        if line.startswith("MARK"):
            window.mark(server.ps, ps)
        elif line.startswith("READY"):
            if on_ready is not None:
                on_ready()
            proc.stdin.write("close\n")
            proc.stdin.flush()
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"loadgen {mode} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return result, window.result


def _idle_memory(
    server: _Service, conns: int, options: Sequence[str], settle: float
) -> dict[str, Any]:
    """Server RSS before and after ``conns`` logged-in idle connections; KiB per connection."""
    time.sleep(0.5)
    before = server.rss()
    after: list[int] = []

    def measure() -> None:
        time.sleep(settle)
        after.append(server.rss())

    result, _ = _loadgen(server, "idle", ["--conns", str(conns), *options], measure)
    delta = after[0] - before
    return {
        "connections": result["connections"],
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after[0] / 2**20,
        "kib_per_conn": delta / result["connections"] / 1024,
        "logins_per_s": result["logins_per_s"],
    }


def _verify_records(db: Path, ids_files: Sequence[Path]) -> dict[str, Any]:
    """Every completed cycle's call has a final normal_end record with its accept and end."""
    from signaling_server.store import CallStore

    expected: set[str] = set()
    for path in ids_files:
        expected.update(path.read_text().split())
    store = CallStore(str(db))
    try:
        found: dict[str, Any] = {}
        cursor: tuple[float, str] | None = None
        while True:
            page = store.find_calls(DEV_SDK_APP_ID, after=cursor, limit=2000)
            if not page:
                break
            for call in page:
                found[call.call_id] = call
            cursor = (page[-1].start_ts, page[-1].call_id)
    finally:
        store.close()
    bad = [
        cid for cid in expected
        if cid not in found
        or found[cid].result != "normal_end"
        or found[cid].end_ts is None
        or found[cid].accept_ts is None
        or len(found[cid].participants) != 2
    ]
    return {
        "completed_cycles": len(expected),
        "records": len(found),
        "missing_or_wrong": len(bad),
        "open_records": sum(1 for c in found.values() if c.result == ""),
        "ok": not bad and len(expected) > 0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every phase; the results as a JSON-able dict."""
    raise_fd_limit()
    py = sys.executable
    cycle_opts = ["--pairs", str(args.pairs), "--warmup", str(args.warmup),
                  "--seconds", str(args.seconds)]
    out: dict[str, Any] = {
        "machine": {"cpus": psutil.cpu_count(), "python": sys.version.split()[0]}
    }
    with tempfile.TemporaryDirectory(prefix="server-load-") as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "records.db"
        stack = _Service([py, "-m", "signaling_server", "--port", "0", "--db", str(db)],
                         tmp / "server.log")
        bare = _Service([py, "-m", "bench.bare_relay", "--port", "0"], tmp / "bare.log")
        deflate: _Service | None = None
        try:
            print(f"idle: {args.conns} logged-in connections to the server ...", flush=True)
            out["idle_stack"] = _idle_memory(stack, args.conns, ["--target", "stack"], args.settle)
            print(f"idle: {args.bare_conns} connections to the bare relay, "
                  "without and with permessage-deflate ...", flush=True)
            out["idle_bare"] = _idle_memory(bare, args.bare_conns, ["--target", "bare"],
                                            args.settle)
            deflate = _Service([py, "-m", "bench.bare_relay", "--port", "0", "--compression",
                                "deflate"], tmp / "deflate.log")
            out["idle_bare_deflate"] = _idle_memory(
                deflate, args.bare_conns, ["--target", "bare", "--compression", "deflate"],
                args.settle,
            )
            deflate.stop()
            deflate = None

            print(f"throughput: {args.pairs} pairs, closed loop, {args.seconds} s each ...",
                  flush=True)
            ids = [tmp / "ids-cycles.txt", tmp / "ids-paced.txt"]
            result, cpu = _loadgen(stack, "cycles",
                                   ["--target", "stack", "--ids-out", str(ids[0]), *cycle_opts])
            out["cycles_stack"] = {**result, **cpu}
            result, cpu = _loadgen(bare, "cycles", ["--target", "bare", *cycle_opts])
            out["cycles_bare"] = {**result, **cpu}

            rate = max(10.0, out["cycles_stack"]["cycles_per_s"] / 2)
            print(f"latency: paced at {rate:.0f} cycles/s ...", flush=True)
            paced_opts = ["--rate", f"{rate:.1f}", "--pairs", str(args.paced_pairs),
                          "--warmup", "1", "--seconds", str(args.latency_seconds)]
            result, cpu = _loadgen(stack, "paced",
                                   ["--target", "stack", "--ids-out", str(ids[1]), *paced_opts])
            out["paced_stack"] = {**result, **cpu}
            result, cpu = _loadgen(bare, "paced", ["--target", "bare", *paced_opts])
            out["paced_bare"] = {**result, **cpu}
        finally:
            for service in (deflate, bare):
                if service is not None:
                    service.stop()
            status = stack.stop()
        out["server_exit_status"] = status
        out["records"] = _verify_records(db, ids)
    return out


def _rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    idle, cyc, bare, paced = r["idle_stack"], r["cycles_stack"], r["cycles_bare"], r["paced_stack"]
    ratio = cyc["messages_per_s"] / bare["messages_per_s"]
    r["ratio_messages"] = ratio
    r["ratio_cycles"] = cyc["cycles_per_s"] / bare["cycles_per_s"]
    deflate_cost = r["idle_bare_deflate"]["kib_per_conn"] - r["idle_bare"]["kib_per_conn"]
    r["deflate_extra_kib_per_conn"] = deflate_cost
    per_cpu = cyc["cycles_per_s"] / cyc["server_cpu"] if cyc.get("server_cpu") else float("nan")
    r["cycles_per_server_cpu_s"] = per_cpu

    # Per server CPU-second: what the ratio would be if both servers had a whole core each
    # (the machine is often shared, so the absolute rates move with the load of others).
    cpu_msgs = tuple(
        run["messages_per_s"] / run["server_cpu"] if run.get("server_cpu") else float("nan")
        for run in (cyc, bare)
    )
    cpu_ratio = cpu_msgs[0] / cpu_msgs[1]
    r["messages_per_server_cpu_s"] = {"server": cpu_msgs[0], "bare": cpu_msgs[1]}
    r["ratio_messages_per_cpu"] = cpu_ratio

    def verdict(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    rin, rout = FRAMES_PER_CYCLE["stack"]
    bin_, bout = FRAMES_PER_CYCLE["bare"]
    return [
        (f"idle memory / connection ({idle['connections']} logged in)",
         f"{idle['kib_per_conn']:.1f} KiB", f"<= {TARGET_KIB_PER_CONN:.0f} KiB",
         verdict(idle["kib_per_conn"] <= TARGET_KIB_PER_CONN)),
        ("  server RSS before -> after", f"{idle['rss_before_mib']:.0f} -> "
         f"{idle['rss_after_mib']:.0f} MiB", "", ""),
        ("  bare relay / connection, no compression",
         f"{r['idle_bare']['kib_per_conn']:.1f} KiB", "", "info"),
        ("  bare relay / connection, permessage-deflate",
         f"{r['idle_bare_deflate']['kib_per_conn']:.1f} KiB (+{deflate_cost:.1f})", "", "info"),
        (f"1v1 call cycles/s ({cyc['cycles']} in {cyc['elapsed_s']:.1f} s)",
         f"{cyc['cycles_per_s']:.0f}/s", f">= {TARGET_CYCLES_PER_S:.0f}/s",
         verdict(cyc["cycles_per_s"] >= TARGET_CYCLES_PER_S)),
        ("  server CPU / loadgen CPU / other CPU",
         f"{cyc.get('server_cpu', 0):.2f} / {cyc.get('loadgen_cpu', 0):.2f} / "
         f"{cyc.get('other_cpu', 0):.2f} cores", "", "info"),
        ("  cycles per server CPU-second", f"{per_cpu:.0f}", "", "info"),
        (f"messages/s, server ({rin} in + {rout} out per cycle)",
         f"{cyc['messages_per_s']:.0f}/s", "", "info"),
        (f"messages/s, bare relay ({bin_} in + {bout} out per cycle)",
         f"{bare['messages_per_s']:.0f}/s ({bare['cycles_per_s']:.0f} cycles/s)", "", "info"),
        ("messages/s ratio server / bare relay", f"{ratio:.3f}", f">= {TARGET_RATIO}",
         verdict(ratio >= TARGET_RATIO)),
        ("  cycles/s ratio server / bare relay", f"{r['ratio_cycles']:.2f}", "", "info"),
        ("  messages per server CPU-second: server / bare",
         f"{cpu_msgs[0]:.0f} / {cpu_msgs[1]:.0f} = {cpu_ratio:.2f}", "", "info"),
        ("  bare relay: server / loadgen / other CPU",
         f"{bare.get('server_cpu', 0):.2f} / {bare.get('loadgen_cpu', 0):.2f} / "
         f"{bare.get('other_cpu', 0):.2f} cores", "", "info"),
        (f"relay latency p50 at {paced['rate']:.0f} cycles/s",
         f"{paced['relay_p50_ms']:.2f} ms", "", "info"),
        (f"relay latency p99 ({paced['relay_samples']} samples)",
         f"{paced['relay_p99_ms']:.2f} ms", f"<= {TARGET_P99_MS:.0f} ms",
         verdict(paced["relay_p99_ms"] <= TARGET_P99_MS)),
        ("  bare relay latency p50 / p99",
         f"{r['paced_bare']['relay_p50_ms']:.2f} / {r['paced_bare']['relay_p99_ms']:.2f} ms",
         "", "info"),
        ("  paced: achieved cycles/s, server CPU",
         f"{paced['cycles_per_s']:.0f}/s, {paced.get('server_cpu', 0):.2f} cores", "", "info"),
        ("records: completed cycles with a final record",
         f"{r['records']['completed_cycles'] - r['records']['missing_or_wrong']}"
         f"/{r['records']['completed_cycles']}", "all", verdict(r["records"]["ok"])),
    ]


def _print_table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("metric", "value", "target", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.server_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=10_000, help="idle server connections")
    parser.add_argument("--bare-conns", type=int, default=2_000,
                        help="idle bare-relay connections, with and without deflate")
    parser.add_argument("--pairs", type=int, default=200, help="concurrent pairs, closed loop")
    parser.add_argument("--paced-pairs", type=int, default=100, help="pairs for the paced run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured throughput window")
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between the last login and the memory reading")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results; 0 unless it broke."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    results = run(args)
    rows = _rows(results)
    results["bench_seconds"] = time.perf_counter() - started
    results["table"] = [dict(zip(("metric", "value", "target", "result"), row, strict=True))
                        for row in rows]
    _print_table(rows)
    print(f"({results['bench_seconds']:.0f} s; server exit status "
          f"{results['server_exit_status']})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    stamp(results)  # commit, date, machine and this run's calibration figure
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {os.path.relpath(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
