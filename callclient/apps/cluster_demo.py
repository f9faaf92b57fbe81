"""``make cluster-demo`` / ``callclient demo --cluster``: a call across the nodes of a cluster.

It starts a local Redis (the cluster's bus) and PostgreSQL (its shared records) from the
Debian packages' binaries (:mod:`signaling_server.devservices`), then three
``signaling-server serve --cluster REDIS_URL --db PG_URL --port P --node-name nodeK``
subprocesses. bob is a ``callclient bot --auto-accept`` subprocess given the nodes' URLs
starting with node2, alice an engine with virtual devices given them starting with node1, so
they log in to different nodes; alice calls bob as in ``callclient demo``: events as they
happen, then fps and latency both ways and ``OUT/alice-sees-bob.png``. The nodes' logs go to
``OUT/cluster-logs/``.

With ``kill_leader`` (``--kill-leader``), halfway through the call the node holding the
cluster's lease (the call owner, read from Redis) is SIGKILLed: another node takes the lease
over and adopts the call, the clients reconnect (to any node) and the call goes on; the demo
says how long each step took and fails if the call did not survive.

Everything is stopped at the end, on a failure and on Ctrl-C: bob, the nodes (SIGTERM), then
PostgreSQL and Redis. Every child runs in a process group of its own, so a Ctrl-C reaches the
demo only, which stops them in that order; a demo that is killed takes them with it
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from callclient.apps.demo import BotProcess, alice_calls_bob
from callclient.engine import CallEngine
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.extras import require
from signaling_server.devservices import (
    LocalPostgres,
    LocalRedis,
    ServiceError,
    free_port,
    parent_death_signal,
)

__all__ = ["DemoError", "NodeProcess", "node_command", "run_cluster_demo"]

_NODE_START_TIMEOUT = 30.0
_NODE_STOP_TIMEOUT = 15.0
_BOT_START_TIMEOUT = 30.0
"""bob's login may wait for the cluster to elect its call owner (4505 is retried)."""
_FAILOVER_TIMEOUT = 20.0
_LISTENING = re.compile(r"listening on (wss?://\S+)")

Say = Callable[[str], None]


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


def node_command(
    name: str, port: int, redis_url: str, db_url: str, extra: Sequence[str] = ()
) -> list[str]:
    """The command line of one cluster node (``python -m signaling_server serve ...``)."""
    return [
        sys.executable, "-m", "signaling_server", "serve", "--cluster", redis_url,
        "--db", db_url, "--host", "127.0.0.1", "--port", str(port), "--node-name", name,
        "--sdkappid", str(DEV_SDK_APP_ID), "--secret-key", DEV_SECRET_KEY, *extra,
    ]


