"""Server memory under login/logout churn (issue 12, item 1).

A real server subprocess (``python -m signaling_server --db :memory:``) gets ``--cycles``
login/logout cycles over ``--conns`` connections (each cycle: ``login``, its reply and
``SDK_READY``, ``logout``, its reply), paced under the per-connection rate limit. The server's
RSS (psutil) is read after ``--warmup`` cycles and at the end; before the timer-heap fix it
grew by about 2.3 MiB per 10,000 cycles (one userSig timer per login, kept 180 days).

Run: ``python -m bench.login_churn [--cycles 100000] [--conns 40]``. Prints a JSON line and
writes ``bench/results/login_churn.json``. The system test
``tests/system/test_login_churn.py`` runs a shorter version and bounds the growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import connect

from bench.machine import stamp
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.protocol import PROTOCOL_VERSION
from callwire.usersig import generate_user_sig

__all__ = ["churn", "main", "rss_mib", "start_server", "stop_server"]

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "login_churn.json"
ROOT = Path(__file__).resolve().parent.parent
PER_CONN_CYCLES_PER_S = 80.0
"""Four frames a cycle: 320 frames/s per connection, under the server's 200/s + 400 burst
only because replies pace it; the loop sleeps when a connection gets ahead of this."""


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    """The server subprocess and its websocket URL (the line it prints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSERVER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "signaling_server", "--port", "0", "--db", ":memory:"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"listening on (ws://\S+)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, match.group(1)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, close its output pipe."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def _one_connection(url: str, index: int, cycles: int, done: list[int]) -> None:
    user = f"churn{index}"
    sig = generate_user_sig(DEV_SDK_APP_ID, DEV_SECRET_KEY, user, 180 * 86400)
    login = {"sdkAppId": DEV_SDK_APP_ID, "userID": user, "userSig": sig,
             "protocolVersion": PROTOCOL_VERSION}
    start = time.monotonic()
    async with connect(url, compression=None) as ws:
        for i in range(cycles):
            await ws.send(json.dumps({"type": "login", "id": 2 * i, "data": login}))
            await ws.send(json.dumps({"type": "logout", "id": 2 * i + 1}))
            replies = 0
            while replies < 2:
                frame = json.loads(await ws.recv())
                if frame["type"] == "reply":
                    if not frame["ok"]:
                        raise RuntimeError(f"{user}: {frame}")
                    replies += 1
            done[0] += 1
            ahead = (i + 1) / PER_CONN_CYCLES_PER_S - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)


async def churn(url: str, cycles: int, conns: int) -> None:
    """``cycles`` login/logout cycles spread over ``conns`` connections."""
    done = [0]
    per = [cycles // conns + (1 if i < cycles % conns else 0) for i in range(conns)]
    await asyncio.gather(*(_one_connection(url, i, n, done) for i, n in enumerate(per)))


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid``, MiB."""
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def run(cycles: int, warmup: int, conns: int) -> dict[str, Any]:
    proc, url = start_server()
    try:
        t0 = time.monotonic()
        asyncio.run(churn(url, warmup, conns))
        after_warmup = rss_mib(proc.pid)
        t1 = time.monotonic()
        asyncio.run(churn(url, cycles, conns))
        took = time.monotonic() - t1
        end = rss_mib(proc.pid)
    finally:
        stop_server(proc)
    return {
        "cycles": cycles, "warmup_cycles": warmup, "connections": conns,
        "rss_after_warmup_mib": round(after_warmup, 2), "rss_end_mib": round(end, 2),
        "growth_mib": round(end - after_warmup, 2),
        "growth_mib_per_10k_cycles": round((end - after_warmup) / cycles * 10_000, 3),
        "cycles_per_s": round(cycles / took, 1), "warmup_s": round(t1 - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument("--conns", type=int, default=40)
    args = parser.parse_args(argv)
    result = run(args.cycles, args.warmup, args.conns)
    stamp(result)  # commit, date, machine and this run's calibration figure
    print(json.dumps(result), flush=True)
    RESULTS_PATH.parent.mkdir(exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
