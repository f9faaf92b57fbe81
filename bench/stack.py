"""The whole call stack against bare aiortc (issue 7): setup, latency, fps, audio, CPU, group.

Every participant is its own process (:mod:`bench.stack_peer` for the engine,
:mod:`bench.baseline` for bare aiortc), driven over stdin/stdout JSON lines; the signaling
server is a subprocess too (``python -m signaling_server --port 0 --db :memory:``). All
processes share the machine's clock, so ``time.time()`` in one is comparable with another.

Measurement points:

* **video glass-to-glass**: the sender's virtual camera stamps each frame with its counter
  and ``time.time()`` at capture; the receiver's view (:class:`callclient.apps.measure.StampView`)
  takes ``time.time()`` when the rendered BGR frame reaches it and reads the stamp in a
  worker thread (only the centre of the frame, where the stamp is). Latency = render time -
  capture time, every frame (frames the reader could not keep up with are counted, not
  timed). The receive latency (decoded frame handed to the client, before rendering) is
  kept too.
* **fps received**: frames rendered in the measured window / window length, per stream.
* **CPU per process**: ``psutil`` CPU time delta / wall time over the window, without the
  stamp reader threads (the instrument); the total with them is in the JSON too.
* **audio mouth-to-ear**: both microphones play a 5 ms full-scale 1 kHz click every 0.5 s.
  Mouth = wall time the click's block left the virtual microphone's ``read()``. Ear, stack:
  wall time the virtual speaker pulled the block holding the click's onset (its output);
  the engine's audio tap (decoded, before the mixer) is recorded too. Ear, baseline: bare
  aiortc has no playout, so the time ``track.recv()`` returned the decoded frame.
* **call setup**: stack: t0 just before ``accept()`` in the callee (its camera already open);
  the first frame rendered on each side; setup = the later of the two - t0. Baseline: t0
  just before the offerer creates its connection and offer (SDP carried by this process);
  the same first-frame end point.
* **encodes per captured frame**: frames the shared encoder encoded / frames the camera
  delivered (baseline: frames handed to aiortc's per-connection encoders).
* **contention**: a busy-loop process keeps one core busy during a two-way call.

Writes ``bench/results/latest.json`` (every number, latency samples included),
``latest.md`` (the table) and ``latency.png`` (latency distributions). Targets that are
missed are reported, not failures: the exit status is 0 unless the bench itself breaks.

Run: ``python -m bench.stack [--quick] [--scenarios setup,video360,...]`` or ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from bench.machine import calibrate, header, stamp
from bench.probes import CLICK_PERIOD, die_with_parent
from callclient.media.base import BLOCK_SECONDS
from callclient.types import Resolution, resolution_size
from callwire.extras import MissingExtraError, require

__all__ = ["SCENARIOS", "main", "run"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = ("setup", "video360", "video720", "video1080", "oneway1080", "contention", "group")
QUICK_SCENARIOS = ("video720", "contention")
"""The headline rows (``make bench-quick``): 720p two-way, audio, 720p under contention."""
RESOLUTIONS = {
    360: Resolution.RESOLUTION_640_360,
    720: Resolution.RESOLUTION_1280_720,
    1080: Resolution.RESOLUTION_1920_1080,
}
TARGET_SETUP_MS = 300.0
TARGET_MEDIAN_RATIO = 1.0
TARGET_P95_RATIO = 1.1
TARGET_CONTENTION_P95 = 2.0
TARGET_FPS_720 = 29.0
TARGET_FPS_1080_ONE_WAY = 28.0
TARGET_AUDIO_MS = 80.0
TARGET_GROUP_CPU_RATIO = 1.5
_LISTENING = re.compile(r"listening on (ws://\S+)")
_FPS = 30.0

_SPAWNED: list[asyncio.subprocess.Process] = []
"""Every child process started, for the last-resort kill on the way out."""


# ---------------------------------------------------------------------------------- processes


class Child:
    """A participant process spoken to in JSON lines (see :func:`bench.probes.serve`)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def spawn(cls, name: str, module: str, log_dir: Path) -> Child:
        """Start ``python -m module`` with its stderr in ``log_dir/name.log``."""
        with (log_dir / f"{name}.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                cwd=ROOT, preexec_fn=die_with_parent, start_new_session=True, limit=1 << 24,
            )
        _SPAWNED.append(proc)
        return cls(name, proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            future = self._pending.pop(int(message.get("id", -1)), None)
            if future is None or future.done():
                continue
            if message.get("ok"):
                future.set_result(message.get("result"))
            else:
                future.set_exception(RuntimeError(f"{self.name}: {message.get('error')}"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError(f"{self.name} exited"))
        self._pending.clear()

    async def request(self, cmd: str, limit: float = 60.0, **args: Any) -> Any:
        """Send ``cmd``, wait up to ``limit`` s for its result (RuntimeError if it failed)."""
        assert self.proc.stdin is not None
        if self.proc.returncode is not None or self._reader.done():
            raise RuntimeError(f"{self.name} is not running")
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        line = json.dumps({"id": ident, "cmd": cmd, "args": args}) + "\n"
        self.proc.stdin.write(line.encode())
        await self.proc.stdin.drain()
        try:
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            raise TimeoutError(f"{self.name}: {cmd} took over {limit} s") from None

    async def close(self) -> None:
        """Ask it to quit, then end it (terminate, kill) if it does not. Idempotent."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.request("quit", limit=15.0)
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
        await _end_process(self.proc, grace=5.0)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def _end_process(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Wait ``grace`` s for ``proc`` to exit, then SIGTERM, then SIGKILL."""
    for action in (None, proc.terminate, proc.kill):
        if proc.returncode is not None:
            return
        if action is not None:
            with contextlib.suppress(ProcessLookupError):
                action()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace if action is None else 3.0):
                await proc.wait()


class Server:
    """The signaling server subprocess."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self._drain = asyncio.get_running_loop().create_task(self._drain_stdout())

    @classmethod
    async def start(cls, log_dir: Path) -> Server:
        """Start it on a free port; return once it listens."""
        with (log_dir / "server.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "signaling_server", "--port", "0", "--db", ":memory:",
                stdout=asyncio.subprocess.PIPE, stderr=log, cwd=ROOT,
                preexec_fn=die_with_parent, start_new_session=True,
            )
        _SPAWNED.append(proc)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while line := (await proc.stdout.readline()).decode():
                    match = _LISTENING.search(line)
                    if match:
                        return cls(proc, match.group(1))
        except TimeoutError:
            pass
        await _end_process(proc, 0.0)
        raise RuntimeError(f"the signaling server did not start; see {log_dir / 'server.log'}")

    async def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    async def stop(self) -> None:
        """SIGTERM and wait."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        await _end_process(self.proc, 10.0)
        self._drain.cancel()


@contextlib.asynccontextmanager
async def _burner(enabled: bool) -> Any:
    """A busy-loop process on each core for the duration (when ``enabled``)."""
    if not enabled:
        yield None
        return
    procs = []
    for _ in range(os.cpu_count() or 1):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "while True: pass", cwd=ROOT,
            preexec_fn=die_with_parent, start_new_session=True,
        )
        _SPAWNED.append(proc)
        procs.append(proc)
    try:
        yield procs
    finally:
        await asyncio.gather(*(_end_process(proc, 0.0) for proc in procs))


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.system + times.nice + getattr(times, "irq", 0.0)
                 + getattr(times, "softirq", 0.0))


