"""Cluster mode vs one node (issue 18): the cost per call cycle that decides scale-out.

On this 2-core machine three nodes cannot show more throughput than one, so the bench measures
what decides it, in alternating windows (single, cluster, single, cluster, ...; ``--rounds``
of each, fresh processes and a fresh database per window):

* **single**: one ``signaling-server serve --db postgresql://...`` process;
* **cluster**: ``--nodes`` (3) ``signaling-server serve --cluster redis://... --db
  postgresql://... --node-name nK`` processes on one Redis and the same PostgreSQL; the load's
  caller *i* connects to node *i*, its callee to node *i + 1*, so every call crosses nodes.

The load is :mod:`bench.loadgen`'s complete 1v1 call cycle (login'd caller calls, callee
accepts, offer/answer relayed, hangup), from one separate load-generator process.

**Closed-loop windows** (``--pairs`` pairs back to back, ``--seconds`` after ``--warmup``):
per window the cycles completed and, over the same window, the CPU seconds of every server
process (psutil), of Redis and of PostgreSQL (postmaster, its live backends and its reaped
children), Redis commands processed (``INFO stats`` ``total_commands_processed`` delta),
PostgreSQL commits (``pg_stat_database.xact_commit`` of the window's database, which backends
flush about once a second: both ends of the window are taken under steady load, so the lag
cancels out within about a second's worth of commits) and write transactions (the xid counter,
exact). Hence CPU ms per cycle and the ratio cluster / single (target <= 2), the leader's CPU
per cycle against an edge's (the leader runs the one call core: the cluster's ceiling is the
leader's core), Redis commands and PostgreSQL commits per cycle.

**Paced windows**: cycles started at half the single node's median closed-loop rate (open
loop), both configurations alternately; the relay latency of the offer and the answer (send to
receipt by the other client, across nodes in the cluster), p50 / p99 (target p99 <= 10 ms in
the cluster), and CPU per cycle at the same rate for both.

**Ceilings** of the shared services on this machine: Redis (``redis-benchmark``, no
pipelining, 50 clients, on the same 2 cores: a lower bound) and PostgreSQL (``pgbench -N``, the
same server and settings as the windows). With them the **projected capacity**: cycles/s per
node = 1 core / CPU per cycle, bounded by the leader's core, Redis ops/s / Redis commands per
cycle and PostgreSQL commits/s / commits per cycle.

Every completed cycle's call must have a final ``normal_end`` record. Writes
``bench/results/cluster.{json,md}``. Run: ``python -m bench.cluster [--quick]`` or ``make
bench``. Missed targets are reported, not failures.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.bare_relay import raise_fd_limit
from bench.loadgen import DEV_SDK_APP_ID
from bench.machine import calibrate, header, stamp
from bench.server_load import _Service

__all__ = [
    "Services",
    "capacity",
    "main",
    "render_md",
    "start_services",
    "summarize",
]

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SERVER_ROOT = ROOT
"""The checkout whose ``signaling_server`` the nodes run (``--server-root``); the load
generator always runs this checkout's :mod:`bench.loadgen`."""
TARGET_CPU_RATIO = 2.0
TARGET_P99_MS = 10.0
CONFIGS = ("single", "cluster", "edges")
"""single: one server; cluster: the nodes with clients on every node; edges: the same nodes
with clients on the non-leaders only, so the leader's CPU is the call core alone."""
KEY_PREFIX = f"callserver:{DEV_SDK_APP_ID}:"
"""The cluster's Redis keys (notes/cluster-design.md): ``leader`` is ``index|epoch|name``."""


# --- services: Redis and PostgreSQL ------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the bench dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RespError(RuntimeError):
    """Redis answered a command with an error."""


class _RedisConn:
    """A minimal blocking RESP client: enough for INFO, GET, FLUSHALL and PING."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._file = self._sock.makefile("rb")
        self.sent = 0
        """Commands sent on this connection (the bench's own, to leave out of the counts)."""

    def command(self, *args: str) -> Any:
        self.sent += 1
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> Any:
        line = self._file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)[:-2]
            return data.decode()
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise ConnectionError(f"unexpected reply from redis: {line[:80]!r}")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


