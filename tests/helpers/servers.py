"""The one place tests get credentials and a signaling server from.

Every test server runs the development sdkappid and key (:mod:`callwire.dev`), the ones the
programs (``callclient bot``, ``app``, ``demo``) use when given none, so a test can start a
program against its server without passing credentials. Tests about other keys or apps make
their own sigs with :func:`sig`'s ``app``/``key`` arguments.
"""

from __future__ import annotations

import json
import time
from typing import Any

from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.usersig import generate_user_sig
from signaling_server.core import CoreConfig
from signaling_server.server import ServerConfig, SignalingServer
from signaling_server.webhooks import EVENTS, WebhookSettings

__all__ = ["APP", "KEY", "insert_callback_config", "new_server", "server_config", "sig"]

APP = DEV_SDK_APP_ID
KEY = DEV_SECRET_KEY


def sig(user_id: str, expire_s: int = 86_400, *, app: int = APP, key: str = KEY) -> str:
    """A userSig for ``user_id``, valid ``expire_s`` seconds (on the test app by default)."""
    return generate_user_sig(app, key, user_id, expire_s)


def server_config(
    db: str = ":memory:", core: CoreConfig | None = None, **overrides: Any
) -> ServerConfig:
    """A server configuration for the test app on a free port of 127.0.0.1."""
    # Webhook receivers in tests listen on loopback, which a real server refuses by default.
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "sdk_app_id": APP,
                                "secret_key": KEY, "db": db, "core": core or CoreConfig(),
                                "webhooks": WebhookSettings(allow_private_targets=True)}
    settings.update(overrides)
    return ServerConfig(**settings)


def new_server(
    db: str = ":memory:", core: CoreConfig | None = None, **overrides: Any
) -> SignalingServer:
    """A server for the test app, not started: ``async with new_server() as server:``."""
    return SignalingServer(server_config(db, core, **overrides))


def insert_callback_config(conn: Any, url: str) -> None:
    """On a store connection in a transaction: every callback event of the test app to
    ``url``, as the REST API's ``set_config`` stores it."""
    conn.execute(
        "INSERT INTO callback_config (sdk_app_id, url, events, created_ts, updated_ts) "
        "VALUES (?, ?, ?, ?, ?)",
        (APP, url, json.dumps(EVENTS), time.time(), time.time()),
    )