class _MachineBusy:
    """Machine-wide CPU over a window, and the part of it not used by the participants."""

    def __init__(self) -> None:
        self._start = (time.perf_counter(), _busy_seconds())

    def stop(self, reports: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Busy cores overall and besides the participants (server, bench, burner, others)."""
        wall = time.perf_counter() - self._start[0]
        busy = (_busy_seconds() - self._start[1]) / wall
        mine = sum(r["cpu"] for r in reports)
        return {"busy_cores": round(busy, 3), "other_cores": round(max(0.0, busy - mine), 3)}


@dataclass
class Options:
    """What to run and for how long."""

    seconds: float
    warmup: float
    setup_calls: int
    scenarios: tuple[str, ...]
    contention_height: int
    log_dir: Path
    repeats: int = 3
    adaptation: bool = True


class _Participants:
    """Spawns and always closes a set of participant processes."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    async def spawn(self, names: Sequence[str], module: str) -> list[Child]:
        children = await asyncio.gather(*(Child.spawn(n, module, self.log_dir) for n in names))
        self.children.extend(children)
        return list(children)

    async def __aenter__(self) -> _Participants:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(c.close() for c in self.children), return_exceptions=True)


# ---------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` percentile by linear interpolation."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _summary(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "p95": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 2),
        "p95": round(percentile(values, 0.95), 2),
    }


def click_latencies(
    emitted: Sequence[float], heard: Sequence[float], since: float, until: float
) -> list[float]:
    """Milliseconds from each click heard within the window back to its emission."""
    out = []
    for when in heard:
        if not since <= when <= until:
            continue
        prior = [e for e in emitted if e <= when + 0.001]
        if prior and when - max(prior) < 0.9 * CLICK_PERIOD:
            out.append(round((when - max(prior)) * 1000.0, 2))
    return out


