"""Fuzzing a real signaling server over websockets, with invariants checked after each run.

Eight users on their own websockets act at once, driven by a seeded random generator: mostly
valid requests picked from what each user knows (its call, other users' calls, random ids),
mixed with mutated frames (fields deleted or retyped, huge numbers, deep nesting, NaN
literals, lone surrogates, truncation, binary and oversized frames), logouts, and abrupt
disconnects followed by a new login. Each run is bounded in actions and time.

After each run:

* every frame got exactly one reply, carrying the request's id whenever it had a valid one;
  no reply was INTERNAL (4500) and the server logged no error;
* no user was ever in two calls (checked every few milliseconds during the run, and at the
  end, from ``server.core``);
* every call any client saw has exactly one record, with a non-empty result, once it
  finished (calls still running are recorded as ``interrupt`` when the server stops);
* no relay reached a user who was not, in that user's own stream of frames, a joined member
  of that call at that moment, and none came from a sender that stream did not show joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from callclient.errors import ErrorCode
from callwire import protocol
from callwire.protocol import Event, Relay, Reply
from signaling_server.core import CoreConfig
from signaling_server.groups import Group
from signaling_server.server import SignalingServer
from tests.helpers.servers import APP, new_server, sig

USERS = [f"u{i}" for i in range(8)]
ACTIONS_PER_USER = 200
RUN_LIMIT_S = 25.0
CORE = CoreConfig(
    rate_per_s=100_000.0,
    rate_burst=100_000.0,
    max_invalid_frames=1_000_000,  # the limit itself is tested in test_server_bad_input.py
    reconnect_grace_s=0.3,
    default_timeout_s=2,
)


@dataclass
class Stream:
    """What one connection received, with the call membership that stream implies."""

    conn_no: int
    sent: int = 0
    replies: int = 0
    reply_ids: Counter[Any] = field(default_factory=Counter)
    joined_call: str | None = None
    members: set[str] = field(default_factory=set)
    ringing: set[str] = field(default_factory=set)


class FuzzUser:
    """One user's websocket(s), sending one frame at a time and checking every reply."""

    def __init__(self, user: str, url: str, rng: random.Random, world: World) -> None:
        self.user = user
        self.url = url
        self.rng = rng
        self.world = world
        self.ws: ClientConnection | None = None
        self.stream = Stream(0)
        self.reader: asyncio.Task[None] | None = None
        self.replies: asyncio.Queue[Reply] = asyncio.Queue()
        self.next_id = 0
        self.logged_in = False
        self.inflight: dict[int | str, tuple[str, dict[str, Any]]] = {}
        """Well-formed requests awaiting their reply: the reader applies an ok reply to the
        stream state at once, before the events that follow it."""

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Open a new websocket (a new stream) and start reading it."""
        self.ws = await connect(self.url, compression=None, max_size=2**22)
        self.stream = Stream(self.stream.conn_no + 1)
        self.world.streams.append((self.user, self.stream))
        self.replies = asyncio.Queue()
        self.logged_in = False
        self.reader = asyncio.get_running_loop().create_task(self._read(self.ws, self.stream))

    async def disconnect(self) -> None:
        """Drop the websocket without a closing handshake."""
        if self.ws is not None:
            self.ws.transport.abort()
            with contextlib.suppress(ConnectionClosed):
                await self.ws.wait_closed()
        if self.reader is not None:
            await self.reader
        self.ws = None

    async def _read(self, ws: ClientConnection, stream: Stream) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                frame = protocol.parse_server_frame(raw)
                if isinstance(frame, Reply):
                    stream.replies += 1
                    stream.reply_ids[frame.id] += 1
                    sent = self.inflight.pop(frame.id, None) if frame.id is not None else None
                    if sent is not None and frame.ok:
                        self._after_ok(stream, *sent, frame)
                    self.replies.put_nowait(frame)
                elif isinstance(frame, Event):
                    self._track_event(stream, frame)
                else:
                    self._check_relay(stream, frame)

    # ------------------------------------------------------------------ stream tracking

    def _track_event(self, stream: Stream, event: Event) -> None:
        data = event.data
        call_id = data.get("callId")
        if isinstance(call_id, str):
            self.world.seen_calls.add(call_id)
        me = self.user
        if event.name == "ON_CALL_RECEIVED":
            stream.ringing.add(data["callId"])
        elif event.name == "ON_CALL_BEGIN":
            stream.ringing.discard(call_id)
            if stream.joined_call not in (None, call_id):
                self.world.fail(f"{me}: ON_CALL_BEGIN {call_id} while in {stream.joined_call}")
            if stream.joined_call != call_id:
                stream.joined_call, stream.members = call_id, set()
        elif event.name == "USER_ENTER" and call_id == stream.joined_call:
            stream.members.add(data["userID"])
        elif event.name == "USER_LEAVE" and call_id == stream.joined_call:
            stream.members.discard(data["userID"])
        elif event.name == "CALLING_END" or (
            event.name == "ON_CALL_CANCELED" and data.get("userID") == me
        ):
            stream.ringing.discard(call_id)
            if call_id == stream.joined_call:
                stream.joined_call, stream.members = None, set()
        elif event.name in ("KICKED_OUT", "ERROR"):
            self.world.fail(f"{me}: unexpected {event.name} {data}")

    def _check_relay(self, stream: Stream, relay: Relay) -> None:
        self.world.relays += 1
        if relay.call_id != stream.joined_call:
            self.world.fail(
                f"relay of call {relay.call_id} from {relay.sender} reached {self.user}, "
                f"whose stream shows it in {stream.joined_call}"
            )
        elif relay.sender not in stream.members:
            self.world.fail(
                f"relay from {relay.sender} reached {self.user} in {relay.call_id}, but the "
                f"stream shows only {sorted(stream.members)} joined"
            )

    # ------------------------------------------------------------------ sending

    def _fresh_id(self) -> str:
        self.next_id += 1
        return f"{self.user}-{self.stream.conn_no}-{self.next_id}"

    async def send(self, frame: str | bytes, request_id: str | None) -> Reply | None:
        """Send one frame and wait for its one reply; None if the connection was lost."""
        ws = self.ws
        assert ws is not None
        self.inflight.clear()
        with contextlib.suppress(protocol.ProtocolViolation):
            parsed = protocol.parse_request(frame)  # the server will accept it as well
            self.inflight[parsed.id] = (parsed.type, parsed.data)
        try:
            await ws.send(frame)
        except ConnectionClosed:
            return None
        self.stream.sent += 1
        get = asyncio.get_running_loop().create_task(self.replies.get())
        assert self.reader is not None
        done, _ = await asyncio.wait({get, self.reader}, timeout=5.0,
                                     return_when=asyncio.FIRST_COMPLETED)
        if get not in done:
            get.cancel()
            if self.reader.done():
                self.world.fail(f"{self.user}: connection lost after {str(frame)[:120]!r}")
                return None
            self.world.fail(f"{self.user}: no reply to {str(frame)[:120]!r} within 5 s")
            return None
        reply = get.result()
        if request_id is not None and reply.id != request_id:
            self.world.fail(f"{self.user}: reply to {request_id} carries id {reply.id!r}")
        if not reply.ok:
            self.world.codes[reply.code] += 1
            if reply.code == ErrorCode.INTERNAL:
                self.world.fail(f"{self.user}: INTERNAL reply to {str(frame)[:200]!r}")
        return reply

    async def request(self, kind: str, data: dict[str, Any]) -> Reply | None:
        """A well-formed request with a fresh id."""
        request_id = self._fresh_id()
        return await self.send(protocol.encode_request(kind, request_id, data), request_id)

    def _after_ok(self, stream: Stream, kind: str, data: dict[str, Any], reply: Reply) -> None:
        if kind == "login":
            self.logged_in = True
            active = reply.data.get("activeCall")
            if active is not None:
                stream.joined_call = active["callId"]
                stream.members = set(active["userIDList"]) - {self.user}
        elif kind == "logout":
            self.logged_in = False
        elif kind == "calls":
            call_id = reply.data["callId"]
            self.world.seen_calls.add(call_id)
            # The caller is a joined member from the start.
            if stream.joined_call is not None:
                self.world.fail(f"{self.user}: calls succeeded while in {stream.joined_call}")
            stream.joined_call, stream.members = call_id, set()

    async def login(self) -> None:
        """Log in on the current connection."""
        await self.request(
            "login",
            {"sdkAppId": APP, "userID": self.user, "userSig": sig(self.user),
             "protocolVersion": protocol.PROTOCOL_VERSION},
        )

    # ------------------------------------------------------------------ actions

    def _some_call(self) -> str:
        rng = self.rng
        mine = [c for c in (self.stream.joined_call, *self.stream.ringing) if c]
        roll = rng.random()
        if mine and roll < 0.7:
            return rng.choice(mine)
        if self.world.seen_calls and roll < 0.95:
            return rng.choice(sorted(self.world.seen_calls))
        return "".join(rng.choices(string.ascii_letters, k=rng.randint(1, 64)))

    def _others(self, low: int = 1, high: int = 3) -> list[str]:
        return self.rng.sample([u for u in USERS if u != self.user], self.rng.randint(low, high))

    def valid_request(self) -> tuple[str, dict[str, Any]]:
        """A well-formed request, mostly one that makes sense for this user now."""
        rng = self.rng
        call_id = self._some_call()
        stream = self.stream
        if stream.ringing and rng.random() < 0.5:
            return rng.choice(["accept", "accept", "accept", "reject"]), {
                "callId": rng.choice(sorted(stream.ringing))}
        if stream.members and stream.joined_call and rng.random() < 0.5:
            return "relay", {
                "callId": stream.joined_call, "to": rng.choice(sorted(stream.members)),
                "kind": "candidate", "payload": {"candidate": "c" * rng.randint(0, 99)}}
        kind = rng.choices(
            ["calls", "accept", "reject", "ignore", "hangup", "invite", "join",
             "switch_media_type", "media_state", "network_quality", "relay", "self_info",
             "ping", "query_recent_calls", "delete_record_calls", "join_in_group_call",
             "get_group_call", "get_user_info"],
            weights=[8, 8, 2, 1, 4, 2, 2, 1, 2, 1, 12, 1, 1, 1, 1, 3, 1, 1],
        )[0]
        data: dict[str, Any]
        if kind == "calls":
            data = {"userIDList": self._others(1, rng.choice([1, 1, 1, 3])),
                    "mediaType": rng.choice([1, 2]), "timeout": rng.randint(1, 3)}
            if rng.random() < 0.2:
                data["groupId"] = "g" + str(rng.randint(0, 9))
        elif kind == "invite":
            data = {"callId": call_id, "userIDList": self._others(1, 2),
                    "timeout": rng.randint(1, 3)}
        elif kind == "switch_media_type":
            data = {"callId": call_id, "mediaType": rng.choice([1, 2])}
        elif kind == "media_state":
            data = {"callId": call_id, "camera": rng.random() < 0.5,
                    "microphone": rng.random() < 0.5}
        elif kind == "network_quality":
            data = {"callId": call_id, "quality": rng.randint(0, 6)}
        elif kind == "relay":
            to = rng.choice(sorted(self.stream.members)) if (
                self.stream.members and rng.random() < 0.8
            ) else rng.choice(USERS)
            data = {"callId": call_id, "to": to,
                    "kind": rng.choice(sorted(protocol.RELAY_KINDS)),
                    "payload": {"n": rng.randint(0, 10**6), "sdp": "v=0 " * rng.randint(0, 50)}}
        elif kind == "self_info":
            data = {"nickname": rng.choice(["", "Ann", "日本語", "😀"])}
        elif kind == "join_in_group_call":
            data = {"groupId": "g" + str(rng.randint(0, 9)), "mediaType": rng.choice([1, 2])}
        elif kind == "get_group_call":
            data = {"groupId": "g" + str(rng.randint(0, 9))}
        elif kind == "get_user_info":
            data = {"userIDList": self._others(1, 4)}
        elif kind in ("ping",):
            data = {}
        elif kind == "query_recent_calls":
            data = {"limit": rng.randint(1, 50)}
        elif kind == "delete_record_calls":
            data = {"callIds": [self._some_call()]}
        else:
            data = {"callId": call_id}
        return kind, data

    def garbage(self) -> tuple[str | bytes, str | None]:
        """A mutated or malformed frame, and the id its reply must carry (None: any)."""
        rng = self.rng
        kind, data = self.valid_request()
        request_id = self._fresh_id()
        frame: dict[str, Any] = {"type": kind, "id": request_id, "data": data}
        how = rng.choice(
            ["delete", "retype", "huge", "nest", "unicode", "nan", "unknown", "bad_id",
             "truncate", "binary", "not_object", "too_large", "bad_type"]
        )
        keep_id: str | None = request_id
        if how == "delete" and data:
            del data[rng.choice(sorted(data))]
        elif how == "retype" and data:
            key = rng.choice(sorted(data))
            data[key] = rng.choice([None, True, 1.5, -1, "x", [], {}, [data[key]], str(data[key])])
        elif how == "huge":
            key = rng.choice(sorted(data)) if data else "x"
            data[key] = 10 ** rng.randint(18, 4000)
            if rng.random() < 0.3:
                frame["id"], keep_id = 10 ** rng.randint(16, 60), None
        elif how == "nest":
            depth = rng.choice([31, 33, 200, 990, 5000, 20000])
            key = "payload" if kind == "relay" else rng.choice(["payload", "x"])
            data[key] = json.loads("[" * depth + "]" * depth) if depth < 900 else None
            if depth >= 900:
                text = json.dumps(frame).replace(
                    f'"{key}": null', "[" * depth + "]" * depth, 1
                )
                return text, keep_id if depth < 950 else None
        elif how == "unicode":
            junk = "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 20)))
            key = rng.choice(["nickname", "callId", "to", "groupId", "sdp"])
            data[key] = junk  # surrogates go out as \\udxxx escapes (ensure_ascii)
            if rng.random() < 0.3:
                frame["id"] = junk[:64] or "x"
                keep_id = None
        elif how == "nan":
            text = json.dumps(frame)
            literal = rng.choice(["NaN", "Infinity", "-Infinity"])
            return text.replace('"data": {', f'"data": {{"zz": {literal}, ', 1), None
        elif how == "unknown":
            data["zz" + str(rng.randint(0, 9))] = rng.choice([1, "a", None])
        elif how == "bad_id":
            frame["id"] = rng.choice([None, 1.5, True, "", "x" * 65, [], {}, 2**60])
            keep_id = None
        elif how == "truncate":
            text = json.dumps(frame)
            return text[: rng.randint(0, len(text) - 1)], None
        elif how == "binary":
            return json.dumps(frame).encode(), None
        elif how == "not_object":
            return rng.choice(["[]", "1", '"s"', "null", "true", "  "]), None
        elif how == "too_large":
            # Over the protocol's 64 KiB (4002, the connection stays), under the server's
            # 128 KiB max_size (beyond which websockets closes it: a test of its own).
            data["pad"] = "p" * rng.randint(65 * 1024, 127 * 1024)
            keep_id = None
        elif how == "bad_type":
            frame["type"] = rng.choice(["", "LOGIN", "teleport", 1, None, ["ping"]])
        return json.dumps(frame, ensure_ascii=rng.random() < 0.5 or how == "unicode"), keep_id

    async def run(self, actions: int) -> None:
        """Connect, log in, then ``actions`` random steps."""
        await self.connect()
        await self.login()
        for _ in range(actions):
            roll = self.rng.random()
            if self.ws is None or self.reader is None or self.reader.done():
                await self.connect()
                await self.login()
            elif roll < 0.03:
                await self.disconnect()
                await asyncio.sleep(self.rng.choice([0.0, 0.1, 0.5]))
                await self.connect()
                await self.login()
            elif roll < 0.05 and self.logged_in:
                await self.request("logout", {})
                await self.login()
            elif roll < 0.30:
                frame, keep_id = self.garbage()
                reply = await self.send(frame, keep_id)
                if reply is not None and reply.ok and isinstance(frame, str):
                    self.world.mutated_accepted += 1
            else:
                await self.request(*self.valid_request())
            if self.rng.random() < 0.3:
                await asyncio.sleep(self.rng.random() * 0.02)


@dataclass
class World:
    """What the whole run saw, and every invariant violation found."""

    seen_calls: set[str] = field(default_factory=set)
    streams: list[tuple[str, Stream]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    relays: int = 0
    mutated_accepted: int = 0
    max_calls_per_user: int = 0

    def fail(self, message: str) -> None:
        """Record an invariant violation (reported at the end with every other one)."""
        self.violations.append(message)


def check_one_call_per_user(server: SignalingServer, world: World) -> None:
    """No user rings or is joined in two calls, and ``user_call`` agrees with the calls."""
    core = server.core
    where: dict[str, list[str]] = {}
    for call_id, call in core.active_calls.items():
        for member in call.members.values():
            if member.state in ("ringing", "joined"):
                where.setdefault(member.user_id, []).append(call_id)
    for user, calls in where.items():
        world.max_calls_per_user = max(world.max_calls_per_user, len(calls))
        if len(calls) > 1:
            world.fail(f"{user} is in {len(calls)} calls at once: {calls}")
        elif core.user_call(user) != calls[0]:
            world.fail(f"{user}: user_call says {core.user_call(user)}, calls say {calls[0]}")


async def watch(server: SignalingServer, world: World, stop: asyncio.Event) -> int:
    """Check the one-call-per-user invariant every 5 ms until ``stop``; returns the checks."""
    checks = 0
    while not stop.is_set():
        check_one_call_per_user(server, world)
        checks += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.005)
    return checks


def records(db: Path) -> dict[str, list[tuple[str, float | None]]]:
    """Every call row in the database: call id -> [(result, end_ts), ...]."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT call_id, result, end_ts FROM calls WHERE sdk_app_id = ?", (APP,)
        ).fetchall()
    found: dict[str, list[tuple[str, float | None]]] = {}
    for call_id, result, end_ts in rows:
        found.setdefault(call_id, []).append((result, end_ts))
    return found


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_clients_keep_the_invariants(
    seed: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Eight users sending random valid and mutated frames (seeded): afterwards every frame
    had exactly one reply, nobody was in two calls, every call has exactly one final record,
    and every relay reached only a joined member from a joined member."""
    caplog.set_level(logging.WARNING)
    db = tmp_path / "records.db"
    world = World()
    rng = random.Random(seed)
    started = time.monotonic()
    async with new_server(db=str(db), core=CORE) as server:
        # Groups g0..g4 exist (the rest of g0..g9 only label calls), each with half the users.
        for index in range(5):
            members = rng.sample(USERS, len(USERS) // 2)
            server.groups.put(Group(f"g{index}", "", 0.0, dict.fromkeys(members, 0.0)))
        fuzzers = [FuzzUser(u, server.url, random.Random(rng.random()), world) for u in USERS]
        stop = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(watch(server, world, stop))
        try:
            async with asyncio.timeout(RUN_LIMIT_S):
                await asyncio.gather(*(f.run(ACTIONS_PER_USER) for f in fuzzers))
            await asyncio.sleep(0.2)  # the last events arrive
        finally:
            stop.set()
            checks = await watcher
            for fuzzer in fuzzers:
                await fuzzer.disconnect()
        check_one_call_per_user(server, world)
        # Grace periods (0.3 s) and ring timeouts (1..3 s) end what the clients left open.
        deadline = time.monotonic() + 4.0
        while server.core.active_calls and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        still_running = set(server.core.active_calls)
    # The server has stopped: its writer flushed and closed the database.

    for user, stream in world.streams:
        if stream.replies != stream.sent:
            world.fail(f"{user} connection {stream.conn_no}: {stream.sent} frames sent, "
                       f"{stream.replies} replies")
        for request_id, count in stream.reply_ids.items():
            if request_id is not None and count != 1:
                world.fail(f"{user}: {count} replies carry id {request_id!r}")
    stored = records(db)
    results: Counter[str] = Counter()
    for call_id in world.seen_calls:
        rows = stored.get(call_id, [])
        if len(rows) != 1:
            world.fail(f"call {call_id} has {len(rows)} records")
            continue
        result, end_ts = rows[0]
        results[result] += 1
        if not result or end_ts is None:
            world.fail(f"call {call_id} has no final record: result {result!r}, end {end_ts}")
        if call_id in still_running and result != "interrupt":
            world.fail(f"call {call_id} running at stop was recorded {result!r}")
    unseen = set(stored) - world.seen_calls
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    summary = (
        f"seed {seed}: {sum(s.sent for _, s in world.streams)} frames on "
        f"{len(world.streams)} connections in {time.monotonic() - started:.1f} s, "
        f"{len(world.seen_calls)} calls {dict(results)}, {world.relays} relays, "
        f"{checks} invariant checks, error codes {dict(world.codes)}"
    )
    print(summary)
    assert not world.violations, "\n".join([summary, *world.violations[:30]])
    assert not errors, errors[:10]
    assert not unseen, f"calls recorded that no client saw: {sorted(unseen)[:5]}"
    assert world.max_calls_per_user == 1
    # The run did exercise the server: calls were answered, relayed and refused.
    assert results["normal_end"] + results["interrupt"] > 0, summary
    assert world.relays > 0, summary
    for code in (ErrorCode.PERMISSION_DENIED, ErrorCode.PARAM_INVALID,
                 ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE):
        assert world.codes[code] > 0, f"no {code!r} in {summary}"