class NodeProcess:
    """One ``signaling-server`` node: its stdout is printed line by line with its name, its
    stderr (the log) goes to ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, say: Say) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.url = ""
        """The websocket URL the node printed, once it listens."""
        self._say = say
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the node and wait until it says it listens; :class:`DemoError` if it exits
        first or says nothing within the timeout."""
        self._log = await asyncio.to_thread(self.log_path.open, "wb")
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=self._log,
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=parent_death_signal(signal.SIGTERM),
            process_group=0,
        )
        assert self._proc.stdout is not None
        try:
            async with asyncio.timeout(_NODE_START_TIMEOUT):
                while not self.url:
                    raw = await self._proc.stdout.readline()
                    if not raw:
                        code = await self._proc.wait()
                        raise DemoError(f"{self.name} exited with status {code} before "
                                        f"listening: {await self.log_tail()}")
                    line = raw.decode(errors="replace").rstrip()
                    match = _LISTENING.search(line)
                    if match:
                        self.url = match.group(1)
                    else:
                        self._say(f"{self.name}: {line}")
        except TimeoutError:
            raise DemoError(f"{self.name} did not listen within {_NODE_START_TIMEOUT:g} s: "
                            f"{await self.log_tail()}") from None
        self._pump = asyncio.create_task(self._echo(), name=f"cluster-demo-{self.name}")

    async def _echo(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            self._say(f"{self.name}: {raw.decode(errors='replace').rstrip()}")

    async def log_tail(self, lines: int = 6) -> str:
        """The last lines of the node's log, on one line (for error messages)."""
        if self._log is not None:
            self._log.flush()
        try:
            text = await asyncio.to_thread(self.log_path.read_text, errors="replace")
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in text.strip().splitlines()[-lines:]]
        return " | ".join(tail) or "(nothing in its log)"

    def kill(self) -> None:
        """SIGKILL the node now (as a crash would); :meth:`stop` reaps it."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def stop(self) -> int | None:
        """SIGTERM (SIGKILL after a timeout), wait for the exit; its status (None if it never
        started). Idempotent."""
        proc = self._proc
        if proc is None:
            self._close_log()
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(_NODE_STOP_TIMEOUT):
                code = await proc.wait()
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        pump, self._pump = self._pump, None
        if pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        self._close_log()
        return code

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()


async def run_cluster_demo(
    seconds: float = 8.0,
    out: Path = Path("out"),
    *,
    nodes: int = 3,
    node_args: Sequence[str] = (),
    kill_leader: bool = False,
) -> int:
    """Run the demo; the exit status (0 when the call across nodes carried video both ways,
    and with ``kill_leader`` survived the call owner's death).

    ``node_args`` are appended to every node's command line (``--log-level INFO``, ...).
    """
    since = time.time()

    def say(text: str) -> None:
        print(f"+{time.time() - since:6.3f}s {text}", flush=True)

    logs = out / "cluster-logs"
    await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
    redis: LocalRedis | None = None
    postgres: LocalPostgres | None = None
    started: list[NodeProcess] = []
    bob: BotProcess | None = None
    try:
        say("starting redis-server (the cluster's bus) and PostgreSQL (its shared records)")
        redis = LocalRedis()
        postgres = LocalPostgres()
        await asyncio.gather(asyncio.to_thread(redis.start), asyncio.to_thread(postgres.start))
        db_url = await asyncio.to_thread(postgres.new_database, "callcluster")
        say(f"redis-server on {redis.url}")
        say(f"PostgreSQL database callcluster on {postgres.socket_dir}")

        names = [f"node{k}" for k in range(1, nodes + 1)]
        started = [
            NodeProcess(name, node_command(name, free_port(), redis.url, db_url, node_args),
                        logs / f"{name}.log", say)
            for name in names
        ]
        say(f"starting {nodes} nodes: signaling-server serve --cluster {redis.url} "
            f"--db ... --node-name {names[0]}..{names[-1]} (subprocesses; logs in {logs})")
        await _start_all(started)
        for node in started:
            say(f"{node.name} listening on {node.url}")
        node_of = {node.url: node.name for node in started}
        urls = [node.url for node in started]

        record_dir = out / "bob-recordings"
        bob_urls = urls[1:] + urls[:1]
        say(f"starting bob: callclient bot --server {','.join(bob_urls)} --auto-accept "
            f"--record {record_dir} (a subprocess; {names[1 % nodes]} first)")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callclient", "bot", "--user", "bob",
            "--server", ",".join(bob_urls), "--auto-accept", "--record", str(record_dir),
            "--tone", "660", "--json", stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=parent_death_signal(signal.SIGTERM),
            process_group=0,
        )
        bob = BotProcess(proc, since)
        if not await bob.wait_for(bob.ready.is_set, _BOT_START_TIMEOUT):
            raise DemoError("bob did not log in (is the cluster up? see the nodes' logs in "
                            f"{logs})")
        bob_url = next(str(r["args"][0]) for r in bob.records if r.get("event") == "bot_ready")
        say(f"bob is on {node_of.get(bob_url, bob_url)}; alice logs in starting with node1")
        alice_url: list[str] = []

        def alice_on(url: str) -> None:
            alice_url.append(url)
            say(f"alice is on {node_of.get(url, url)}")

        failover = None
        if kill_leader:
            by_name = {node.name: node for node in started}
            redis_url = redis.url

            async def failover(engine: CallEngine) -> bool:
                return await _kill_the_leader(engine, redis_url, by_name, node_of, say)

        code = await alice_calls_bob(urls, bob, seconds, out, since, say, on_login=alice_on,
                                     mid_call=failover)
        if alice_url:
            across = "across nodes" if alice_url[0] != bob_url else "on one node"
            print(f"  the call ran {across}: alice on {node_of.get(alice_url[0], '?')}, bob on "
                  f"{node_of.get(bob_url, '?')}", flush=True)
        return code
    except (DemoError, ServiceError) as exc:
        say(f"error: {exc}")
        return 1
    finally:
        await _stop_all(say, bob, started, postgres, redis)


def _leader_key() -> str:
    """The Redis key of the cluster's lease (docs: ``callserver:<sdkappid>:leader``)."""
    return f"callserver:{DEV_SDK_APP_ID}:leader"


async def _leader(client: Any) -> str:
    """The name of the node holding the lease (``"<index>|<epoch>|<name>"``), '' if none."""
    raw = await client.get(_leader_key())
    if raw is None:
        return ""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return text.split("|", 2)[2] if text.count("|") >= 2 else ""


_T = TypeVar("_T")


async def _poll(read: Callable[[], Awaitable[_T]], done: Callable[[_T], bool]) -> _T:
    """Read every 50 ms until ``done`` holds for what was read; that value (the caller
    bounds the wait)."""
    while True:
        value = await read()
        if done(value):
            return value
        await asyncio.sleep(0.05)


async def _kill_the_leader(
    engine: CallEngine,
    redis_url: str,
    nodes: Mapping[str, NodeProcess],
    node_of: Mapping[str, str],
    say: Say,
) -> bool:
    """SIGKILL the node holding the lease, then wait until another one holds it and alice
    is connected again with her call; whether the call survived."""
    redis_asyncio = require("redis.asyncio", extra="cluster", feature="the cluster demo")
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        leader = await _leader(client)
        if leader not in nodes:
            say(f"error: no node holds the cluster's lease (read {leader!r})")
            return False
        call = engine.current_call
        say(f"killing {leader} (the call owner: it holds the lease) with SIGKILL")
        killed_at = time.monotonic()
        nodes[leader].kill()
        try:
            async with asyncio.timeout(_FAILOVER_TIMEOUT):
                new = await _poll(lambda: _leader(client), lambda name: name not in ("", leader))
                say(f"{new} holds the lease now, {time.monotonic() - killed_at:.1f} s after "
                    "the kill: it took the call over")

                async def reconnected() -> bool:
                    return engine.connected and node_of.get(engine.server_url) != leader

                await _poll(reconnected, bool)
        except TimeoutError:
            say(f"error: no failover within {_FAILOVER_TIMEOUT:g} s")
            return False
    finally:
        await client.aclose()
    now = engine.current_call
    if call is None or now is None or now.call_id != call.call_id:
        say("error: alice's call did not survive the failover")
        return False
    say(f"alice is connected to {node_of.get(engine.server_url, engine.server_url)}, "
        f"{time.monotonic() - killed_at:.1f} s after the kill; the call goes on")
    return True


async def _start_all(nodes: Sequence[NodeProcess]) -> None:
    """Start every node at once; the first failure is raised (the others are cancelled)."""
    try:
        async with asyncio.TaskGroup() as group:
            for node in nodes:
                group.create_task(node.start())
    except* DemoError as failures:
        raise failures.exceptions[0] from None


async def _stop_all(
    say: Say,
    bob: BotProcess | None,
    nodes: Sequence[NodeProcess],
    postgres: LocalPostgres | None,
    redis: LocalRedis | None,
) -> None:
    """Stop bob, then the nodes, then PostgreSQL and Redis; each once, whatever failed."""
    if bob is not None:
        say(f"bob exited with status {await bob.stop()}")
    codes = await asyncio.gather(*(node.stop() for node in nodes))
    for node, code in zip(nodes, codes, strict=True):
        if code is not None:
            say(f"{node.name} exited with status {code}")
    services = [s for s in (postgres, redis) if s is not None]
    if services:
        await asyncio.gather(*(asyncio.to_thread(s.close) for s in services))
        say("PostgreSQL and redis-server stopped, their directories removed")