def _streams(
    names: Sequence[str], reports: Sequence[dict[str, Any]], one_way: bool
) -> dict[str, Any]:
    """Pool the per-process reports of one run into streams, latencies, fps, CPU, audio."""
    streams = []
    latencies: list[float] = []
    recv_latencies: list[float] = []
    speaker: list[float] = []
    tap: list[float] = []
    by_name = dict(zip(names, reports, strict=True))
    for receiver, report in by_name.items():
        for sender, video in report["video"].items():
            streams.append({"receiver": receiver, "sender": sender, **video})
            latencies.extend(video["latency_ms"])
            recv_latencies.extend(video["recv_latency_ms"])
            emitted = by_name[sender]["clicks_emitted"]
            window = (report["since"], report["until"])
            tap.extend(click_latencies(emitted, report["clicks_tap"].get(sender, []), *window))
            if len(names) == 2:
                speaker.extend(click_latencies(emitted, report["clicks_speaker"], *window))
    fps = [s["fps"] for s in streams]
    encodes = [r["encodes"] / r["captured"] for r in reports if r["captured"] > 0]
    return {
        "participants": len(names),
        "one_way": one_way,
        "streams": streams,
        "latency_ms": _summary(latencies),
        "recv_latency_ms": _summary(recv_latencies),
        "fps_min": round(min(fps), 2) if fps else 0.0,
        "fps_mean": round(statistics.mean(fps), 2) if fps else 0.0,
        "cpu": [round(r["cpu"], 3) for r in reports],
        "cpu_app": [round(r["cpu_app"], 3) for r in reports],
        "cpu_app_mean": round(statistics.mean(r["cpu_app"] for r in reports), 3),
        "cpu_app_max": round(max(r["cpu_app"] for r in reports), 3),
        "encodes_per_frame": [round(e, 3) for e in encodes],
        "encodes_per_frame_max": round(max(encodes), 3) if encodes else None,
        "audio_speaker_ms": speaker,
        "audio_tap_ms": tap,
        "audio_ms": _summary(speaker if len(names) == 2 and speaker else tap),
        "audio_tap": _summary(tap),
    }


# ---------------------------------------------------------------------------------- scenarios


async def stack_call(
    server: Server, opts: Options, tag: str, users: int, height: int,
    one_way: bool = False, contention: bool = False,
) -> dict[str, Any]:
    """One engine call (1v1 or group of ``users``) measured for ``opts.seconds``."""
    width, h = resolution_size(RESOLUTIONS[height])
    names = [f"{tag}u{i}" for i in range(users)]
    async with _Participants(opts.log_dir) as group:
        procs = await group.spawn(names, "bench.stack_peer")
        await asyncio.gather(*(
            p.request("setup", server=server.url, user=n, width=width, height=h, fps=_FPS,
                      resolution=int(RESOLUTIONS[height]), adaptation=opts.adaptation)
            for p, n in zip(procs, names, strict=True)
        ))
        async with _burner(contention):
            caller, callees = procs[0], procs[1:]
            answers = [
                asyncio.ensure_future(p.request(
                    "answer", watch=[names[0]] if one_way else [m for m in names if m != n],
                    send_video=not one_way, within=30.0))
                for p, n in zip(callees, names[1:], strict=True)
            ]
            dialed = await caller.request(
                "call", users=names[1:], watch=[] if one_way else names[1:],
                group=users > 2, within=30.0)
            answered = await asyncio.gather(*answers)
            await asyncio.sleep(opts.warmup)
            busy = _MachineBusy()
            reports = await asyncio.gather(*(
                p.request("measure", seconds=opts.seconds, limit=opts.seconds + 30)
                for p in procs
            ))
            machine = busy.stop(reports)
        # Everyone leaves (in a group call the caller's hang-up does not end it for others).
        await asyncio.gather(*(p.request("end", hang_up=True) for p in procs),
                             return_exceptions=True)
    result = _streams(names, reports, one_way)
    result["sending"] = [r.get("sending") for r in reports]
    result["adaptation_steps"] = [r.get("steps", []) for r in reports]
    result["drops"] = [r.get("drops") for r in reports]
    firsts = [t for a in answered for t in a["first"].values()]
    firsts += list(dialed["first"].values())
    if firsts and all(t is not None for t in firsts):
        result["setup_ms"] = round((max(firsts) - max(a["t0"] for a in answered)) * 1000, 1)
    result["resolution"] = f"{width}x{h}"
    result["contention"] = contention
    result["machine"] = machine
    return result


