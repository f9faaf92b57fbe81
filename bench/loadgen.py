"""Load generator of ``bench.server_load``, run as its own process against a websocket server.

``python -m bench.loadgen MODE --url URL --target {stack,bare} [options]``; modes:

* ``idle``: open ``--conns`` connections and log each in (stack: a ``login`` request with a
  valid userSig, then its reply and ``SDK_READY``; bare: the naming message and its ack), print
  ``READY``, hold them until a line arrives on stdin, then close them.
* ``cycles``: ``--pairs`` caller/callee pairs run complete 1v1 call cycles back to back (closed
  loop) for ``--warmup`` + ``--seconds``; frames and cycles are counted over the last
  ``--seconds`` only (between the ``MARK start`` and ``MARK end`` lines).
* ``paced``: the same cycles started at ``--rate`` per second (open loop), and the relay
  latency (offer and answer, send to receipt by the other client) recorded.

A stack cycle: caller ``calls`` -> callee ``ON_CALL_RECEIVED`` -> callee ``accept`` -> caller
``ON_CALL_BEGIN`` -> caller relays an offer (a ~2 KB fake SDP) -> callee relays an answer ->
caller ``hangup`` -> both get ``CALLING_END``: 5 frames in and 16 out of the server. A bare cycle
sends the same 5 messages (same sizes) peer to peer through the relay: 5 in, 5 out.

``--url`` may list several servers (nodes of one cluster), comma-separated: caller *i* then
connects to the *i*-th and callee *i* to the next one, so every call crosses nodes.

The last stdout line is ``RESULT {json}``; ``--ids-out`` writes the callIds of every completed
stack cycle, one per line, so the records can be checked afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench.bare_relay import raise_fd_limit
from callwire import protocol
from callwire.usersig import generate_user_sig

__all__ = ["FRAMES_PER_CYCLE", "main"]

DEV_SDK_APP_ID = 1400000001
DEV_SECRET_KEY = "callclient-development-secret-key-do-not-use-in-production"
"""The server's built-in development identity (``signaling_server.server``)."""

FRAMES_PER_CYCLE: dict[str, tuple[int, int]] = {"stack": (5, 16), "bare": (5, 5)}
"""Frames (into, out of) the server per call cycle."""

_SDP_LINES = [
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=msid-semantic: WMS stream",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Ab3x",
    "a=ice-pwd:f2Jx1bV9Q0aQ8bT6d3nR5kLp",
    "a=fingerprint:sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:"
    "DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
    "a=setup:actpass",
    "a=mid:0",
    "a=sendrecv",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
]
_CANDIDATE = "a=candidate:{n} 1 udp 2122260223 192.168.1.{n} {port} typ host generation 0"


def _fake_sdp(size: int = 2048) -> str:
    lines = list(_SDP_LINES)
    n = 1
    while len("\r\n".join(lines)) < size:
        lines.append(_CANDIDATE.format(n=n, port=50000 + n))
        n += 1
    return "\r\n".join(lines)[:size]


SDP_JSON = json.dumps(_fake_sdp())
"""The fake SDP as a JSON string literal, encoded once."""


def _t_of(text: str) -> int:
    """The ``"t":`` integer (perf_counter_ns at sending) of a relayed offer or answer."""
    start = text.index('"t":') + 4
    end = start
    while text[end].isdigit():
        end += 1
    return int(text[start:end])


class Mismatch(Exception):
    """The server sent something other than the expected frame."""


@dataclass
class Stats:
    """Counters of one load-generator run."""

    sent: int = 0
    received: int = 0
    cycles: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    cycle_ns: list[int] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)
    record_latency: bool = False


class Client:
    """One websocket with frame counting and a request-id counter."""

    __slots__ = ("_next", "stats", "user", "ws")

    def __init__(self, ws: ClientConnection, user: str, stats: Stats) -> None:
        self.ws = ws
        self.user = user
        self.stats = stats
        self._next = 0

    def rid(self) -> int:
        """A fresh request id."""
        self._next += 1
        return self._next

    async def send(self, text: str) -> None:
        """Send one frame."""
        self.stats.sent += 1
        await self.ws.send(text)

    async def recv(self) -> str:
        """Receive one frame."""
        text = await self.ws.recv()
        self.stats.received += 1
        assert isinstance(text, str)
        return text

    async def expect(self, marker: str) -> str:
        """Receive one frame that must contain ``marker`` (an event name, ``"ok":true``...)."""
        text = await self.recv()
        if marker not in text:
            raise Mismatch(f"{self.user}: expected {marker}, got {text[:300]}")
        return text


