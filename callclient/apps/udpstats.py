"""UDP datagrams the kernel dropped for this process: receive buffers that overflowed.

A process that reads its media sockets slower than packets arrive (starved of CPU, or its
event loop too busy) loses the excess in the kernel, before any counter of aiortc sees
it: ``/proc/net/udp`` (and ``udp6``) count, per socket, the datagrams dropped because its
receive buffer was full. :func:`udp_receive_drops` sums that column over the sockets this
process holds open (matched by inode through ``/proc/self/fd``). The loopback harness reads it
before and after its window (``LoopbackReport.udp_drops``): packets lost this way are why a
starved receiver's video breaks up (a frame needs every one of its packets) while its audio
still trickles through. Linux only; elsewhere it is None.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["udp_receive_drops"]

_TABLES = ("/proc/net/udp", "/proc/net/udp6")
_INODE_COLUMN = 9
_DROPS_COLUMN = 12


def _socket_inodes() -> set[int]:
    inodes: set[int] = set()
    folder = Path("/proc/self/fd")
    for entry in folder.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:  # closed while listing
            continue
        if target.startswith("socket:[") and target.endswith("]"):
            inodes.add(int(target[8:-1]))
    return inodes


def udp_receive_drops() -> int | None:
    """Datagrams dropped so far (buffer full) on this process's open UDP sockets; None
    where ``/proc/net/udp`` does not exist."""
    if not Path(_TABLES[0]).exists():
        return None
    inodes = _socket_inodes()
    total = 0
    for table in _TABLES:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) <= _DROPS_COLUMN:
                continue
            if int(fields[_INODE_COLUMN]) in inodes:
                total += int(fields[_DROPS_COLUMN])
    return total
