"""``signaling-server``: run the signaling server, or print a userSig for a user.

``signaling-server [serve] [--host H] [--port P] [--sdkappid N] [--secret-key K] [--db PATH]
[--http-port P] [--admin NAME] [--rest-rate N] [--tls-cert PEM --tls-key PEM] [--web-root DIR]
[--public-ws-url URL]`` serves until SIGTERM or SIGINT, then ends the calls in progress as
interrupted and closes the database; ``--http-port`` also serves the REST API
(docs/rest-api.md) and the browser client (``web/``) at ``/``; ``--tls-cert``/``--tls-key``
put both listeners on TLS (wss, https), and SIGHUP reloads those files.
``signaling-server usersig USER [--expire S]`` prints a userSig. Every option also has an
environment variable (``CALLSERVER_HOST``, ``CALLSERVER_PORT``, ``CALLSERVER_SDKAPPID``,
``CALLSERVER_SECRET_KEY``, ``CALLSERVER_DB``, ``CALLSERVER_HTTP_PORT``, ``CALLSERVER_ADMIN``,
``CALLSERVER_REST_RATE``, ``CALLSERVER_TLS_CERT``, ``CALLSERVER_TLS_KEY``,
``CALLSERVER_WEB_ROOT``, ``CALLSERVER_PUBLIC_WS_URL``, ``CALLSERVER_LOG_LEVEL``); a flag wins
over it. With neither, the built-in development sdkappid and secret key are used.
``signaling-server --version`` prints the version.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from callwire.argtypes import LOG_LEVELS, non_negative_int, port, positive_float, positive_int
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.usersig import DEFAULT_EXPIRE_S, generate_user_sig
from callwire.version import __version__
from signaling_server.server import (
    DEFAULT_DB_PATH,
    DEFAULT_PORT,
    ServerConfig,
    SignalingServer,
)
from signaling_server.tls import TlsError, TlsFiles
from signaling_server.web import DEFAULT_WEB_ROOT

__all__ = ["main"]

logger = logging.getLogger(__name__)

PROG = "signaling-server"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _add_identity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sdkappid",
        type=positive_int,
        default=_env("CALLSERVER_SDKAPPID", str(DEV_SDK_APP_ID)),
        help="application id served (env CALLSERVER_SDKAPPID; default %(default)s)",
    )
    parser.add_argument(
        "--secret-key",
        default=_env("CALLSERVER_SECRET_KEY", DEV_SECRET_KEY),
        help="key userSigs are signed with (env CALLSERVER_SECRET_KEY; default: the "
        "built-in development key)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Signaling server for callclient: websocket call events."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{serve,usersig}")

    serve = commands.add_parser("serve", help="run the server (the default command)")
    serve.add_argument(
        "--host",
        default=_env("CALLSERVER_HOST", "127.0.0.1"),
        help="interface to bind (env CALLSERVER_HOST; default %(default)s)",
    )
    serve.add_argument(
        "--port",
        type=port,
        default=_env("CALLSERVER_PORT", str(DEFAULT_PORT)),
        help="TCP port, 0 for any free one (env CALLSERVER_PORT; default %(default)s)",
    )
    _add_identity(serve)
    serve.add_argument(
        "--db",
        default=_env("CALLSERVER_DB", DEFAULT_DB_PATH),
        help="SQLite file of call records, or :memory: (env CALLSERVER_DB; "
        "default %(default)s, relative to the working directory)",
    )
    serve.add_argument(
        "--http-port",
        type=port,
        default=os.environ.get("CALLSERVER_HTTP_PORT") or None,
        help="TCP port of the REST API on --host, 0 for any free one (env "
        "CALLSERVER_HTTP_PORT; default: no REST API)",
    )
    serve.add_argument(
        "--admin",
        default=_env("CALLSERVER_ADMIN", "administrator"),
        help="administrator account allowed to call the REST API (env CALLSERVER_ADMIN; "
        "default %(default)s)",
    )
    serve.add_argument(
        "--rest-rate",
        type=positive_float,
        default=_env("CALLSERVER_REST_RATE", "20"),
        help="REST requests per second per sdkappid (env CALLSERVER_REST_RATE; "
        "default %(default)s)",
    )
    serve.add_argument(
        "--tls-cert",
        default=os.environ.get("CALLSERVER_TLS_CERT") or None,
        metavar="PEM",
        help="certificate chain for wss and https, reloaded on SIGHUP (env "
        "CALLSERVER_TLS_CERT; default: no TLS)",
    )
    serve.add_argument(
        "--tls-key",
        default=os.environ.get("CALLSERVER_TLS_KEY") or None,
        metavar="PEM",
        help="private key of --tls-cert (env CALLSERVER_TLS_KEY)",
    )
    serve.add_argument(
        "--web-root",
        type=Path,
        default=_env("CALLSERVER_WEB_ROOT", str(DEFAULT_WEB_ROOT)),
        metavar="DIR",
        help="files of the browser client served on --http-port (env CALLSERVER_WEB_ROOT; "
        "default %(default)s)",
    )
    serve.add_argument(
        "--public-ws-url",
        default=os.environ.get("CALLSERVER_PUBLIC_WS_URL") or None,
        metavar="URL",
        help="websocket URL the browser client connects to, when a reverse proxy serves it "
        "(env CALLSERVER_PUBLIC_WS_URL; default: this host's --port)",
    )
    serve.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=_env("CALLSERVER_LOG_LEVEL", "WARNING").upper(),
        help="logging threshold on stderr (env CALLSERVER_LOG_LEVEL; default %(default)s)",
    )

    usersig = commands.add_parser("usersig", help="print a userSig for USER")
    usersig.add_argument("user", metavar="USER", help="user id the userSig is for")
    usersig.add_argument(
        "--expire",
        type=non_negative_int,
        default=DEFAULT_EXPIRE_S,
        help="validity in seconds (default %(default)s: 180 days)",
    )
    _add_identity(usersig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``signaling-server``; returns the process exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in ("serve", "usersig", "-h", "--help", "--version"):
        args_list.insert(0, "serve")
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command == "serve" and (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together (or CALLSERVER_TLS_CERT and "
                     "CALLSERVER_TLS_KEY)")
    if args.command == "usersig":
        print(generate_user_sig(args.sdkappid, args.secret_key, args.user, args.expire))
        return 0
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.secret_key == DEV_SECRET_KEY:
        print(
            f"{PROG}: warning: using the built-in development secret key; anyone can make "
            "userSigs for it (set --secret-key or CALLSERVER_SECRET_KEY)",
            file=sys.stderr,
            flush=True,
        )
    config = ServerConfig(
        host=args.host,
        port=args.port,
        sdk_app_id=args.sdkappid,
        secret_key=args.secret_key,
        db=args.db,
        http_port=args.http_port,
        admin_identifier=args.admin,
        rest_rate_per_s=args.rest_rate,
        tls=TlsFiles(args.tls_cert, args.tls_key) if args.tls_cert else None,
        web_root=args.web_root,
        public_ws_url=args.public_ws_url,
    )
    try:
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130


async def _serve(config: ServerConfig) -> int:
    server = SignalingServer(config)
    try:
        await server.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            ports = str(config.port)
            if config.http_port is not None:
                ports += f" or HTTP port {config.http_port}"
            message = f"cannot listen on {config.host}:{ports}: address already in use"
        else:
            message = f"cannot start: {exc}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    except TlsError as exc:
        print(f"{PROG}: error: TLS: {exc}", file=sys.stderr)
        return 1
    except (sqlite3.Error, RuntimeError) as exc:
        print(f"{PROG}: error: cannot open the record database {config.db}: {exc}",
              file=sys.stderr)
        return 1
    print(
        f"{PROG} listening on {server.url} (sdkappid {config.sdk_app_id}, db {config.db})",
        flush=True,
    )
    if server.http_api is not None:
        print(f"{PROG} REST API on {server.http_url}v1/", flush=True)
        print(f"{PROG} browser client on {server.http_url}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set}
    if config.tls is not None:
        handlers[signal.SIGHUP] = lambda: _reload_tls(server)
    for signum, handler in handlers.items():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, handler)
            installed.append(signum)
    try:
        await stop.wait()
        logger.info("signal received; stopping")
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await server.stop()
    return 0


def _reload_tls(server: SignalingServer) -> None:
    try:
        server.reload_tls()
    except TlsError as exc:
        print(f"{PROG}: error: TLS reload failed, keeping the current certificate: {exc}",
              file=sys.stderr, flush=True)
    else:
        print(f"{PROG}: TLS certificate reloaded", flush=True)
