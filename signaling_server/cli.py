"""``signaling-server``: run the signaling server, or print a userSig for a user.

``signaling-server [serve] [--host H] [--port P] [--sdkappid N] [--secret-key K] [--db PATH|URL]
[--spool PATH] [--http-port P] [--admin NAME] [--rest-rate N] [--tls-cert PEM --tls-key PEM]
[--web-root DIR] [--public-ws-url URL] [--login-timeout S] [--max-connections N]
[--max-connections-per-ip N] [--webhook-allow-private]
[--turn URL[,URL...] --turn-secret S [--turn-ttl S]] [--sfu URL[,URL...]] [--sfu-min-users N]``
serves until
SIGTERM or SIGINT, then ends the calls in progress as interrupted and closes the database;
``--http-port`` also serves the REST API (docs/rest-api.md) and the browser client (``webclient/``)
at ``/``; ``--tls-cert``/``--tls-key`` put both listeners on TLS (wss, https), and SIGHUP
reloads those files; ``--turn`` hands clients STUN/TURN servers with credentials
(docs/protocol.md, "ICE servers"); ``--sfu`` carries group calls through Janus VideoRoom
instances (their HTTP API URLs, e.g. ``http://127.0.0.1:8088/janus``), one-to-one calls stay
peer to peer.
``signaling-server usersig USER [--expire S]`` prints a userSig. Every option also has an
environment variable (``CALLSERVER_HOST``, ``CALLSERVER_PORT``, ``CALLSERVER_SDKAPPID``,
``CALLSERVER_SECRET_KEY``, ``CALLSERVER_DB``, ``CALLSERVER_SPOOL``, ``CALLSERVER_HTTP_PORT``,
``CALLSERVER_ADMIN``,
``CALLSERVER_REST_RATE``, ``CALLSERVER_TLS_CERT``, ``CALLSERVER_TLS_KEY``,
``CALLSERVER_WEB_ROOT``, ``CALLSERVER_PUBLIC_WS_URL``, ``CALLSERVER_LOGIN_TIMEOUT``,
``CALLSERVER_MAX_CONNECTIONS``, ``CALLSERVER_MAX_CONNECTIONS_PER_IP``,
``CALLSERVER_WEBHOOK_ALLOW_PRIVATE``, ``CALLSERVER_TURN``, ``CALLSERVER_TURN_SECRET``,
``CALLSERVER_TURN_TTL``, ``CALLSERVER_SFU``, ``CALLSERVER_SFU_MIN_USERS``,
``CALLSERVER_LOG_LEVEL``); a flag wins over it. With neither, the
built-in development sdkappid and secret key are used; the development key is refused (exit 2)
unless ``--host`` is a loopback address.
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
from callwire.turn import DEFAULT_TTL_S, TurnUrl, parse_turn_url
from callwire.usersig import DEFAULT_EXPIRE_S, generate_user_sig
from callwire.version import __version__
from signaling_server.cluster import ClusterError
from signaling_server.core import CoreConfig
from signaling_server.server import (
    DEFAULT_DB_PATH,
    DEFAULT_PORT,
    ServerConfig,
    SignalingServer,
)
from signaling_server.tls import TlsError, TlsFiles
from signaling_server.urls import redact_url
from signaling_server.web import DEFAULT_WEB_ROOT, is_loopback
from signaling_server.webhooks import WebhookSettings

__all__ = ["main"]

logger = logging.getLogger(__name__)

PROG = "signaling-server"


def _sfu_urls(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(
                f"--sfu {url!r}: give Janus HTTP API URLs, like http://127.0.0.1:8088/janus")
    return urls


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


def _turn_urls(text: str) -> tuple[TurnUrl, ...]:
    """``--turn``: comma-separated TURN URLs (an empty string: none)."""
    try:
        return tuple(parse_turn_url(url) for url in text.split(",") if url.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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
        help="SQLite file of call records, or :memory:, or a PostgreSQL URL "
        "postgresql://user:password@host:5432/dbname shared by several servers (needs the "
        "'postgres' extra) (env CALLSERVER_DB; default %(default)s, relative to the "
        "working directory)",
    )
    serve.add_argument(
        "--spool",
        default=os.environ.get("CALLSERVER_SPOOL") or None,
        help="with a PostgreSQL --db: the SQLite file where call records wait while "
        "PostgreSQL is unreachable, moved there when it returns (env CALLSERVER_SPOOL; "
        "default data/spool-<hash of --db>-<port>.db)",
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
        "--login-timeout",
        type=positive_float,
        default=_env("CALLSERVER_LOGIN_TIMEOUT", "10"),
        metavar="S",
        help="close a connection not logged in this many seconds after it opened (env "
        "CALLSERVER_LOGIN_TIMEOUT; default %(default)s)",
    )
    serve.add_argument(
        "--max-connections",
        type=positive_int,
        default=_env("CALLSERVER_MAX_CONNECTIONS", "20000"),
        metavar="N",
        help="connections held at once; more are closed with 4029 (env "
        "CALLSERVER_MAX_CONNECTIONS; default %(default)s)",
    )
    serve.add_argument(
        "--max-connections-per-ip",
        type=positive_int,
        default=_env("CALLSERVER_MAX_CONNECTIONS_PER_IP", "256"),
        metavar="N",
        help="connections held at once from one client address other than loopback (env "
        "CALLSERVER_MAX_CONNECTIONS_PER_IP; default %(default)s)",
    )
    serve.add_argument(
        "--webhook-allow-private",
        action="store_true",
        default=os.environ.get("CALLSERVER_WEBHOOK_ALLOW_PRIVATE", "") not in ("", "0"),
        help="let callback and push URLs point to loopback, private or link-local addresses "
        "(env CALLSERVER_WEBHOOK_ALLOW_PRIVATE=1; default: refused, against SSRF)",
    )
    serve.add_argument(
        "--turn",
        type=_turn_urls,
        default=_turn_urls(os.environ.get("CALLSERVER_TURN", "")),
        metavar="URL[,URL...]",
        help="TURN servers (coturn) handed to clients at login, e.g. "
        "turn:turn.example.com:3478,turn:turn.example.com:3478?transport=tcp; their STUN side "
        "comes with them (env CALLSERVER_TURN; default: none, host candidates only)",
    )
    serve.add_argument(
        "--turn-secret",
        default=os.environ.get("CALLSERVER_TURN_SECRET") or None,
        metavar="SECRET",
        help="coturn's static-auth-secret, signing time-limited TURN credentials (env "
        "CALLSERVER_TURN_SECRET; required with --turn)",
    )
    serve.add_argument(
        "--turn-ttl",
        type=positive_int,
        default=_env("CALLSERVER_TURN_TTL", str(DEFAULT_TTL_S)),
        metavar="SECONDS",
        help="validity of the TURN credentials; fresh ones are sent when a quarter is left "
        "(env CALLSERVER_TURN_TTL; default %(default)s)",
    )
    serve.add_argument(
        "--sfu",
        type=_sfu_urls,
        default=_sfu_urls(os.environ.get("CALLSERVER_SFU") or ""),
        metavar="URL[,URL...]",
        help="Janus HTTP API URLs carrying group calls, least loaded first (env CALLSERVER_SFU; "
        "default: none, every call peer to peer)",
    )
    serve.add_argument(
        "--sfu-min-users",
        type=int,
        default=int(_env("CALLSERVER_SFU_MIN_USERS", "2")),
        metavar="N",
        help="group calls of at least N users at their start use the SFU (env "
        "CALLSERVER_SFU_MIN_USERS; default %(default)s: every group call)",
    )
    serve.add_argument(
        "--cluster",
        default=os.environ.get("CALLSERVER_CLUSTER") or None,
        metavar="REDIS_URL",
        help="join the cluster of nodes on this Redis, e.g. redis://10.0.0.5:6379/0; needs a "
        "postgresql:// --db shared by the nodes and the 'cluster' extra (env "
        "CALLSERVER_CLUSTER; default: a single server)",
    )
    serve.add_argument(
        "--node-name",
        default=_env("CALLSERVER_NODE_NAME", ""),
        metavar="NAME",
        help="this node's name in cluster logs and stats (env CALLSERVER_NODE_NAME; "
        "default: HOST:PORT)",
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
    if args.command == "serve" and args.secret_key == DEV_SECRET_KEY and not is_loopback(
        args.host
    ):
        # Anyone can mint any userSig with the published key, the REST administrator's too.
        parser.error(
            f"the built-in development secret key is refused when a listener is not on "
            f"loopback (--host {args.host}): anyone could make userSigs for it, the REST "
            "administrator's included; set --secret-key (or CALLSERVER_SECRET_KEY) to your "
            "own key, or listen on 127.0.0.1"
        )
    if args.command == "serve" and args.turn and not args.turn_secret:
        parser.error("--turn needs --turn-secret (or CALLSERVER_TURN_SECRET): the "
                     "static-auth-secret of coturn's configuration")
    if args.command == "serve" and args.cluster:
        if not args.cluster.startswith(("redis://", "rediss://", "unix://")):
            parser.error(f"--cluster {args.cluster!r}: give a redis:// (or rediss://, "
                         "unix://) URL, e.g. redis://127.0.0.1:6379/0")
        if not args.db.startswith(("postgresql://", "postgres://")):
            parser.error("--cluster needs the nodes to share their records: give --db (or "
                         "CALLSERVER_DB) a postgresql:// URL (see docs/cluster.md)")
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
        spool=args.spool,
        http_port=args.http_port,
        admin_identifier=args.admin,
        rest_rate_per_s=args.rest_rate,
        tls=TlsFiles(args.tls_cert, args.tls_key) if args.tls_cert else None,
        web_root=args.web_root,
        public_ws_url=args.public_ws_url,
        webhooks=WebhookSettings(allow_private_targets=args.webhook_allow_private),
        core=CoreConfig(
            login_timeout_s=args.login_timeout,
            max_connections=args.max_connections,
            max_connections_per_ip=args.max_connections_per_ip,
            turn_urls=args.turn,
            turn_secret=args.turn_secret or "",
            turn_ttl_s=args.turn_ttl,
            sfu=args.sfu,
            sfu_min_users=args.sfu_min_users,
        ),
        cluster=args.cluster,
        node_name=args.node_name,
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
    except ClusterError as exc:
        print(f"{PROG}: error: cluster: {exc.message}", file=sys.stderr)
        return 1
    except (sqlite3.Error, RuntimeError, ImportError) as exc:
        print(f"{PROG}: error: cannot open the record database {redact_url(config.db)}: "
              f"{exc}", file=sys.stderr)
        return 1
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
    # Printed once the handlers are in place: whoever reads the line may signal at once.
    print(
        f"{PROG} listening on {server.url} (sdkappid {config.sdk_app_id}, "
        f"db {redact_url(config.db)})",
        flush=True,
    )
    if server.cluster is not None:
        link = server.cluster.link
        print(f"{PROG} cluster node {link.index} ({link.name}) on {link.safe_url}", flush=True)
    if server.http_api is not None:
        print(f"{PROG} REST API on {server.http_url}v1/", flush=True)
        print(f"{PROG} browser client on {server.http_url}", flush=True)
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
