"""A child process that speaks JSON lines: commands on stdin, one object per line on stdout.

:class:`JsonChild` keeps every line (in order, with a condition to wait on), sends commands and
stops the child: ``quit`` first, a kill after ``quit_timeout``. Lines that are not JSON are
kept as ``{"ev": "raw", "line": ...}``; the end of output as ``{"ev": "eof"}``. Used by the
NAT tests' peers (:mod:`tests.helpers.netpeer_child`) and the impairment tests' call
(:mod:`tests.helpers.impair_child`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

__all__ = ["JsonChild"]

ROOT = Path(__file__).resolve().parents[2]


class JsonChild:
    """``argv`` started in the repository root, its stdout read as JSON lines."""

    def __init__(self, argv: list[str], stderr: IO[str], name: str = "child") -> None:
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._stderr = stderr
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, text=True, cwd=ROOT)
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                item = {"ev": "raw", "t": time.monotonic(), "line": line.rstrip()}
            with self._cond:
                self.lines.append(item)
                self._cond.notify_all()
        with self._cond:
            self.lines.append({"ev": "eof", "t": time.monotonic()})
            self._cond.notify_all()

    def stderr_tail(self, chars: int = 3000) -> str:
        """The end of the child's stderr, for failure messages."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()[-chars:]

    def send(self, **cmd: Any) -> None:
        """One command line to the child."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def mark(self) -> int:
        """The index the next line will have."""
        with self._cond:
            return len(self.lines)

    def since(self, start: int = 0) -> list[dict[str, Any]]:
        """The lines from index ``start`` on."""
        with self._cond:
            return list(self.lines[start:])

    def wait_for(
        self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str, start: int = 0
    ) -> dict[str, Any]:
        """The first line from index ``start`` that passes ``check``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.lines[start:]:
                    if item["ev"] == "eof":
                        pytest.fail(f"{self.name} ended waiting for {what}:\n"
                                    + self.stderr_tail())
                    if check(item):
                        return item
                start = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"{self.name}: no {what} within {timeout:g} s:\n"
                                + self.stderr_tail())
                self._cond.wait(remaining)

    def close(self, quit_timeout: float = 20.0) -> None:
        """Ask the child to quit; kill it if it does not within ``quit_timeout``."""
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self.send(cmd="quit")
        try:
            self.proc.wait(quit_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