async def _open(url: str, user: str, target: str, stats: Stats, compression: str) -> Client:
    ws = await connect(
        url,
        compression="deflate" if compression == "deflate" else None,
        ping_interval=None,
        max_size=2**20,
        open_timeout=120,
        close_timeout=2,
    )
    client = Client(ws, user, stats)
    if target == "bare":
        await client.send(json.dumps({"name": user}))
        await client.expect('"ok":true')
        return client
    sig = generate_user_sig(DEV_SDK_APP_ID, DEV_SECRET_KEY, user)
    await client.send(
        protocol.encode_request(
            "login",
            client.rid(),
            {
                "sdkAppId": DEV_SDK_APP_ID,
                "userID": user,
                "userSig": sig,
                "protocolVersion": protocol.PROTOCOL_VERSION,
                "platform": "bench",
            },
        )
    )
    await client.expect('"ok":true')
    await client.expect('"SDK_READY"')
    return client


async def _open_many(
    url: str, users: Sequence[str], target: str, stats: Stats, compression: str, parallel: int
) -> list[Client]:
    """Open and log in every user, at most ``parallel`` handshakes at a time."""
    gate = asyncio.Semaphore(parallel)

    async def one(user: str) -> Client:
        async with gate:
            return await _open(url, user, target, stats, compression)

    return list(await asyncio.gather(*(one(u) for u in users)))


def _relay_text(rid: int, call_id: str, to: str, kind: str, t_ns: int) -> str:
    return (
        f'{{"type":"relay","id":{rid},"data":{{"callId":"{call_id}","to":"{to}",'
        f'"kind":"{kind}","payload":{{"type":"{kind}","t":{t_ns},"sdp":{SDP_JSON}}}}}}}'
    )


async def stack_cycle(a: Client, b: Client, stats: Stats) -> None:
    """One complete 1v1 call through the signaling server (5 requests, 16 server frames)."""
    t0 = time.perf_counter_ns()
    await a.send(
        protocol.encode_request("calls", a.rid(), {"userIDList": [b.user], "mediaType": 1})
    )
    reply = json.loads(await a.expect('"ok":true'))
    call_id: str = reply["data"]["callId"]
    await b.expect('"ON_CALL_RECEIVED"')
    await b.send(protocol.encode_request("accept", b.rid(), {"callId": call_id}))
    await b.expect('"ok":true')
    await b.expect('"ON_CALL_BEGIN"')
    await b.expect('"USER_ENTER"')
    await a.expect('"USER_ACCEPT"')
    await a.expect('"ON_CALL_BEGIN"')
    await a.expect('"USER_ENTER"')
    await a.send(_relay_text(a.rid(), call_id, b.user, "offer", time.perf_counter_ns()))
    offer = await b.expect('"kind":"offer"')
    got = time.perf_counter_ns()
    await a.expect('"ok":true')
    if stats.record_latency:
        stats.latencies_ns.append(got - _t_of(offer))
    await b.send(_relay_text(b.rid(), call_id, a.user, "answer", time.perf_counter_ns()))
    answer = await a.expect('"kind":"answer"')
    got = time.perf_counter_ns()
    await b.expect('"ok":true')
    if stats.record_latency:
        stats.latencies_ns.append(got - _t_of(answer))
    await a.send(protocol.encode_request("hangup", a.rid(), {"callId": call_id}))
    await a.expect('"ok":true')
    await a.expect('"CALLING_END"')
    await b.expect('"USER_LEAVE"')
    await b.expect('"CALLING_END"')
    stats.cycles += 1
    stats.call_ids.append(call_id)
    if stats.record_latency:
        stats.cycle_ns.append(time.perf_counter_ns() - t0)


