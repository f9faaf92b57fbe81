"""Waiting in tests: one timeout constant every wait is scaled from, and a polling wait.

A wait that runs out fails the test with a sentence saying what did not happen, never with a
bare ``TimeoutError``; none of them asserts on how long something took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

__all__ = ["T", "eventually"]

T = 10.0
"""The one timeout (seconds) every wait in the tests is scaled from."""


async def eventually(
    check: Callable[[], bool],
    what: str,
    timeout: float = T,  # noqa: ASYNC109
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            pytest.fail(f"not true within {timeout:g} s: {what}")
        await asyncio.sleep(interval)
