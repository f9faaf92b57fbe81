"""A real ``python -m signaling_server`` subprocess on a database (an SQLite file or a
PostgreSQL URL), to SIGKILL and restart.

The crash tests kill the process itself (no shutdown frames, no final flush), then start a
new one on the same port and database, as an operator's supervisor would.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.helpers.servers import APP, KEY

__all__ = ["ServerProcess"]

_LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")


class ServerProcess:
    """``python -m signaling_server`` on ``db``; :meth:`start` returns once it listens."""

    def __init__(self, db: Path | str, *extra_args: str) -> None:
        self.db = db
        self.extra_args = extra_args
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self._killed = False

    async def start(self) -> None:
        """Start on ``self.port`` (0 the first time: any free port, read back)."""
        self._killed = False
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signaling_server", "--port", str(self.port),
            "--db", str(self.db), "--sdkappid", str(APP), "--secret-key", KEY,
            *self.extra_args,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode()
        match = _LISTENING.search(line)
        assert match, f"unexpected server output {line!r}"
        self.port = int(match.group(1))

    @property
    def url(self) -> str:
        """The websocket URL."""
        return f"ws://127.0.0.1:{self.port}"

    def kill_now(self) -> None:
        """Send SIGKILL at once (no await between the caller's last step and the kill).

        Once per process: a second ``kill()`` makes ``Popen.send_signal`` poll the pid first
        (its guard against recycled pids), and that ``waitpid`` can reap the dead process
        before asyncio's child watcher does, which then reports status 255 instead of -9.
        """
        assert self.process is not None
        if not self._killed:
            self._killed = True
            self.process.kill()

    async def kill(self) -> None:
        """SIGKILL, as a crash or an OOM killer would, and reap the process."""
        self.kill_now()
        assert self.process is not None
        assert await self.process.wait() == -9

    async def stop(self) -> None:
        """SIGTERM (a graceful stop) if still running."""
        if self.process is not None and self.process.returncode is None:
            if self._killed:  # dying already: another signal would race the reaping
                await self.process.wait()
                return
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