async def bare_cycle(a: Client, b: Client, stats: Stats) -> None:
    """The same five messages, peer to peer through the bare relay (5 in, 5 out)."""
    t0 = time.perf_counter_ns()
    call = f'{{"to":"{b.user}","type":"calls","id":{a.rid()},"data":{{"userIDList":["{b.user}"],'
    await a.send(call + '"mediaType":1}}')
    await b.expect('"calls"')
    await b.send(f'{{"to":"{a.user}","type":"accept","id":{b.rid()},"data":{{"callId":"x"}}}}')
    await a.expect('"accept"')
    await a.send('{"to":"' + b.user + '",' + _relay_text(a.rid(), "x", b.user, "offer",
                                                            time.perf_counter_ns())[1:])
    offer = await b.expect('"kind":"offer"')
    got = time.perf_counter_ns()
    if stats.record_latency:
        stats.latencies_ns.append(got - _t_of(offer))
    await b.send('{"to":"' + a.user + '",' + _relay_text(b.rid(), "x", a.user, "answer",
                                                            time.perf_counter_ns())[1:])
    answer = await a.expect('"kind":"answer"')
    got = time.perf_counter_ns()
    if stats.record_latency:
        stats.latencies_ns.append(got - _t_of(answer))
    await a.send(f'{{"to":"{b.user}","type":"hangup","id":{a.rid()},"data":{{"callId":"x"}}}}')
    await b.expect('"hangup"')
    stats.cycles += 1
    if stats.record_latency:
        stats.cycle_ns.append(time.perf_counter_ns() - t0)


Cycle = Callable[[Client, Client, Stats], Awaitable[None]]


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index] / 1e6


async def _pairs(
    args: argparse.Namespace, stats: Stats, prefix: str
) -> list[tuple[Client, Client]]:
    urls = args.url.split(",")
    if len(urls) == 1:
        users = [f"{prefix}a{i}" for i in range(args.pairs)] + [
            f"{prefix}b{i}" for i in range(args.pairs)
        ]
        clients = await _open_many(urls[0], users, args.target, stats, "none", args.parallel)
        return list(zip(clients[: args.pairs], clients[args.pairs :], strict=True))
    # Several nodes: caller i on node i, callee i on the next one, so every call crosses nodes.
    gate = asyncio.Semaphore(args.parallel)

    async def one(user: str, node: int) -> Client:
        async with gate:
            return await _open(urls[node % len(urls)], user, args.target, stats, "none")

    callers = asyncio.gather(*(one(f"{prefix}a{i}", i) for i in range(args.pairs)))
    callees = asyncio.gather(*(one(f"{prefix}b{i}", i + 1) for i in range(args.pairs)))
    return list(zip(await callers, await callees, strict=True))


async def run_cycles(args: argparse.Namespace) -> dict[str, Any]:
    """Closed loop: every pair runs cycles back to back; count the measured window."""
    stats = Stats()
    pairs = await _pairs(args, stats, "t")
    cycle: Cycle = stack_cycle if args.target == "stack" else bare_cycle
    stop = False

    async def loop(a: Client, b: Client) -> None:
        while not stop:
            await cycle(a, b, stats)

    tasks = [asyncio.ensure_future(loop(a, b)) for a, b in pairs]
    await asyncio.sleep(args.warmup)
    _emit("MARK start")
    s0, r0, c0, t0 = stats.sent, stats.received, stats.cycles, time.perf_counter()
    await asyncio.sleep(args.seconds)
    s1, r1, c1, t1 = stats.sent, stats.received, stats.cycles, time.perf_counter()
    _emit("MARK end")
    stop = True
    await asyncio.gather(*tasks)
    await _close_all([c for pair in pairs for c in pair])
    elapsed = t1 - t0
    return {
        "elapsed_s": elapsed,
        "cycles": c1 - c0,
        "frames_in": s1 - s0,
        "frames_out": r1 - r0,
        "cycles_per_s": (c1 - c0) / elapsed,
        "messages_per_s": ((s1 - s0) + (r1 - r0)) / elapsed,
        "total_cycles": stats.cycles,
        "call_ids": stats.call_ids,
    }


