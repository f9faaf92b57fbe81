"""Watching the device list at low cost: a cheap fingerprint polled, the full list on change.

A :class:`DeviceProbe` answers two questions: :meth:`~DeviceProbe.fingerprint`, cheap (for the
system: the names of the camera and sound device nodes in ``/dev``), and
:meth:`~DeviceProbe.list`, which may be slow (OpenCV and PortAudio enumeration). The
:class:`DeviceWatcher` asks for the fingerprint every ``interval`` seconds and for the list
only when the fingerprint changed, both in a worker thread, and calls ``on_change`` with the
new list when it differs from the last one. The engine runs one watcher while logged in and
turns each change into ``on_devices_updated`` (the web SDK's ``DEVICED_UPDATED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable
from typing import Protocol

from callclient.types import DeviceList

__all__ = ["DeviceProbe", "DeviceWatcher"]

logger = logging.getLogger(__name__)


class DeviceProbe(Protocol):
    """What a device watcher asks; both methods run in a worker thread."""

    def fingerprint(self) -> Hashable:
        """A cheap value that changes when a device appears or goes."""

    def list(self) -> DeviceList:
        """The devices present now."""


class DeviceWatcher:
    """Polls a probe and reports device list changes; :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        probe: DeviceProbe,
        on_change: Callable[[DeviceList], None],
        interval: float = 1.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.probe = probe
        self.on_change = on_change
        self.interval = interval
        self.current: DeviceList | None = None
        """The list as last read (None before the first read)."""
        self.checks = 0
        """Fingerprints taken so far."""
        self.listings = 0
        """Full lists read so far (the first one, then one per fingerprint change)."""
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """End :meth:`run` at its next wake-up."""
        self._stop.set()

    async def run(self) -> None:
        """Read the list once, then watch it; a probe that fails is logged and retried."""
        mark: Hashable = object()
        while not self._stop.is_set():
            try:
                fingerprint = await asyncio.to_thread(self.probe.fingerprint)
                self.checks += 1
                if fingerprint != mark:
                    listing = await asyncio.to_thread(self.probe.list)
                    self.listings += 1
                    mark = fingerprint
                    previous, self.current = self.current, listing
                    if previous is not None and listing != previous:
                        self.on_change(listing)
            except Exception:
                logger.exception("device probe failed; trying again in %g s", self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