class _Redis:
    """A ``redis-server`` on a free loopback port, no persistence, in a temporary directory."""

    def __init__(self, root: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: install the Debian package redis-server "
                               "(make setup does)")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = (root / "redis.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(root), "--protected-mode", "no"],
            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.conn = _RedisConn(self.port)
                if self.conn.command("PING") == "PONG":
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see {root / 'redis.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@dataclass
class Services:
    """The shared services of every window: one Redis, one PostgreSQL."""

    redis_url: str
    redis_port: int
    redis_pid: int
    redis: _RedisConn
    postgres: Any  # tests.helpers.postgres.PostgresServer (or devservices.LocalPostgres)
    pg_bin: Path
    _admin: Any = None

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        url: str = self.postgres.new_database()
        return url

    def postmaster_pid(self) -> int:
        return int((Path(self.postgres.data) / "postmaster.pid").read_text().split()[0])

    def pg_query(self, sql: str, *params: Any) -> Any:
        """The first column of the first row of one query on the ``postgres`` database."""
        import psycopg

        if self._admin is None:
            self._admin = psycopg.connect(self.postgres.url("postgres"), autocommit=True)
        row = self._admin.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


@contextlib.contextmanager
def start_services(root: Path) -> Iterator[Services]:
    """Start Redis and PostgreSQL for the bench; stop both afterwards.

    The one place that knows how they are started: ``signaling_server.devservices``
    (``LocalRedis``, ``LocalPostgres``) where the checkout has it, else the tests' PostgreSQL
    helper and a redis-server launched here.
    """
    try:
        dev = importlib.import_module("signaling_server.devservices")
    except ImportError:
        dev = None
    if dev is not None:
        with contextlib.ExitStack() as stack:
            redis_dev = dev.LocalRedis()
            stack.callback(redis_dev.close)
            redis_dev.start()
            pg_dev = dev.LocalPostgres()
            stack.callback(pg_dev.close)
            pg_dev.start()
            conn = _RedisConn(redis_dev.port)
            stack.callback(conn.close)
            services = Services(redis_dev.url, redis_dev.port, redis_dev.pid, conn, pg_dev,
                                Path(pg_dev.bin_dir))
            stack.callback(services.close)
            yield services
        return
    from tests.helpers.postgres import PG_BIN, PostgresServer

    redis = _Redis(root)
    postgres = PostgresServer()
    fallback: Services | None = None
    try:
        postgres.start()
        fallback = Services(redis.url, redis.port, redis.proc.pid, redis.conn, postgres, PG_BIN)
        yield fallback
    finally:
        if fallback is not None:
            fallback.close()
        postgres.stop()
        redis.stop()


# --- one window ------------------------------------------------------------------------------


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _tree_cpu(proc: psutil.Process) -> float:
    """CPU of a process, its reaped children and its live children (PostgreSQL's backends)."""
    times = proc.cpu_times()
    total = float(times.user + times.system + times.children_user + times.children_system)
    for child in proc.children():
        with contextlib.suppress(psutil.Error):
            total += _cpu(child)
    return total


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.system + t.nice + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def _redis_commands(services: Services) -> int:
    """Commands Redis has processed, less the bench's own (this INFO is not counted yet)."""
    own = services.redis.sent
    info: str = services.redis.command("INFO", "stats")
    for line in info.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":", 1)[1]) - own
    raise RuntimeError("redis INFO stats has no total_commands_processed")


@dataclass
class _Nodes:
    """The signaling-server processes of one window."""

    services: Services
    names: list[str]
    procs: list[_Service] = field(default_factory=list)

    edges_only: bool = False

    @property
    def urls(self) -> list[str]:
        """Where the load's clients connect: every node, or (edges) every node but the leader."""
        if not self.edges_only:
            return [p.url for p in self.procs]
        leader = self.leader()
        return [p.url for p, name in zip(self.procs, self.names, strict=True) if name != leader]

    def leader(self) -> str | None:
        """The node holding the cluster lease (its ``--node-name``), None for a single node."""
        if len(self.names) == 1 and not self.names[0]:
            return None
        value = self.services.redis.command("GET", KEY_PREFIX + "leader")
        return str(value).split("|", 2)[-1] if value else None


def _start_nodes(config: str, nodes: int, services: Services, db: str, tmp: Path,
                 root: Path) -> _Nodes:
    py = sys.executable
    base = [py, "-m", "signaling_server", "serve", "--port", "0", "--db", db]
    if config == "single":
        group = _Nodes(services, [""])
        group.procs.append(_Service(base, tmp / "single.log", root))
        return group
    services.redis.command("FLUSHALL")
    group = _Nodes(services, [f"n{k + 1}" for k in range(nodes)], edges_only=config == "edges")
    try:
        for name in group.names:
            group.procs.append(_Service(
                [*base, "--cluster", services.redis_url, "--node-name", name],
                tmp / f"{name}.log", root))
        deadline = time.monotonic() + 30
        while group.leader() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no cluster leader in Redis ({KEY_PREFIX}leader) within 30 s;"
                                   f" see {tmp}/n*.log")
            time.sleep(0.1)
    except BaseException:
        _stop_nodes(group)
        raise
    return group


def _stop_nodes(group: _Nodes) -> list[int]:
    return [p.stop() for p in group.procs]


@dataclass
class _Snapshot:
    t: float
    nodes: list[float]
    redis_cpu: float
    pg_cpu: float
    busy: float
    loadgen_cpu: float
    redis_cmds: int
    pg_commits: int
    pg_xid: int
    leader: str | None