async def baseline_call(
    opts: Options, tag: str, users: int, height: int,
    one_way: bool = False, contention: bool = False,
) -> dict[str, Any]:
    """The same call with bare aiortc processes (a full mesh when ``users`` > 2)."""
    width, h = resolution_size(RESOLUTIONS[height])
    names = [f"{tag}b{i}" for i in range(users)]
    async with _Participants(opts.log_dir) as group:
        procs = await group.spawn(names, "bench.baseline")
        await asyncio.gather(*(
            p.request("setup", name=n, width=width, height=h, fps=_FPS,
                      send_video=not one_way or i == 0, peers=users - 1)
            for i, (p, n) in enumerate(zip(procs, names, strict=True))
        ))
        by_name = dict(zip(names, procs, strict=True))
        async with _burner(contention):
            t0 = await _connect_mesh(by_name)
            waits = await asyncio.gather(*(
                p.request("wait_first", watch=_watched(names, i, one_way), within=30.0)
                for i, (p, n) in enumerate(zip(procs, names, strict=True))
            ))
            await asyncio.sleep(opts.warmup)
            busy = _MachineBusy()
            reports = await asyncio.gather(*(
                p.request("measure", seconds=opts.seconds, limit=opts.seconds + 30,
                          watch=_watched(names, i, one_way))
                for i, p in enumerate(procs)
            ))
            machine = busy.stop(reports)
    result = _streams(names, reports, one_way)
    firsts = [t for w in waits for t in w["first"].values()]
    if firsts and all(t is not None for t in firsts):
        result["setup_ms"] = round((max(firsts) - t0) * 1000, 1)
    result["resolution"] = f"{width}x{h}"
    result["contention"] = contention
    result["machine"] = machine
    return result


def _watched(names: Sequence[str], index: int, one_way: bool) -> list[str]:
    """Whose video participant ``index`` renders: the caller's only in one-way runs."""
    if one_way:
        return [] if index == 0 else [names[0]]
    return [m for i, m in enumerate(names) if i != index]


async def _connect_mesh(procs: dict[str, Child]) -> float:
    """Offer/answer between every pair (lower name offers); t0 of the first offer."""
    names = sorted(procs)
    t0: float | None = None
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            offer = await procs[a].request("offer", peer=b)
            t0 = offer["t0"] if t0 is None else t0
            answer = await procs[b].request("answer", peer=a, sdp=offer["sdp"])
            await procs[a].request("accept", peer=b, sdp=answer["sdp"])
    assert t0 is not None
    return t0


async def stack_setup(server: Server, opts: Options) -> dict[str, Any]:
    """``opts.setup_calls`` engine calls in a row: accept -> first frame on both sides."""
    width, height = resolution_size(RESOLUTIONS[360])
    names = ["setupa", "setupb"]
    samples: list[float] = []
    sides: list[dict[str, float]] = []
    async with _Participants(opts.log_dir) as group:
        caller, callee = await group.spawn(names, "bench.stack_peer")
        await asyncio.gather(*(
            p.request("setup", server=server.url, user=n, width=width, height=height, fps=_FPS,
                      resolution=int(RESOLUTIONS[360]))
            for p, n in ((caller, names[0]), (callee, names[1]))
        ))
        for _ in range(opts.setup_calls):
            answer = asyncio.ensure_future(callee.request("answer", watch=[names[0]]))
            dialed = await caller.request("call", users=[names[1]], watch=[names[1]])
            answered = await answer
            t0 = answered["t0"]
            firsts = [dialed["first"][names[1]], answered["first"][names[0]]]
            if all(t is not None for t in firsts):
                samples.append(round((max(firsts) - t0) * 1000, 1))
                sides.append({"caller_ms": round((firsts[0] - t0) * 1000, 1),
                              "callee_ms": round((firsts[1] - t0) * 1000, 1),
                              "dial_to_accept_ms": round((t0 - dialed["dialed"]) * 1000, 1)})
            await asyncio.gather(caller.request("end", hang_up=True),
                                 callee.request("end", hang_up=False))
            await asyncio.sleep(0.2)
    return {"calls": opts.setup_calls, "setup_ms": samples, "sides": sides,
            "summary": _summary(samples), "failed": opts.setup_calls - len(samples)}


async def baseline_setup(opts: Options) -> dict[str, Any]:
    """The same number of bare aiortc connections in a row: offer -> first frame both sides."""
    width, height = resolution_size(RESOLUTIONS[360])
    names = ["setupa", "setupb"]
    samples: list[float] = []
    async with _Participants(opts.log_dir) as group:
        procs = await group.spawn([f"{n}-bare" for n in names], "bench.baseline")
        by_name = dict(zip(names, procs, strict=True))
        await asyncio.gather(*(
            p.request("setup", name=n, width=width, height=height, fps=_FPS)
            for n, p in by_name.items()
        ))
        for _ in range(opts.setup_calls):
            t0 = await _connect_mesh(by_name)
            waits = await asyncio.gather(
                by_name["setupa"].request("wait_first", watch=["setupb"]),
                by_name["setupb"].request("wait_first", watch=["setupa"]),
            )
            firsts = [t for w in waits for t in w["first"].values()]
            if all(t is not None for t in firsts):
                samples.append(round((max(firsts) - t0) * 1000, 1))
            await asyncio.gather(*(p.request("reset") for p in procs))
            await asyncio.sleep(0.2)
    return {"calls": opts.setup_calls, "setup_ms": samples, "summary": _summary(samples),
            "failed": opts.setup_calls - len(samples)}


