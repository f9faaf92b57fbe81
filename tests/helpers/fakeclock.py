"""A fake clock for pacing code: ``monotonic()``, ``time()`` and ``sleep()`` that advance it.

Pacing tests on a loaded 2-core machine cannot bound wall-clock windows of ~100 ms. With
:meth:`FakeClock.install`, a module's ``time`` and ``asyncio.sleep`` are this clock's (only in
that module): a sleep moves the clock to its end at once (yielding to the loop once), so the
test asserts the exact schedule, the count and the order of what the code did.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

__all__ = ["FakeClock"]

_real_sleep = asyncio.sleep


class _AsyncioProxy:
    """The module's ``asyncio`` with ``sleep`` replaced; everything else is the real one."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        return await self._clock.sleep(delay, result)


class FakeClock:
    """Starts at ``start``; :attr:`sleeps` lists every delay slept, in order."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1.7e9) -> None:
        self.now = start
        self._wall_offset = wall_offset
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Time passes without the code under test sleeping (a consumer busy elsewhere)."""
        self.now += seconds

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.sleeps.append(delay)
        if delay > 0:
            self.now += delay
        await _real_sleep(0)
        return result

    def install(self, monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> FakeClock:
        """Make ``module``'s ``time`` and ``asyncio.sleep`` this clock's for the test."""
        fake_time = types.SimpleNamespace(
            monotonic=self.monotonic, time=self.time, perf_counter=self.perf_counter
        )
        monkeypatch.setattr(module, "time", fake_time)
        monkeypatch.setattr(module, "asyncio", _AsyncioProxy(self))
        return self
