"""Helpers for the tests of the callclient programs (bot, loopback, demo, CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

__all__ = [
    "BotProcess",
    "closed_port",
    "logged_process",
    "run_module",
]

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSERVER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def run_module(
    *args: str, cwd: Path | None = None, timeout: float = 60.0  # noqa: ASYNC109
) -> tuple[int, str, str]:
    """Run ``python -m ARGS`` to completion: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, cwd=cwd or REPO, env=_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def logged_process(
    *argv: str, log: Path, env: dict[str, str], cwd: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``argv`` running with stdout and stderr into ``log``; killed on exit if still running."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


class BotProcess:
    """``python -m callclient bot ARGS`` running, with its stdout parsed as JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.records: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.stderr = ""

    @classmethod
    async def start(cls, *args: str) -> BotProcess:
        """Start the bot with ``args`` (after ``bot``)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callclient", "bot", *args, cwd=REPO, env=_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode()
            self.lines.append(line)
            self.records.append(json.loads(line))  # every stdout line must be JSON
            self._changed.set()
        self._changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The records of event ``name``."""
        return [r for r in self.records if r["event"] == name]

    async def wait_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The first record of ``name``, waiting for it (AssertionError if it never comes)."""
        async with asyncio.timeout(timeout):
            while True:
                found = self.events(name)
                if found:
                    return found[0]
                if self._reader.done():
                    raise AssertionError(f"bot ended without {name}: {self.lines} {self.stderr}")
                self._changed.clear()
                await self._changed.wait()

    async def stop(self, signum: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:  # noqa: ASYNC109
        """Send ``signum`` and wait for the exit code (and the end of its output)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
            assert self.proc.stderr is not None
            self.stderr = (await self.proc.stderr.read()).decode()
        return code

    async def kill(self) -> None:
        """Kill the bot if it still runs (test cleanup)."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
