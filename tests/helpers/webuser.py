"""A user of the browser client (``signaling_server/webclient/``) in a
:class:`~tests.helpers.browser.Tab`: logs in,
clicks its buttons, and reads what the page exposes for tests (``window.callApp``).

Waits poll the page's snapshot and fail with what the page showed (status, members, the event
log, its last error) instead of a bare timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.browser import Browser, Tab
from tests.helpers.waits import T

__all__ = ["WebUser", "names"]

Snapshot = dict[str, Any]


def names(log: list[dict[str, Any]], *, source: str = "server") -> list[str]:
    """Event names of a page's log, from ``source`` (server events: the TUICallEvent stream)."""
    return [entry["event"] for entry in log if entry["source"] == source]


class WebUser:
    """One logged-in (or logging-in) page of the browser client."""

    def __init__(self, user_id: str, tab: Tab) -> None:
        self.user_id = user_id
        self.tab = tab

    @classmethod
    async def open(cls, browser: Browser, http_url: str, user_id: str, **params: str) -> WebUser:
        """Open the page as ``user_id`` with the development login; wait until online."""
        query = "&".join(f"{k}={v}" for k, v in {"user": user_id, "login": "dev",
                                                 **params}.items())
        user = cls(user_id, await browser.tab(f"{http_url}?{query}"))
        await user.wait(lambda s: s["user"] == user_id and s["connection"] == "online",
                        f"{user_id} logged in")
        return user

    async def snapshot(self) -> Snapshot:
        """The page's state (``callApp.snapshot()``)."""
        value = await self.tab.js("window.callApp ? callApp.snapshot() : null")
        return value or {"user": None, "connection": "loading", "status": "idle", "log": [],
                         "members": [], "error": ""}

    async def wait(
        self, check: Callable[[Snapshot], bool], what: str, timeout: float = 3 * T  # noqa: ASYNC109
    ) -> Snapshot:
        """Poll the snapshot until ``check`` holds; fail with the last one seen."""
        deadline = time.monotonic() + timeout
        while True:
            snap = await self.snapshot()
            if check(snap):
                return snap
            if time.monotonic() > deadline:
                pytest.fail(f"{self.user_id}'s page: not true within {timeout:g} s: {what}\n"
                            + describe(snap))
            await asyncio.sleep(0.2)

    async def connected_to(self, *users: str) -> Snapshot:
        """Wait until the call is connected and the media path to each of ``users`` is up."""

        def up(snap: Snapshot) -> bool:
            states = {m["userId"]: m["connectionState"] for m in snap["members"]}
            return snap["status"] == "connected" and all(
                states.get(user) == "connected" for user in users)

        return await self.wait(up, f"connected to {', '.join(users)}")

    async def media_from(self, user: str, frames: int = 30) -> dict[str, Any]:
        """Wait until ``frames`` video frames of ``user`` were decoded and its audio is heard."""
        deadline = time.monotonic() + 3 * T
        while True:
            stats = (await self.tab.js_async("callApp.mediaStats()")).get(user, {})
            if (stats.get("framesDecoded", 0) >= frames and stats.get("frameWidth", 0) > 0
                    and stats.get("audioPackets", 0) > 0 and stats.get("rms", 0.0) > 0.01):
                return dict(stats)
            if time.monotonic() > deadline:
                pytest.fail(f"{self.user_id}'s page: no media from {user} within {3 * T:g} s: "
                            f"{stats}")
            await asyncio.sleep(0.3)

    async def idle(self) -> Snapshot:
        """Wait until the page is in no call (and still online)."""
        return await self.wait(lambda s: s["status"] == "idle" and s["connection"] == "online",
                               "back to no call")

    async def call(self, users: str, media: str = "video") -> None:
        """Type ``users`` in the dial form and press Call."""
        await self.tab.type("callee", users)
        await self.tab.click(f"media-{media}")
        await self.tab.click("call-button")

    async def ringing(self) -> str:
        """Wait for the incoming-call panel; its text."""
        await self.wait(lambda s: s["status"] == "ringing", "an incoming call ringing")
        text: str = await self.tab.js("document.getElementById('incoming-text').textContent")
        assert not await self.tab.js("document.getElementById('incoming').hidden")
        return text

    async def click(self, button: str) -> None:
        await self.tab.click(button)

    async def screenshot(self, directory: Path, name: str) -> Path:
        """Save a screenshot into ``directory`` and print its path (the test's output)."""
        path = await self.tab.screenshot(directory / f"{name}.png")
        assert path.stat().st_size > 1000
        print(f"screenshot: {path}")
        return path


def describe(snap: Snapshot) -> str:
    members = json.dumps(snap.get("members"))
    log = "\n".join(f"    {e['source']:6} {e['event']} {json.dumps(e['data'])[:160]}"
                    for e in snap.get("log", []))
    return (f"  status {snap.get('status')}, connection {snap.get('connection')}, "
            f"error {snap.get('error')!r}\n  members {members}\n  log:\n{log or '    (none)'}")
