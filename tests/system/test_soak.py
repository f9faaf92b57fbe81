"""Soak: 500 protocol clients making, answering and ending 1v1 calls for 60 s on one server.

The server runs as a subprocess (``python -m signaling_server``) on a file database, so its
memory can be measured on its own (psutil RSS). The 500 clients share this test's event loop
and speak the raw protocol. Every client, when idle, calls a random user after a random pause
(short ring timeouts of 1 or 3 s); callees accept (65 %), reject (15 %) or let the call ring
out (20 %); callers sometimes cancel; connected calls are hung up by either side after 0.2 to
1.5 s. After 60 s nobody starts a new call, every call in progress finishes, and then:

* every call id any client saw has exactly one final record (non-empty result), the database
  holds no call no client saw, and no call was left to be interrupted;
* the server's RSS at the end is within 10 % of its RSS after a 10 s warm-up;
* the only error replies are the documented races: -1203 (the request no longer fits the
  user's state, e.g. calling while an invitation is arriving) and 4040 (the call ended just
  before, e.g. accepting a call the caller cancelled, or both hanging up at once).

Bounded: 60 s of load, at most 15 s to drain, 150 s pytest timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from callclient.errors import ErrorCode
from callwire import protocol
from callwire.protocol import Event, Reply
from callwire.usersig import generate_user_sig

APP = 1400000777
KEY = "soak-test-secret-key"
CLIENTS = 500
LOAD_S = 60.0
WARMUP_S = 10.0
DRAIN_S = 15.0
MEMORY_RATIO = 1.10
ALLOWED_ERRORS = frozenset({ErrorCode.REQUEST_REFUSED, ErrorCode.CALL_NOT_FOUND})


@dataclass
class Tally:
    """Everything the clients saw."""

    call_ids: set[str] = field(default_factory=set)
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    endings: Counter[str] = field(default_factory=Counter)


class SoakClient:
    """One user: a websocket, a reader that routes replies and queues events, and a loop."""

    def __init__(self, user: str, rng: random.Random, tally: Tally) -> None:
        self.user = user
        self.rng = rng
        self.tally = tally
        self.ws: ClientConnection | None = None
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[Reply]] = {}
        self.ids = 0
        self.status = "idle"  # idle | calling | ringing | connected
        self.call_id: str | None = None
        self.action: tuple[float, str] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.events_before: dict[int, int] = {}
        """Per request id: events already queued when its reply arrived (they came first)."""
        self.events_before_reply = 0
        """The same for the last reply :meth:`request` returned."""

    async def open(self, url: str) -> None:
        """Connect and log in."""
        self.ws = await connect(url, compression=None, open_timeout=30)
        self.reader = asyncio.get_running_loop().create_task(self._read(self.ws))
        reply = await self.request("login", {
            "sdkAppId": APP, "userID": self.user,
            "userSig": generate_user_sig(APP, KEY, self.user),
            "protocolVersion": protocol.PROTOCOL_VERSION})
        assert reply.ok, reply.message

    async def close(self) -> None:
        """Close the websocket."""
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                frame = protocol.parse_server_frame(raw)
                if isinstance(frame, Reply):
                    future = (
                        self.pending.pop(frame.id, None) if isinstance(frame.id, int) else None
                    )
                    if future is None:
                        self.tally.unexpected.append(f"{self.user}: stray reply {frame}")
                    elif not future.done():
                        assert isinstance(frame.id, int)
                        self.events_before[frame.id] = self.events.qsize()
                        future.set_result(frame)
                elif isinstance(frame, Event):
                    self.events.put_nowait(frame)
        if self.status != "closing":
            self.tally.unexpected.append(f"{self.user}: connection closed {ws.close_code}")

    async def request(self, kind: str, data: dict[str, Any]) -> Reply:
        """Send a request and wait for its reply; error replies are tallied."""
        assert self.ws is not None
        self.ids += 1
        request_id = self.ids
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        await self.ws.send(protocol.encode_request(kind, request_id, data))
        reply = await asyncio.wait_for(future, 15)
        self.events_before_reply = self.events_before.pop(request_id, 0)
        self.tally.requests[kind] += 1
        if not reply.ok:
            self.tally.errors[(kind, reply.code)] += 1
            if reply.code not in ALLOWED_ERRORS:
                self.tally.unexpected.append(f"{self.user}: {kind} -> [{reply.code}] "
                                             f"{reply.message}")
        return reply

    # ------------------------------------------------------------------ behaviour

    def _later(self, low: float, high: float, what: str) -> None:
        self.action = (time.monotonic() + self.rng.uniform(low, high), what)

    def _idle(self) -> None:
        self.status, self.call_id = "idle", None
        self._later(0.3, 3.0, "call")

    def _on_event(self, event: Event) -> None:
        data = event.data
        call_id = data.get("callId")
        if isinstance(call_id, str):
            self.tally.call_ids.add(call_id)
        if event.name == "ON_CALL_RECEIVED":
            if self.status != "idle":
                self.tally.unexpected.append(f"{self.user}: invited while {self.status}")
                return
            self.status, self.call_id = "ringing", call_id
            roll = self.rng.random()
            if roll < 0.65:
                self._later(0.05, 0.5, "accept")
            elif roll < 0.80:
                self._later(0.05, 0.5, "reject")
            else:
                self.action = None  # let it ring out
        elif call_id != self.call_id:
            return
        elif event.name == "ON_CALL_BEGIN":
            self.status = "connected"
            self._later(0.2, 1.5, "hangup")
        elif event.name == "CALLING_END" or (
            event.name == "ON_CALL_CANCELED" and data.get("userID") == self.user
        ):
            self.tally.endings[event.name + ":" + str(data.get("reason"))] += 1
            self._idle()

    async def _act(self, what: str, others: list[str], stopping: bool) -> None:
        if what == "call":
            if stopping:
                self.action = None
                return
            callee = self.rng.choice(others)
            timeout = 1 if self.rng.random() < 0.2 else 3
            reply = await self.request("calls", {"userIDList": [callee],
                                                 "mediaType": self.rng.choice([1, 2]),
                                                 "timeout": timeout})
            # Events that arrived before the reply happened before the call: handle them
            # first (an invitation that was cancelled before our call began is not one that
            # reaches us "while calling"; taking them after the reply was this test's race).
            for _ in range(self.events_before_reply):
                self._on_event(self.events.get_nowait())
            if reply.ok:
                self.tally.call_ids.add(reply.data["callId"])
                if self.status == "idle":  # its events have not been read yet
                    self.status, self.call_id = "calling", reply.data["callId"]
                    if self.rng.random() < 0.07:
                        self._later(0.1, 1.0, "cancel")
                    else:
                        self.action = None
            else:
                self._later(0.1, 1.0, "call")
            return
        self.action = None
        kind = {"accept": "accept", "reject": "reject", "hangup": "hangup",
                "cancel": "hangup"}[what]
        assert self.call_id is not None
        await self.request(kind, {"callId": self.call_id})

    async def run(self, others: list[str], stop_at: float, end_at: float) -> None:
        """Act until ``stop_at``, then only finish the call in progress (until ``end_at``)."""
        self._later(0.0, 3.0, "call")
        while time.monotonic() < end_at:
            stopping = time.monotonic() >= stop_at
            if stopping and self.status == "idle" and self.events.empty():
                return
            wait = end_at - time.monotonic()
            if self.action is not None:
                wait = min(wait, self.action[0] - time.monotonic())
            try:
                event = await asyncio.wait_for(self.events.get(), max(0.0, wait))
            except TimeoutError:
                if self.action is not None and self.action[0] <= time.monotonic():
                    await self._act(self.action[1], others, stopping)
                continue
            self._on_event(event)
        self.tally.unexpected.append(f"{self.user}: still {self.status} at the end")


@pytest.fixture
async def server_process(
    tmp_path: Path,
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process, Path]]:
    """The server subprocess: its URL, its process, its database."""
    db = tmp_path / "records.db"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling_server", "--port", "0", "--db", str(db),
        "--sdkappid", str(APP), "--secret-key", KEY, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        match = re.search(r"listening on (ws://\S+)", line)
        assert match, line
        yield match.group(1), process, db
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.mark.soak
@pytest.mark.timeout(150)
async def test_soak_500_clients_60_s(
    server_process: tuple[str, asyncio.subprocess.Process, Path],
) -> None:
    """500 clients calling for 60 s: every call recorded once, memory flat, only race errors."""
    url, process, db = server_process
    proc = psutil.Process(process.pid)
    tally = Tally()
    rng = random.Random(500)
    users = [f"soak{i:03d}" for i in range(CLIENTS)]
    clients = [SoakClient(u, random.Random(rng.random()), tally) for u in users]
    try:
        for start in range(0, CLIENTS, 50):
            await asyncio.gather(*(c.open(url) for c in clients[start:start + 50]))
        begin = time.monotonic()
        stop_at, end_at = begin + LOAD_S, begin + LOAD_S + DRAIN_S

        async def sample_memory() -> float:
            await asyncio.sleep(WARMUP_S)
            return float(proc.memory_info().rss)

        sampler = asyncio.get_running_loop().create_task(sample_memory())
        await asyncio.gather(*(
            c.run([u for u in users if u != c.user], stop_at, end_at) for c in clients
        ))
        drained = time.monotonic() - stop_at
        warm_rss = await sampler
        end_rss = float(proc.memory_info().rss)
        cpu = proc.cpu_times()
    finally:
        for client in clients:
            client.status = "closing"
        await asyncio.gather(*(c.close() for c in clients))
    process.terminate()  # graceful stop: the writer flushes and closes the database
    assert await asyncio.wait_for(process.wait(), 15) == 0

    with contextlib.closing(sqlite3.connect(db)) as conn:
        # One row per call is the primary key's job; what can go wrong is a record left open,
        # with an unknown result, or ending before it started.
        rows = conn.execute(
            "SELECT call_id, result, end_ts IS NULL OR end_ts < start_ts FROM calls "
            "WHERE sdk_app_id = ?", (APP,)
        ).fetchall()
    stored = {call_id: (result, bad_end) for call_id, result, bad_end in rows}
    results = Counter(result for result, _ in stored.values())
    ratio = end_rss / warm_rss
    summary = (
        f"{len(tally.call_ids)} calls in {LOAD_S:.0f} s (+{drained:.1f} s drain) "
        f"{dict(results)}; {sum(tally.requests.values())} requests {dict(tally.requests)}; "
        f"errors {dict(tally.errors)}; server RSS {warm_rss / 2**20:.1f} MiB after warm-up, "
        f"{end_rss / 2**20:.1f} MiB at the end (x{ratio:.3f}); server CPU "
        f"{cpu.user + cpu.system:.1f} s"
    )
    print(summary)
    assert not tally.unexpected, "\n".join([summary, *tally.unexpected[:20]])
    missing = [c for c in tally.call_ids if c not in stored]
    assert not missing, f"{len(missing)} calls have no record, e.g. {missing[:3]}"
    assert set(stored) == tally.call_ids, "the database holds calls no client saw"
    final = {"normal_end", "reject", "not_answer", "cancel", "call_busy", "interrupt"}
    bad = {c: v for c, v in stored.items() if v[0] not in final or v[1]}
    assert not bad, f"calls without a final record (result, bad end): {list(bad.items())[:5]}"
    assert results["interrupt"] == 0, summary
    for result in ("normal_end", "reject", "not_answer", "cancel", "call_busy"):
        assert results[result] > 0, f"no {result}: {summary}"
    assert len(tally.call_ids) > 2000, summary
    assert ratio <= MEMORY_RATIO, summary
