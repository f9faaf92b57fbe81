"""The baseline of ``bench.server_load``: a bare websockets relay, no validation, state or storage.

A client's first message names it (``{"name": X}``, answered with ``{"ok":true}``); every later
message must hold ``"to": Y`` and is forwarded verbatim to the client named Y. Same websockets
settings as :mod:`signaling_server.server` (sizes, queues, keepalive), compression off unless
``--compression deflate`` (used to measure what permessage-deflate costs per connection).

Run: ``python -m bench.bare_relay [--host H] [--port 0] [--compression deflate]``; it prints
``listening on ws://HOST:PORT`` and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Literal

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["main", "raise_fd_limit", "serve_relay"]

ACK = '{"ok":true}'


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE toward ``wanted`` (capped by the hard limit); the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve_relay(
    host: str, port: int, compression: Literal["deflate"] | None, ready: asyncio.Event | None
) -> None:
    """Serve until cancelled; prints the URL once listening."""
    clients: dict[str, ServerConnection] = {}

    async def handler(ws: ServerConnection) -> None:
        name: str | None = None
        try:
            name = str(json.loads(await ws.recv())["name"])
            clients[name] = ws
            await ws.send(ACK)
            async for message in ws:
                peer = clients.get(json.loads(message)["to"])
                if peer is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await peer.send(message)
        except ConnectionClosed:
            pass
        finally:
            if name is not None and clients.get(name) is ws:
                del clients[name]

    async with serve(
        handler,
        host,
        port,
        compression=compression,
        max_size=2**20,
        max_queue=8,
        write_limit=32 * 1024,
        ping_interval=20.0,
        ping_timeout=20.0,
        close_timeout=5.0,
    ) as server:
        bound = server.sockets[0].getsockname()
        print(f"bare-relay listening on ws://{host}:{bound[1]}", flush=True)
        if ready is not None:
            ready.set()
        await asyncio.Future()


async def _run(host: str, port: int, compression: Literal["deflate"] | None) -> None:
    task = asyncio.ensure_future(serve_relay(host, port, compression, None))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_relay", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--compression", choices=("none", "deflate"), default="none")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit()
    asyncio.run(_run(args.host, args.port, "deflate" if args.compression == "deflate" else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