def _snapshot(group: _Nodes, loadgen: psutil.Process | None, dbname: str) -> _Snapshot:
    services = group.services
    return _Snapshot(
        t=time.perf_counter(),
        nodes=[_cpu(p.ps) for p in group.procs],
        redis_cpu=_cpu(psutil.Process(services.redis_pid)),
        pg_cpu=_tree_cpu(psutil.Process(services.postmaster_pid())),
        busy=_machine_busy_s(),
        loadgen_cpu=_cpu(loadgen) if loadgen is not None else 0.0,
        redis_cmds=_redis_commands(services),
        pg_commits=int(services.pg_query(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", dbname)),
        pg_xid=int(services.pg_query("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")),
        leader=group.leader(),
    )


def _run_loadgen(group: _Nodes, mode: str, options: Sequence[str], dbname: str
                 ) -> tuple[dict[str, Any], _Snapshot, _Snapshot]:
    argv = [sys.executable, "-m", "bench.loadgen", mode, "--url", ",".join(group.urls),
            "--target", "stack", *options]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    ps = psutil.Process(proc.pid)
    marks: list[_Snapshot] = []
    result: dict[str, Any] | None = None
    try:
        for line in proc.stdout:
            if line.startswith("MARK"):
                marks.append(_snapshot(group, ps, dbname))
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
    finally:
        if proc.poll() is None and result is None:
            proc.kill()
        proc.wait()
        stderr = proc.stderr.read() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if proc.returncode != 0 or result is None or len(marks) != 2:
        raise RuntimeError(f"loadgen {mode} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return result, marks[0], marks[1]


def _records_ok(services: Services, db: str, ids_file: Path) -> dict[str, int]:
    """How many completed cycles' calls have a final normal_end record."""
    import psycopg

    ids = ids_file.read_text().split() if ids_file.exists() else []
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM calls WHERE call_id = ANY(%s) AND result = 'normal_end' "
            "AND accept_ts IS NOT NULL AND end_ts IS NOT NULL", (ids,)).fetchone()
    good = int(row[0]) if row else 0
    return {"completed_cycles": len(ids), "final_records": good}


def window(config: str, mode: str, services: Services, tmp: Path, nodes: int,
           options: Sequence[str], root: Path = SERVER_ROOT, idle_s: float = 2.0
           ) -> dict[str, Any]:
    """One window of ``config`` (fresh database and processes): the loadgen's result and the
    window's costs; before the load, ``idle_s`` seconds of the idle processes' costs."""
    db = services.new_database()
    dbname = db.split("/", 3)[3].split("?", 1)[0]
    group = _start_nodes(config, nodes, services, db, tmp, root)
    ids = tmp / f"ids-{dbname}.txt"
    try:
        time.sleep(0.5)  # the cluster's first heartbeats, the pools' first connections
        i0 = _snapshot(group, None, dbname)
        time.sleep(idle_s)
        i1 = _snapshot(group, None, dbname)
        result, a, b = _run_loadgen(group, mode, [*options, "--ids-out", str(ids)], dbname)
    finally:
        statuses = _stop_nodes(group)
    records = _records_ok(services, db, ids)
    dt = b.t - a.t
    cycles = int(result["cycles"]) if "cycles" in result else round(
        result["cycles_per_s"] * result["elapsed_s"])
    per = 1000.0 / cycles if cycles else float("nan")  # ms (or units x1000) per cycle
    node_cpu = [b.nodes[i] - a.nodes[i] for i in range(len(group.procs))]
    server_cpu = sum(node_cpu)
    out: dict[str, Any] = {
        "config": config,
        "mode": mode,
        "nodes": len(group.procs),
        "cycles": cycles,
        "elapsed_s": dt,
        "cycles_per_s": cycles / dt if dt > 0 else float("nan"),
        "server_cpu_ms_per_cycle": server_cpu * per,
        "server_cpu_cores": server_cpu / dt,
        "node_cpu_ms_per_cycle": {
            (group.names[i] or "single"): node_cpu[i] * per for i in range(len(node_cpu))},
        "redis_cpu_ms_per_cycle": (b.redis_cpu - a.redis_cpu) * per,
        "pg_cpu_ms_per_cycle": (b.pg_cpu - a.pg_cpu) * per,
        "loadgen_cpu_cores": (b.loadgen_cpu - a.loadgen_cpu) / dt,
        "other_cpu_cores": max(0.0, (b.busy - a.busy) - server_cpu - (b.redis_cpu - a.redis_cpu)
                               - (b.pg_cpu - a.pg_cpu) - (b.loadgen_cpu - a.loadgen_cpu)) / dt,
        "redis_cmds_per_cycle": (b.redis_cmds - a.redis_cmds) / cycles if cycles else 0.0,
        "pg_commits_per_cycle": (b.pg_commits - a.pg_commits) / cycles if cycles else 0.0,
        "pg_write_xacts_per_cycle": (b.pg_xid - a.pg_xid) / cycles if cycles else 0.0,
        "leader": a.leader,
        "leader_changed": a.leader != b.leader,
        "exit_statuses": statuses,
        "records": records,
    }
    # Idle: what the processes cost with no load (heartbeats, lease renewals, outbox polls);
    # marginal = the window's cost less the idle cost over the same time, per cycle.
    idle_dt = i1.t - i0.t
    idle_nodes = [(i1.nodes[i] - i0.nodes[i]) / idle_dt for i in range(len(group.procs))]
    out["idle"] = {
        "seconds": idle_dt,
        "server_cpu_cores": sum(idle_nodes),
        "node_cpu_cores": {(group.names[i] or "single"): idle_nodes[i]
                           for i in range(len(idle_nodes))},
        "redis_cmds_per_s": (i1.redis_cmds - i0.redis_cmds) / idle_dt,
        "pg_commits_per_s": (i1.pg_commits - i0.pg_commits) / idle_dt,
        "leader": i0.leader,
    }
    out["server_cpu_marginal_ms_per_cycle"] = (server_cpu - sum(idle_nodes) * dt) * per
    out["idle_server_cpu_cores"] = sum(idle_nodes)
    if a.leader is not None and a.leader in group.names:
        lead = group.names.index(a.leader)
        out["leader_cpu_marginal_ms_per_cycle"] = (node_cpu[lead] - idle_nodes[lead] * dt) * per
        out["idle_leader_cpu_cores"] = idle_nodes[lead]
        edges = [node_cpu[i] * per for i in range(len(node_cpu)) if i != lead]
        out["leader_cpu_ms_per_cycle"] = node_cpu[lead] * per
        out["edge_cpu_ms_per_cycle"] = statistics.mean(edges) if edges else float("nan")
    for key in ("relay_p50_ms", "relay_p99_ms", "relay_max_ms", "relay_samples", "rate",
                "backlog_at_end", "cycle_p50_ms", "cycle_p99_ms", "start_delay_p99_ms"):
        if key in result:
            out[key] = result[key]
    return out


# --- ceilings of the shared services -----------------------------------------------------------


def redis_ceiling(services: Services, requests: int) -> dict[str, Any]:
    """``redis-benchmark``'s requests/s for the commands a cluster uses (no pipelining)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark not found (Debian package redis-tools)"}
    out: dict[str, Any] = {"method": f"redis-benchmark -c 50 -n {requests}, no pipelining, "
                                     "same machine (the client shares the 2 cores)"}
    runs = {
        "SET": ["-t", "set"],
        "HSET": ["-t", "hset"],
        "PUBLISH": ["PUBLISH", "callserver:bench", "x" * 200],
    }
    for name, extra in runs.items():
        done = subprocess.run(
            [binary, "-h", "127.0.0.1", "-p", str(services.redis_port), "-c", "50", "-n",
             str(requests), "--csv", *extra],
            capture_output=True, text=True, timeout=120, check=False)
        rps = None
        for line in done.stdout.splitlines():
            cells = [c.strip('"') for c in line.split(",")]
            if len(cells) > 1 and cells[0] != "test":
                with contextlib.suppress(ValueError):
                    rps = float(cells[1])
        out[name] = rps
    values = [v for k, v in out.items() if k in runs and isinstance(v, float)]
    out["ops_per_s"] = min(values) if values else None
    services.redis.command("FLUSHALL")
    return out


def pg_ceiling(services: Services, seconds: float) -> dict[str, Any]:
    """``pgbench -N`` (simple update: 3 statements and an insert per transaction) commits/s."""
    db = services.new_database()
    dbname = db.split("/", 3)[3].split("?", 1)[0]
    pg = services.postgres
    common = ["-h", str(pg.socket_dir), "-p", str(pg.port), "-U", pg.user]
    pgbench = str(services.pg_bin / "pgbench")
    init = subprocess.run([pgbench, *common, "-i", "-s", "1", "-q", dbname],
                          capture_output=True, text=True, timeout=120, check=False)
    if init.returncode != 0:
        return {"error": f"pgbench -i failed: {init.stderr[-500:]}"}
    done = subprocess.run(
        [pgbench, *common, "-N", "-n", "-c", "8", "-j", "2", "-T", str(max(1, round(seconds))),
         dbname], capture_output=True, text=True, timeout=seconds + 120, check=False)
    tps = None
    for line in done.stdout.splitlines():
        if line.startswith("tps =") and tps is None:
            tps = float(line.split("=", 1)[1].split()[0])
    settings = ", ".join(f"{name}={services.pg_query(f'SHOW {name}')}"
                         for name in ("fsync", "synchronous_commit"))
    return {"method": f"pgbench -N -c 8 -j 2 -T {max(1, round(seconds))} on the bench's "
                      f"PostgreSQL (scale 1, {settings}, same 2 cores)",
            "settings": settings,
            "commits_per_s": tps, **({} if tps else {"error": done.stderr[-500:]})}


# --- summary ---------------------------------------------------------------------------------


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    have = [float(v) for v in values if v is not None and v == v]
    if not have:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(have), "min": min(have), "max": max(have),
            "n": len(have)}


SUMMARY_KEYS = (
    "cycles_per_s", "server_cpu_ms_per_cycle", "server_cpu_cores", "leader_cpu_ms_per_cycle",
    "edge_cpu_ms_per_cycle", "redis_cpu_ms_per_cycle", "pg_cpu_ms_per_cycle",
    "redis_cmds_per_cycle", "pg_commits_per_cycle", "pg_write_xacts_per_cycle",
    "loadgen_cpu_cores", "other_cpu_cores", "relay_p50_ms", "relay_p99_ms", "cycle_p99_ms",
    "start_delay_p99_ms", "backlog_at_end", "server_cpu_marginal_ms_per_cycle",
    "leader_cpu_marginal_ms_per_cycle", "idle_server_cpu_cores", "idle_leader_cpu_cores",
)


def summarize(windows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median and range per configuration and mode; the cluster / single ratios and verdicts."""
    summary: dict[str, Any] = {}
    for mode in ("cycles", "paced"):
        for config in CONFIGS:
            rows = [w for w in windows if w["mode"] == mode and w["config"] == config]
            if rows:
                summary.setdefault(mode, {})[config] = {
                    key: _spread([w.get(key) for w in rows]) for key in SUMMARY_KEYS}
                summary[mode][config]["windows"] = len(rows)
    targets: dict[str, Any] = {}
    cyc = summary.get("cycles", {})
    for config, suffix in (("cluster", ""), ("edges", "_edges")):
        if "single" in cyc and config in cyc:
            single = cyc["single"]["server_cpu_ms_per_cycle"]["median"]
            cluster = cyc[config]["server_cpu_ms_per_cycle"]["median"]
            ratio = cluster / single if single and cluster is not None else None
            targets["cpu_ratio" + suffix] = {
                "value": ratio, "target": TARGET_CPU_RATIO,
                "met": ratio is not None and ratio <= TARGET_CPU_RATIO}
        paced = summary.get("paced", {})
        if config in paced:
            p99 = paced[config]["relay_p99_ms"]["median"]
            targets["relay_p99_ms" + suffix] = {
                "value": p99, "target": TARGET_P99_MS,
                "met": p99 is not None and p99 <= TARGET_P99_MS}
    bad = [w for w in windows
           if w["records"]["final_records"] != w["records"]["completed_cycles"]
           or w["records"]["completed_cycles"] == 0]
    targets["records"] = {"met": not bad, "windows_with_missing_records": len(bad)}
    summary["targets"] = targets
    return summary


def capacity(summary: dict[str, Any], redis_ops_per_s: float | None,
             pg_commits_per_s: float | None) -> dict[str, Any]:
    """Projected cycles/s: per node from CPU per cycle (1 core each), and the cluster's
    ceilings (the leader's core, Redis, PostgreSQL)."""
    cyc = summary.get("cycles", {})

    def med(config: str, key: str) -> float | None:
        value = cyc.get(config, {}).get(key, {}).get("median")
        return float(value) if value else None

    def per_s(cost_ms: float | None) -> float | None:
        return 1000.0 / cost_ms if cost_ms else None

    single_commits = med("single", "pg_commits_per_cycle")
    out: dict[str, Any] = {
        "single_node": per_s(med("single", "server_cpu_ms_per_cycle")),
        "single_pg_ceiling": pg_commits_per_s / single_commits
        if pg_commits_per_s and single_commits else None,
    }
    if "cluster" not in cyc:
        return out
    nodes = int(statistics.median(summary.get("nodes", [3]))) if summary.get("nodes") else 3
    total = med("cluster", "server_cpu_ms_per_cycle")
    leader = med("cluster", "leader_cpu_ms_per_cycle")
    redis_cmds = med("cluster", "redis_cmds_per_cycle")
    commits = med("cluster", "pg_commits_per_cycle")
    out.update({
        # the cluster's server CPU spread evenly: what one node's core carries
        "per_node_even_spread": per_s(total / nodes) if total else None,
        "per_core_of_cluster_work": per_s(total),
        "leader_core_ceiling": per_s(leader),
        "redis_ceiling": redis_ops_per_s / redis_cmds if redis_ops_per_s and redis_cmds
        else None,
        "redis_cpu_ceiling": per_s(med("cluster", "redis_cpu_ms_per_cycle")),
        "pg_ceiling": pg_commits_per_s / commits if pg_commits_per_s and commits else None,
    })
    marginal = med("cluster", "leader_cpu_marginal_ms_per_cycle")
    idle = med("cluster", "idle_leader_cpu_cores") or 0.0
    # the leader's core less what it spends idle, over its marginal cost per cycle
    out["leader_core_ceiling_marginal"] = (1000.0 * (1.0 - idle) / marginal
                                           if marginal and idle < 1.0 else None)
    bounds = [out[k] for k in ("leader_core_ceiling", "redis_ceiling", "pg_ceiling")
              if out.get(k)]
    out["cluster_ceiling"] = min(bounds) if bounds else None
    core = per_s(med("edges", "leader_cpu_ms_per_cycle"))
    if core:
        # a leader that serves no clients of its own (the load balancer leaves it out)
        out["core_only_ceiling"] = core
        edges_cmds = med("edges", "redis_cmds_per_cycle")
        edges_commits = med("edges", "pg_commits_per_cycle")
        out["edges_redis_ceiling"] = (redis_ops_per_s / edges_cmds
                                      if redis_ops_per_s and edges_cmds else None)
        out["edges_pg_ceiling"] = (pg_commits_per_s / edges_commits
                                   if pg_commits_per_s and edges_commits else None)
        more = [v for v in (core, out["edges_redis_ceiling"], out["edges_pg_ceiling"]) if v]
        out["cluster_ceiling_leader_without_clients"] = min(more)
    if out["cluster_ceiling"] and total:
        # nodes whose cores the cluster's work fills up to its ceiling
        out["nodes_to_ceiling"] = out["cluster_ceiling"] * total / 1000.0
    return out


# --- output ----------------------------------------------------------------------------------


def _cell(spread: dict[str, Any] | None, fmt: str = ".2f") -> str:
    if not spread or spread.get("median") is None:
        return "-"
    m, lo, hi = spread["median"], spread["min"], spread["max"]
    return f"{m:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else f"{value:{fmt}}"


_TITLES = {"single": "single", "cluster": "cluster", "edges": "cluster, clients on edges only"}


def _configs(results: dict[str, Any]) -> list[str]:
    ran = results.get("configs") or [c for c in CONFIGS if c in results["summary"].get(
        "cycles", {})]
    return [c for c in CONFIGS if c in ran]


def _table_head(results: dict[str, Any]) -> list[str]:
    configs = _configs(results)
    names = [_TITLES[c] for c in configs]
    ratios = [f"{_TITLES[c]} / single" for c in configs if c != "single"]
    cols = ["metric", *names, *ratios]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def render_md(results: dict[str, Any]) -> str:
    """The markdown report of a run."""
    s = results["summary"]
    t = s["targets"]
    cyc, paced = s.get("cycles", {}), s.get("paced", {})
    lines = [
        "# Cluster mode vs one node: cost per call cycle (bench.cluster)", "",
        header(results), "",
        *([f"Servers run from `{results['server_root']['path']}` at "
           f"`{results['server_root']['commit']}`.", ""] if "server_root" in results else []),
        f"{results['rounds']} alternating windows per configuration (single = 1 server, "
        f"cluster = {results['nodes']} nodes on one Redis; both on the same PostgreSQL), "
        f"{results['pairs']} pairs closed loop, {results['seconds']:g} s windows after "
        f"{results['warmup']:g} s warm-up; every cluster call crosses nodes. "
        "Median (min-max) over windows.", "",
        *_table_head(results),
    ]

    configs = _configs(results)

    def row(label: str, key: str, table: dict[str, Any], fmt: str = ".2f") -> None:
        cells = [table.get(c, {}).get(key) for c in configs]
        base = table.get("single", {}).get(key)
        ratios = []
        for c, cell in zip(configs, cells, strict=True):
            if c == "single":
                continue
            if base and cell and base.get("median") and cell.get("median") is not None:
                ratios.append(f"{cell['median'] / base['median']:.2f}")
            else:
                ratios.append("-")
        lines.append("| " + " | ".join([label, *(_cell(x, fmt) for x in cells), *ratios])
                     + " |")

    row("call cycles/s (closed loop)", "cycles_per_s", cyc, ".0f")
    row("server CPU ms / cycle (all server processes)", "server_cpu_ms_per_cycle", cyc)
    row("  leader's CPU ms / cycle", "leader_cpu_ms_per_cycle", cyc)
    row("  an edge's CPU ms / cycle (mean of the edges)", "edge_cpu_ms_per_cycle", cyc)
    row("server CPU (cores)", "server_cpu_cores", cyc)
    row("  idle server CPU (cores, no client connected, before the window)",
        "idle_server_cpu_cores", cyc, ".3f")
    row("  marginal server CPU ms / cycle (less the idle CPU)",
        "server_cpu_marginal_ms_per_cycle", cyc)
    row("  marginal leader's CPU ms / cycle", "leader_cpu_marginal_ms_per_cycle", cyc)
    row("Redis commands / cycle", "redis_cmds_per_cycle", cyc, ".1f")
    row("Redis CPU ms / cycle", "redis_cpu_ms_per_cycle", cyc)
    row("PostgreSQL commits / cycle", "pg_commits_per_cycle", cyc)
    row("PostgreSQL write transactions / cycle", "pg_write_xacts_per_cycle", cyc)
    row("PostgreSQL CPU ms / cycle", "pg_cpu_ms_per_cycle", cyc)
    row("load generator CPU (cores)", "loadgen_cpu_cores", cyc)
    row("rest of the machine CPU (cores)", "other_cpu_cores", cyc)
    if paced:
        rate = results.get("paced_rate")
        lines += ["", f"Paced at {_num(rate)} cycles/s (half the single node's median), "
                  f"{results['paced_pairs']} pairs, {results['latency_seconds']:g} s windows:", "",
                  *_table_head(results)]
        row("achieved cycles/s", "cycles_per_s", paced, ".0f")
        row("relay latency p50 ms (offer/answer, across nodes)", "relay_p50_ms", paced)
        row("relay latency p99 ms", "relay_p99_ms", paced)
        row("whole cycle p99 ms", "cycle_p99_ms", paced, ".1f")
        row("cycle start delay p99 ms (> 0: the rate was not kept up)", "start_delay_p99_ms",
            paced, ".1f")
        row("server CPU ms / cycle at this rate", "server_cpu_ms_per_cycle", paced)
        row("  marginal (less the idle CPU)", "server_cpu_marginal_ms_per_cycle", paced)
        row("  marginal leader's CPU ms / cycle", "leader_cpu_marginal_ms_per_cycle", paced)
        row("rest of the machine CPU (cores: others' load disturbs the latency)",
            "other_cpu_cores", paced)
        row("Redis commands / cycle", "redis_cmds_per_cycle", paced, ".1f")
    cap = results.get("capacity", {})
    rc, pc = results.get("redis_ceiling", {}), results.get("pg_ceiling", {})
    lines += ["", "Projected capacity (cycles/s):", "",
              "| bound | cycles/s | how |", "|---|---|---|",
              f"| single node, 1 core | {_num(cap.get('single_node'))} | 1000 / single CPU ms "
              "per cycle |",
              f"| single node, PostgreSQL commits/s | {_num(cap.get('single_pg_ceiling'))} | "
              f"{_num(pc.get('commits_per_s'))} commits/s ({pc.get('method', '-')}) / commits "
              "per cycle |"]
    if "leader_core_ceiling" in cap:
        lines += [
            f"| cluster, per node (work spread evenly) | {_num(cap.get('per_node_even_spread'))}"
            f" | 1000 / (cluster CPU ms per cycle / {results['nodes']}) |",
            f"| cluster, per core of its total work | "
            f"{_num(cap.get('per_core_of_cluster_work'))} | 1000 / cluster CPU ms per cycle |",
            f"| the leader's core (the one call core) | {_num(cap.get('leader_core_ceiling'))} |"
            " 1000 / leader CPU ms per cycle (it also serves its share of connections) |",
            f"| the leader's core, marginal | {_num(cap.get('leader_core_ceiling_marginal'))} |"
            " 1000 x (1 - idle leader cores) / marginal leader CPU ms per cycle |",
            f"| Redis ops/s | {_num(cap.get('redis_ceiling'))} | {_num(rc.get('ops_per_s'))} "
            f"ops/s ({rc.get('method', '-')}; SET {_num(rc.get('SET'))}, HSET "
            f"{_num(rc.get('HSET'))}, PUBLISH {_num(rc.get('PUBLISH'))}) / commands per cycle |",
            f"| Redis's one core | {_num(cap.get('redis_cpu_ceiling'))} | 1000 / Redis CPU ms "
            "per cycle |",
            f"| PostgreSQL commits/s | {_num(cap.get('pg_ceiling'))} | "
            f"{_num(pc.get('commits_per_s'))} commits/s ({pc.get('method', '-')}) / commits per "
            "cycle |",
            f"| **cluster ceiling** | **{_num(cap.get('cluster_ceiling'))}** | the least of the "
            "leader's core, Redis ops/s and PostgreSQL commits/s |",
        ]
        if cap.get("nodes_to_ceiling"):
            lines.append(f"| nodes (cores) the cluster fills at its ceiling | "
                         f"{cap['nodes_to_ceiling']:.1f} | ceiling x cluster CPU per cycle |")
    if "core_only_ceiling" in cap:
        lines += [
            f"| the call core alone (leader without clients) | "
            f"{_num(cap.get('core_only_ceiling'))} | 1000 / leader CPU ms per cycle, clients "
            "on edges only |",
            f"| **cluster ceiling, leader without clients** | "
            f"**{_num(cap.get('cluster_ceiling_leader_without_clients'))}** | the least of the "
            "core alone and the Redis and PostgreSQL bounds of that configuration |",
        ]
    lines.append("")
    reading = _reading(cap)
    if reading:
        lines += [reading, ""]
    verdicts = []
    for suffix, what in (("", "cluster"), ("_edges", "cluster with clients on edges only")):
        if "cpu_ratio" + suffix in t:
            r = t["cpu_ratio" + suffix]
            verdicts.append(f"{what} / single CPU per cycle {_num(r['value'], '.2f')} (target "
                            f"<= {r['target']:g}): {'met' if r['met'] else 'MISSED'}")
        if "relay_p99_ms" + suffix in t:
            r = t["relay_p99_ms" + suffix]
            verdicts.append(f"{what}: relay p99 across nodes {_num(r['value'], '.2f')} ms "
                            f"(target <= {r['target']:g} ms): {'met' if r['met'] else 'MISSED'}")
    rec = t["records"]
    verdicts.append("every completed cycle has its final record: "
                    + ("yes" if rec["met"] else
                       f"NO ({rec['windows_with_missing_records']} windows missing some)"))
    lines += ["Targets: " + "; ".join(verdicts) + ".", ""]
    return "\n".join(lines)


_BOUNDS = {"leader_core_ceiling": "the leader's core", "redis_ceiling": "Redis ops/s",
           "pg_ceiling": "PostgreSQL commits/s"}


def _reading(cap: dict[str, Any]) -> str:
    """One sentence: what binds the cluster, against one node, and how many cores it fills."""
    ceiling, single = cap.get("cluster_ceiling"), cap.get("single_node")
    if not ceiling or not single:
        return ""
    binding = min((k for k in _BOUNDS if cap.get(k)), key=lambda k: cap[k])
    text = (f"Reading: the cluster tops out at {ceiling:.0f} cycles/s, bound by "
            f"{_BOUNDS[binding]}: {ceiling / single:.2f}x one node's {single:.0f} cycles/s on "
            "its one core")
    if cap.get("nodes_to_ceiling"):
        text += (f"; at that rate the whole cluster's server work fills "
                 f"{cap['nodes_to_ceiling']:.1f} cores, so nodes beyond "
                 f"{max(1, math.ceil(cap['nodes_to_ceiling']))} add no capacity "
                 "(they only spread the connections)")
    return text + "."


def _print_windows(w: dict[str, Any]) -> None:
    extra = ""
    if "leader_cpu_ms_per_cycle" in w:
        extra = (f", leader {w['leader']} {w['leader_cpu_ms_per_cycle']:.2f} / edge "
                 f"{w['edge_cpu_ms_per_cycle']:.2f} ms")
    if "relay_p99_ms" in w:
        extra += f", relay p50 {w['relay_p50_ms']:.2f} p99 {w['relay_p99_ms']:.2f} ms"
    print(f"  {w['mode']:6s} {w['config']:7s} {w['cycles_per_s']:6.0f} cycles/s, server "
          f"{w['server_cpu_ms_per_cycle']:.2f} ms/cycle ({w['server_cpu_cores']:.2f} cores), "
          f"redis {w['redis_cmds_per_cycle']:.1f} cmds, pg {w['pg_commits_per_cycle']:.2f} "
          f"commits/cycle, records {w['records']['final_records']}/"
          f"{w['records']['completed_cycles']}{extra}", flush=True)


def cluster_available(root: Path = SERVER_ROOT) -> bool:
    """Whether the checkout's ``signaling-server serve`` has ``--cluster``."""
    done = subprocess.run([sys.executable, "-m", "signaling_server", "serve", "--help"],
                          cwd=root, capture_output=True, text=True, timeout=60, check=False)
    return "--cluster" in done.stdout


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every window, the ceilings and the summary, as a JSON-able dict."""
    raise_fd_limit()
    configs = [c for c in CONFIGS if c in args.configs.split(",")]
    cycle_opts = ["--pairs", str(args.pairs), "--warmup", str(args.warmup),
                  "--seconds", str(args.seconds)]
    windows: list[dict[str, Any]] = []
    out: dict[str, Any] = {
        "rounds": args.rounds, "nodes": args.nodes, "pairs": args.pairs,
        "paced_pairs": args.paced_pairs, "seconds": args.seconds, "warmup": args.warmup,
        "latency_seconds": args.latency_seconds, "configs": configs,
    }
    if args.server_root.resolve() != ROOT:
        done = subprocess.run(["git", "-C", str(args.server_root), "rev-parse", "--short=12",
                               "HEAD"], capture_output=True, text=True, check=False)
        out["server_root"] = {"path": str(args.server_root),
                              "commit": done.stdout.strip() or "unknown (not a git checkout)"}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)
        with start_services(tmp) as services:
            print(f"closed loop: {args.rounds} x {configs}, {args.pairs} pairs, "
                  f"{args.seconds:g} s windows", flush=True)
            for _ in range(args.rounds):
                for config in configs:
                    w = window(config, "cycles", services, tmp, args.nodes, cycle_opts,
                               args.server_root, args.idle_seconds)
                    _print_windows(w)
                    windows.append(w)
            singles = [w["cycles_per_s"] for w in windows if w["config"] == "single"]
            base = statistics.median(singles) if singles else statistics.median(
                w["cycles_per_s"] for w in windows)
            rate = max(5.0, base / 2)
            out["paced_rate"] = rate
            print(f"paced at {rate:.0f} cycles/s: {args.rounds} x {configs}", flush=True)
            paced_opts = ["--rate", f"{rate:.1f}", "--pairs", str(args.paced_pairs),
                          "--warmup", "1", "--seconds", str(args.latency_seconds)]
            for _ in range(args.rounds):
                for config in configs:
                    w = window(config, "paced", services, tmp, args.nodes, paced_opts,
                               args.server_root, args.idle_seconds)
                    _print_windows(w)
                    windows.append(w)
            print("ceilings: redis-benchmark, pgbench -N ...", flush=True)
            out["redis_ceiling"] = redis_ceiling(services, args.redis_requests)
            out["pg_ceiling"] = pg_ceiling(services, args.pgbench_seconds)
    summary = summarize(windows)
    out["windows"] = windows
    out["summary"] = summary
    out["capacity"] = capacity({**summary, "nodes": [args.nodes]},
                               out["redis_ceiling"].get("ops_per_s"),
                               out["pg_ceiling"].get("commits_per_s"))
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="single,cluster,edges",
                        help="configurations, comma-separated (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="windows per configuration")
    parser.add_argument("--nodes", type=int, default=3, help="cluster nodes")
    parser.add_argument("--pairs", type=int, default=100, help="pairs, closed loop")
    parser.add_argument("--paced-pairs", type=int, default=50, help="pairs, paced")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="closed-loop window")
    parser.add_argument("--latency-seconds", type=float, default=8.0, help="paced window")
    parser.add_argument("--idle-seconds", type=float, default=3.0,
                        help="idle measurement before each window's load")
    parser.add_argument("--redis-requests", type=int, default=100_000)
    parser.add_argument("--pgbench-seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round, 20 pairs, 3 s windows, short ceilings")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--server-root", type=Path, default=SERVER_ROOT,
                        help="checkout whose signaling_server the nodes run (default: this one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table, write ``cluster.{json,md}``; 0 unless the bench itself broke."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.rounds, args.pairs, args.paced_pairs = 1, 20, 20
        args.warmup, args.seconds, args.latency_seconds, args.idle_seconds = 1.0, 3.0, 3.0, 1.0
        args.redis_requests, args.pgbench_seconds = 10_000, 1.0
    if args.rounds < 1 or args.seconds <= 0 or args.nodes < 2:
        raise SystemExit("bench.cluster: --rounds >= 1, --seconds > 0 and --nodes >= 2")
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"bench.cluster: unknown --configs {sorted(unknown)}; known: {CONFIGS}")
    if {"cluster", "edges"} & set(args.configs.split(",")) and not cluster_available(
            args.server_root):
        print("bench.cluster: error: this checkout's signaling-server has no --cluster option; "
              "run with --configs single, or on a checkout with cluster mode", file=sys.stderr)
        return 1
    started = time.perf_counter()
    calibration = calibrate()
    results = stamp(run(args), calibration)
    results["bench_seconds"] = time.perf_counter() - started
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = render_md(results)
    (out / "cluster.md").write_text(text)
    print(text)
    print(f"results: {os.path.relpath(out / 'cluster.md')} ({results['bench_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