async def run_paced(args: argparse.Namespace) -> dict[str, Any]:
    """Open loop: cycles start at ``--rate`` per second; record relay latencies."""
    stats = Stats()
    pairs = await _pairs(args, stats, "p")
    cycle: Cycle = stack_cycle if args.target == "stack" else bare_cycle
    due: asyncio.Queue[int | None] = asyncio.Queue()
    waits: list[int] = []

    async def worker(a: Client, b: Client) -> None:
        while (planned := await due.get()) is not None:
            waits.append(time.perf_counter_ns() - planned)
            await cycle(a, b, stats)

    tasks = [asyncio.ensure_future(worker(a, b)) for a, b in pairs]
    # warm-up at the same rate, then measure
    total = args.warmup + args.seconds
    interval_ns = int(1e9 / args.rate)
    start = time.perf_counter_ns()
    issued = 0
    measuring = False
    s0 = r0 = c0 = 0
    t0 = 0.0
    while True:
        now = time.perf_counter_ns()
        if not measuring and now - start >= args.warmup * 1e9:
            measuring = True
            stats.record_latency = True
            waits.clear()
            s0, r0, c0, t0 = stats.sent, stats.received, stats.cycles, time.perf_counter()
            _emit("MARK start")
        if now - start >= total * 1e9:
            break
        while start + issued * interval_ns <= now:
            due.put_nowait(start + issued * interval_ns)
            issued += 1
        await asyncio.sleep(0.001)
    backlog = due.qsize()
    s1, r1, c1, t1 = stats.sent, stats.received, stats.cycles, time.perf_counter()
    _emit("MARK end")
    for _ in tasks:
        due.put_nowait(None)
    await asyncio.gather(*tasks)
    await _close_all([c for pair in pairs for c in pair])
    elapsed = t1 - t0
    lat = stats.latencies_ns
    return {
        "rate": args.rate,
        "elapsed_s": elapsed,
        "cycles_per_s": (c1 - c0) / elapsed,
        "messages_per_s": ((s1 - s0) + (r1 - r0)) / elapsed,
        "relay_samples": len(lat),
        "relay_p50_ms": _percentile(lat, 50),
        "relay_p99_ms": _percentile(lat, 99),
        "relay_max_ms": max(lat) / 1e6 if lat else float("nan"),
        "cycle_p50_ms": _percentile(stats.cycle_ns, 50),
        "cycle_p99_ms": _percentile(stats.cycle_ns, 99),
        "start_delay_p99_ms": _percentile(waits, 99),
        "backlog_at_end": backlog,
        "total_cycles": stats.cycles,
        "call_ids": stats.call_ids,
    }


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open and log in ``--conns`` connections, hold them until stdin says so."""
    stats = Stats()
    t0 = time.perf_counter()
    users = [f"idle{i}" for i in range(args.conns)]
    clients = await _open_many(
        args.url, users, args.target, stats, args.compression, args.parallel
    )
    took = time.perf_counter() - t0
    _emit(f"READY {len(clients)}")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await _close_all(clients)
    return {"connections": len(clients), "login_s": took, "logins_per_s": len(clients) / took}


async def _close_all(clients: Sequence[Client]) -> None:
    gate = asyncio.Semaphore(500)

    async def one(client: Client) -> None:
        async with gate:
            await client.ws.close()

    await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("mode", choices=("idle", "cycles", "paced"))
    parser.add_argument("--url", required=True,
                        help="server URL, or several comma-separated (cycles/paced: caller i "
                        "on the i-th, callee i on the next, so every call crosses nodes)")
    parser.add_argument("--target", choices=("stack", "bare"), default="stack")
    parser.add_argument("--conns", type=int, default=10_000, help="idle: connections")
    parser.add_argument("--compression", choices=("none", "deflate"), default="none")
    parser.add_argument("--pairs", type=int, default=200, help="cycles/paced: caller-callee pairs")
    parser.add_argument("--rate", type=float, default=500.0, help="paced: cycles per second")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--parallel", type=int, default=100, help="handshakes at a time")
    parser.add_argument("--ids-out", default=None, help="file for completed callIds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints ``RESULT {json}`` last and returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit()
    runner: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]] = {
        "idle": run_idle,
        "cycles": run_cycles,
        "paced": run_paced,
    }
    result = asyncio.run(runner[args.mode](args))
    ids: list[str] = result.pop("call_ids", [])
    if args.ids_out:
        with open(args.ids_out, "w", encoding="utf-8") as out:
            out.write("".join(f"{i}\n" for i in ids))
    _emit("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
