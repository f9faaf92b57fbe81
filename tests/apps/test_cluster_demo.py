"""``make cluster-demo`` (``callclient demo --cluster``): a call across the nodes of a cluster,
and everything it started stopped at the end, on a failure and on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import psutil
import pytest

from callclient.apps.cluster_demo import run_cluster_demo
from tests.helpers.apps import run_module
from tests.helpers.waits import T

ROOT = Path(__file__).resolve().parents[2]


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


async def test_cluster_demo_calls_across_nodes(tmp_path: Path) -> None:
    """Three nodes, bob and alice on different ones, video both ways; exits 0 and stops
    every node, PostgreSQL and Redis."""
    out = tmp_path / "out"
    code, stdout, stderr = await run_module(
        "callclient", "demo", "--cluster", "--seconds", "3", "--out", str(out), timeout=150
    )
    assert code == 0, stdout + stderr
    assert "Traceback" not in stderr
    for k in (1, 2, 3):
        assert f"node{k} listening on ws://127.0.0.1:" in stdout
        assert f"node{k} exited with status 0" in stdout, stdout
    assert "bob is on node2" in stdout and "alice is on node1" in stdout, stdout
    assert "the call ran across nodes: alice on node1, bob on node2" in stdout
    assert "bob -> alice:" in stdout and "alice -> bob:" in stdout
    assert "bob exited with status 0" in stdout
    assert "PostgreSQL and redis-server stopped" in stdout
    assert (out / "alice-sees-bob.png").stat().st_size > 0
    assert (out / "bob-recordings" / "alice.mp4").stat().st_size > 10_000


async def test_a_node_that_fails_to_start_stops_the_demo_and_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node that exits at start (a bad flag): the demo says which node and why, returns 1,
    and leaves no process and no database directory."""
    before = _children()
    code = await run_cluster_demo(seconds=1, out=tmp_path / "out",
                                  node_args=("--no-such-flag",))
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert re.search(r"error: node\d exited with status 2 before listening: .*"
                     r"unrecognized arguments: .*--no-such-flag", printed), printed
    assert "PostgreSQL and redis-server stopped" in printed
    match = re.search(r"PostgreSQL database callcluster on (\S+)", printed)
    assert match, printed
    assert not await asyncio.to_thread(Path(match.group(1)).exists)
    assert _alive(_children() - before) == set()
    assert (tmp_path / "out" / "cluster-logs" / "node1.log").exists()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path) -> None:
    """SIGINT while the nodes start: exit 130, and every process the demo started (Redis,
    PostgreSQL and its workers, the nodes) has ended."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callclient", "demo", "--cluster", "--out", str(tmp_path / "o"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        # As from a terminal: a test run started in the background (SIGINT ignored, which
        # children inherit) must not make the demo deaf to the signal under test.
        preexec_fn=_default_sigint,
    )
    started: set[int] = set()
    try:
        assert proc.stdout is not None
        seen = b""
        while b"starting 3 nodes" not in seen:
            line = await asyncio.wait_for(proc.stdout.readline(), 3 * T)
            assert line, f"the demo ended early: {seen.decode()}"
            seen += line
        started = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert len(started) >= 2  # redis-server and postgres at least
        os.kill(proc.pid, signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 3 * T)
        assert proc.returncode == 130, (seen + rest).decode() + err.decode()
        assert b"PostgreSQL and redis-server stopped" in rest, rest.decode()
        assert b"Traceback" not in err, err.decode()
        assert _alive(started) == set()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in _alive(started):
            os.kill(pid, signal.SIGKILL)


async def test_cluster_demo_kill_leader_keeps_the_call(tmp_path: Path) -> None:
    """``--kill-leader``: the lease holder is SIGKILLed mid-call, another node takes the
    lease, alice is connected again with her call, the demo exits 0."""
    out = tmp_path / "out"
    code, stdout, stderr = await run_module(
        "callclient", "demo", "--cluster", "--kill-leader", "--seconds", "4", "--out", str(out),
        timeout=150,
    )
    assert code == 0, stdout + stderr
    killed = re.search(r"killing (node\d) \(the call owner", stdout)
    assert killed, stdout
    new = re.search(r"(node\d) holds the lease now", stdout)
    assert new and new.group(1) != killed.group(1), stdout
    assert "the call goes on" in stdout
    assert f"{killed.group(1)} exited with status -9" in stdout
    assert "PostgreSQL and redis-server stopped" in stdout