async def run(opts: Options) -> dict[str, Any]:
    """Run the selected scenarios; every result, stack and baseline side by side."""
    results: dict[str, Any] = {
        "machine": {"cpus": psutil.cpu_count(), "python": sys.version.split()[0]},
        "options": {"seconds": opts.seconds, "warmup": opts.warmup,
                    "setup_calls": opts.setup_calls, "scenarios": list(opts.scenarios),
                    "contention_height": opts.contention_height, "repeats": opts.repeats,
                    "adaptation": opts.adaptation},
        "scenarios": {},
    }
    out: dict[str, Any] = results["scenarios"]
    server = await Server.start(opts.log_dir)

    async def alternate(
        stack: Callable[[str], Awaitable[dict[str, Any]]],
        base: Callable[[str], Awaitable[dict[str, Any]]],
    ) -> dict[str, list[dict[str, Any]]]:
        # Stack, baseline, stack, baseline...: a drift in the machine's load hits both.
        runs: dict[str, list[dict[str, Any]]] = {"stack": [], "baseline": []}
        for index in range(opts.repeats):
            runs["stack"].append(await stack(f"r{index}"))
            runs["baseline"].append(await base(f"r{index}"))
        return runs

    try:
        for scenario in opts.scenarios:
            print(f"  {scenario} ...", flush=True)
            started = time.perf_counter()
            if scenario == "setup":
                chunk = replace(opts, setup_calls=max(1, -(-opts.setup_calls // opts.repeats)))
                out["setup"] = await alternate(lambda _r, o=chunk: stack_setup(server, o),
                                               lambda _r, o=chunk: baseline_setup(o))
            elif scenario.startswith("video"):
                height = int(scenario.removeprefix("video"))
                out[scenario] = await alternate(
                    lambda r, h=height: stack_call(server, opts, f"v{h}{r}", 2, h),
                    lambda r, h=height: baseline_call(opts, f"v{h}{r}", 2, h))
            elif scenario == "oneway1080":
                out[scenario] = await alternate(
                    lambda r: stack_call(server, opts, f"o1080{r}", 2, 1080, one_way=True),
                    lambda r: baseline_call(opts, f"o1080{r}", 2, 1080, one_way=True))
            elif scenario == "contention":
                ch = opts.contention_height
                out[scenario] = await alternate(
                    lambda r, h=ch: stack_call(server, opts, f"c{h}{r}", 2, h, contention=True),
                    lambda r, h=ch: baseline_call(opts, f"c{h}{r}", 2, h, contention=True))
            elif scenario == "group":
                for users in (3, 4):
                    out[f"group{users}"] = await alternate(
                        lambda r, n=users: stack_call(server, opts, f"g{n}{r}", n, 360),
                        lambda r, n=users: baseline_call(opts, f"g{n}{r}", n, 360))
            else:
                raise ValueError(f"unknown scenario {scenario!r}")
            print(f"  {scenario} done in {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        await server.stop()
    return results


# ---------------------------------------------------------------------------------- report


def audio_device_buffers() -> dict[str, Any]:
    """What a real sounddevice stream would add to the measured mouth-to-ear time.

    The virtual microphone hands a block over the moment it is "captured"; a real one only
    once its last sample is in, one block (20 ms) after a click at its start, plus
    PortAudio's input latency; a real speaker plays a pulled block after PortAudio's
    output latency. The latencies are PortAudio's default low latencies of this machine's
    default devices, when it has any.
    """
    added = BLOCK_SECONDS * 1000.0
    counted = [f"capture block {added:.0f} ms"]
    left_out = ["the converters' own delay (not reported by any API)"]
    try:
        import sounddevice as sd

        mic = sd.query_devices(kind="input")
        speaker = sd.query_devices(kind="output")
        latency = (float(mic["default_low_input_latency"])
                   + float(speaker["default_low_output_latency"])) * 1000.0
        added += latency
        counted.append(f"PortAudio low input + output latency {latency:.1f} ms "
                       f"({mic['name']} / {speaker['name']})")
    except Exception as exc:  # no PortAudio, or no device: say so instead of guessing
        left_out.insert(0, f"input and output device latency (no audio device here: {exc})")
    return {"added_ms": round(added, 1), "counted": ", ".join(counted),
            "left_out": "; ".join(left_out)}


Row = tuple[str, str, str, str, str, str]
Getter = Callable[[dict[str, Any]], float | None]


@dataclass(frozen=True)
class Spread:
    """The median of per-window values and their range."""

    median: float | None
    low: float | None
    high: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        """Over the windows that produced a value."""
        known = [v for v in values if v is not None]
        if not known:
            return cls(None, None, None, 0)
        return cls(statistics.median(known), min(known), max(known), len(known))

    def cell(self, digits: int = 1, scale: float = 1.0) -> str:
        """``median (low-high)``, or the value alone for a single window."""
        if self.median is None or self.low is None or self.high is None:
            return "-"
        value = f"{self.median * scale:.{digits}f}"
        if self.n < 2:
            return value
        return f"{value} ({self.low * scale:.{digits}f}-{self.high * scale:.{digits}f})"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def _runs(side: Any) -> list[dict[str, Any]]:
    """A side's windows (older result files hold one window as a dict)."""
    return list(side) if isinstance(side, list) else [side]


def _steps_taken(run: dict[str, Any]) -> float:
    """Adaptation steps down, mean per process, in one stack window."""
    per = [sum(1 for s in steps if s.get("direction") == "down")
           for steps in run.get("adaptation_steps", [])]
    return statistics.mean(per) if per else 0.0


def rows(results: dict[str, Any]) -> list[Row]:
    """The table: metric, stack, baseline (median (min-max) over the windows), ratio (median
    of the per-window stack / baseline ratios, and their range), target, met?"""
    sc: dict[str, Any] = results["scenarios"]
    table: list[Row] = []

    def add(metric: str, scenario: str, get: Getter, target: str = "",
            check: Callable[[float], bool] | None = None, digits: int = 1,
            check_ratio: bool = False, scale: float = 1.0, ratio: bool = True) -> None:
        stack_runs, base_runs = _runs(sc[scenario]["stack"]), _runs(sc[scenario]["baseline"])
        st = Spread.of([get(r) for r in stack_runs])
        bs = Spread.of([get(r) for r in base_runs])
        pairs = Spread.of([_ratio(get(a), get(b))
                           for a, b in zip(stack_runs, base_runs, strict=False)])
        ok = None
        if check is not None:
            value = pairs.median if check_ratio else st.median
            ok = None if value is None else check(value)
        table.append((metric, st.cell(digits, scale), bs.cell(digits, scale),
                      pairs.cell(2) if ratio else "-", target or "-", _met(ok)))

    def summary(key: str, stat: str) -> Getter:
        return lambda run: run[key][stat]

    if "setup" in sc:
        n = sum(r["calls"] for r in _runs(sc["setup"]["stack"]))
        add(f"call setup median, {n} calls (ms)", "setup",
            lambda r: r["summary"]["median"], f"<= {TARGET_SETUP_MS:.0f} ms",
            lambda v: v <= TARGET_SETUP_MS, 0)
        add("call setup p95 (ms)", "setup", lambda r: r["summary"]["p95"], digits=0)
    for height in (360, 720, 1080):
        key = f"video{height}"
        if key not in sc:
            continue
        add(f"video latency {height}p two-way median (ms)", key, summary("latency_ms", "median"),
            f"ratio <= {TARGET_MEDIAN_RATIO}", lambda v: v <= TARGET_MEDIAN_RATIO,
            check_ratio=True)
        add(f"video latency {height}p two-way p95 (ms)", key, summary("latency_ms", "p95"),
            f"ratio <= {TARGET_P95_RATIO}", lambda v: v <= TARGET_P95_RATIO, check_ratio=True)
        add(f"fps received {height}p two-way (worst side)", key, lambda r: r["fps_min"],
            f">= {TARGET_FPS_720:.0f}" if height == 720 else "",
            (lambda v: v >= TARGET_FPS_720) if height == 720 else None)
        add(f"CPU per process {height}p two-way (% core)", key, lambda r: r["cpu_app_mean"],
            digits=0, scale=100)
        add(f"stack {height}p: adaptation steps down per process", key, _steps_taken,
            ratio=False)
    if "oneway1080" in sc:
        add("fps received 1080p one-way", "oneway1080", lambda r: r["fps_min"],
            f">= {TARGET_FPS_1080_ONE_WAY:.0f}", lambda v: v >= TARGET_FPS_1080_ONE_WAY)
        add("video latency 1080p one-way median (ms)", "oneway1080",
            summary("latency_ms", "median"))
        add("video latency 1080p one-way p95 (ms)", "oneway1080", summary("latency_ms", "p95"))
    audio_key = next((k for k in ("video360", "video720", "video1080") if k in sc), None)
    if audio_key is not None:
        buffers = results.get("audio_device_buffers", {})
        extra = buffers.get("added_ms", 0.0)
        add(f"audio mouth-to-ear median (ms) [{audio_key}; stack: speaker out; base: recv()]",
            audio_key, summary("audio_ms", "median"))
        add("audio mouth-to-ear p95 (ms)", audio_key, summary("audio_ms", "p95"))
        add(f"audio mouth-to-ear + device buffers median (ms) [+{extra:g} ms: "
            f"{buffers.get('counted', 'none')}]", audio_key,
            lambda r: None if r["audio_ms"]["median"] is None
            else r["audio_ms"]["median"] + extra,
            f"<= {TARGET_AUDIO_MS:.0f} ms", lambda v: v <= TARGET_AUDIO_MS)
        add("audio mouth-to-decoded median (ms) [stack: tap; base: recv()]", audio_key,
            summary("audio_tap", "median"))
    if "contention" in sc:
        height = results["options"]["contention_height"]
        add(f"contention {height}p: latency median (ms)", "contention",
            summary("latency_ms", "median"))
        add(f"contention {height}p: latency p95 (ms)", "contention",
            summary("latency_ms", "p95"))
        add(f"contention {height}p: fps received (worst side)", "contention",
            lambda r: r["fps_min"])
        add(f"contention {height}p: stack adaptation steps down per process", "contention",
            _steps_taken, ratio=False)
        ref = sc.get(f"video{height}")
        if ref is not None:
            for side in ("stack", "baseline"):
                p95 = Spread.of([r["latency_ms"]["p95"] for r in _runs(sc["contention"][side])])
                base = Spread.of([r["latency_ms"]["p95"] for r in _runs(ref[side])])
                sc["contention"].setdefault("p95_vs_uncontended", {})[side] = _ratio(
                    p95.median, base.median)
            sr = sc["contention"]["p95_vs_uncontended"]["stack"]
            br = sc["contention"]["p95_vs_uncontended"]["baseline"]
            table.append(("contention: p95 / uncontended p95 (medians)", _fmt(sr, 2),
                          _fmt(br, 2), _fmt(_ratio(sr, br), 2),
                          f"stack <= {TARGET_CONTENTION_P95:.0f}",
                          _met(None if sr is None else sr <= TARGET_CONTENTION_P95)))
    others = [r["machine"]["other_cores"] for key, run in sc.items()
              if key not in ("setup", "contention") for side in ("stack", "baseline")
              for r in _runs(run[side]) if "machine" in r]
    if others:
        table.append(("other CPU load in the windows (cores, max; server, bench, other jobs)",
                      _fmt(max(others), 2), "-", "-", "-", "-"))
    for users in (3, 4):
        key = f"group{users}"
        if key not in sc:
            continue
        add(f"group {users} x 360p: CPU per process (% core, mean)", key,
            lambda r: r["cpu_app_mean"], digits=0, scale=100)
        ref = sc.get("video360")
        if ref is not None:
            group = {side: Spread.of([r["cpu_app_mean"] for r in _runs(sc[key][side])])
                     for side in ("stack", "baseline")}
            one = {side: Spread.of([r["cpu_app_mean"] for r in _runs(ref[side])])
                   for side in ("stack", "baseline")}
            sr = _ratio(group["stack"].median, one["stack"].median)
            br = _ratio(group["baseline"].median, one["baseline"].median)
            target = f"stack <= {TARGET_GROUP_CPU_RATIO}" if users == 4 else "-"
            ok = (None if sr is None else sr <= TARGET_GROUP_CPU_RATIO) if users == 4 else None
            table.append((f"group {users}: CPU / 1v1 360p CPU (medians)", _fmt(sr, 2),
                          _fmt(br, 2), _fmt(_ratio(sr, br), 2), target, _met(ok)))
        add(f"group {users}: encodes per captured frame (worst process)", key,
            lambda r: r["encodes_per_frame_max"], "1.0", lambda v: v <= 1.02, 2)
        add(f"group {users}: fps received (worst stream)", key, lambda r: r["fps_min"])
    return table


def markdown(table: list[Row]) -> str:
    """The table as GitHub markdown."""
    header = ("metric", "stack", "baseline", "ratio", "target", "met?")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency distributions (CDFs), stack against baseline, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = results["scenarios"]
    panels: list[tuple[str, list[float], list[float]]] = []
    for key in ("video360", "video720", "video1080", "oneway1080", "contention"):
        if key in sc:
            panels.append((key, _samples(sc[key]["stack"]), _samples(sc[key]["baseline"])))
    if "video360" in sc:
        panels.append(("audio (360p call)",
                       [v for r in _runs(sc["video360"]["stack"]) for v in r["audio_speaker_ms"]],
                       [v for r in _runs(sc["video360"]["baseline"]) for v in r["audio_tap_ms"]]))
    if not panels:
        return
    cols = min(3, len(panels))
    rows_n = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    for ax, (title, stack, base) in zip(axes.flat, panels, strict=False):
        for values, label in ((stack, "stack"), (base, "bare aiortc")):
            if values:
                ordered = sorted(values)
                ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
                ax.step(ordered, ys, where="post", label=f"{label} (n={len(ordered)})")
        ax.set_title(title)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction <= x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("glass-to-glass latency: call stack vs bare aiortc")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _samples(side: Any) -> list[float]:
    return [v for run in _runs(side) for stream in run["streams"] for v in stream["latency_ms"]]


# ---------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the headline rows only (scenarios " + ",".join(QUICK_SCENARIOS)
                        + "), 4 s windows, 1.5 s warm-up; written to quick.json / quick.md")
    parser.add_argument("--seconds", type=float, help="measured window per run (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of media before measuring (2)")
    parser.add_argument("--setup-calls", type=int, help="calls in the setup scenario (20)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating windows per configuration (stack, baseline, ...)")
    parser.add_argument("--no-adaptation", action="store_true",
                        help="the engines send the preset whatever the CPU and the path")
    parser.add_argument("--scenarios", default=None,
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--contention-height", type=int, choices=sorted(RESOLUTIONS),
                        default=720, help="resolution of the contention runs")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    return parser


def _kill_survivors() -> None:
    for proc in _SPAWNED:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(proc.pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench, print and write the table, the JSON and the plot; 0 unless it broke."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:  # before the run, not after minutes of it
        require("matplotlib", extra="bench", feature="the latency plot of bench.stack")
    except MissingExtraError as exc:
        print(f"bench.stack: error: {exc}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("--repeats must be at least 1", file=sys.stderr)
        return 2
    chosen = args.scenarios or ",".join(QUICK_SCENARIOS if args.quick else SCENARIOS)
    scenarios = tuple(s.strip() for s in chosen.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios: {', '.join(unknown)}", file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    opts = Options(
        seconds=args.seconds or (4.0 if args.quick else 10.0),
        warmup=args.warmup if args.warmup is not None else (1.5 if args.quick else 2.0),
        setup_calls=args.setup_calls or (5 if args.quick else 20),
        scenarios=scenarios,
        contention_height=args.contention_height,
        log_dir=log_dir,
        repeats=args.repeats,
        adaptation=not args.no_adaptation,
    )
    print(f"stack vs bare aiortc: {', '.join(scenarios)}; {opts.repeats} alternating "
          f"{opts.seconds:g} s windows each (process logs in {log_dir})", flush=True)
    started = time.perf_counter()
    calibration = calibrate()  # before the run, while nothing of it loads the machine
    print(f"  calibration: VP8 720p {calibration['ms_per_frame']} ms/frame", flush=True)
    try:
        results = asyncio.run(run(opts))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"bench failed: {exc!r}; process logs in {log_dir}", file=sys.stderr)
        return 1
    finally:
        _kill_survivors()
        _SPAWNED.clear()
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    stamp(results, calibration)
    results["calibration_after"] = calibrate()  # the machine may have changed meanwhile
    results["audio_device_buffers"] = audio_device_buffers()
    table = rows(results)
    results["table"] = [dict(zip(("metric", "stack", "baseline", "ratio", "target", "met"),
                                 row, strict=True)) for row in table]
    text = markdown(table)
    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    after = results["calibration_after"]
    buffers = results["audio_device_buffers"]
    title = (
        f"# stack vs bare aiortc ({opts.repeats} alternating {opts.seconds:g} s windows per "
        f"configuration, {results['bench_seconds']:.0f} s run"
        f"{'' if opts.adaptation else ', adaptation off'})\n\n"
        f"{header(results)}; after the run {after['ms_per_frame']} ms/frame.\n\n"
        "Cells: median over the windows (min-max). Ratio: median of the per-window "
        "stack / baseline ratios (min-max).\n"
        f"Audio device buffers: counted {buffers['counted']}; left out: "
        f"{buffers['left_out']}.\n\n"
    )
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(title + text)
    if not args.quick:
        plot(results, out_dir / "latency.png")
    print(title + text, end="")
    print(f"({results['bench_seconds']:.0f} s) results: {out_dir / (stem + '.json')}, "
          f"{stem}.md")
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
