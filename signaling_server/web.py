"""The browser client on the HTTP port: its files (``webclient/``), settings, a development login.

:func:`install` puts a :class:`WebClient` in front of the REST API's aiohttp application
(:mod:`signaling_server.http_api`), as a middleware, so both share the HTTP port and its TLS:

* ``GET /`` and ``GET /<file>``: the files of the web root (the package data
  ``signaling_server/webclient/``, or ``--web-root``), with a Content-Security-Policy that
  allows only the page's own scripts and styles (no CDN, nothing inline), websocket connections
  and HTTP requests to the configured Janus instances (``--sfu``: the page talks to them itself);
* ``GET /config.json``: what the page needs to connect: ``sdkAppId``, ``protocolVersion``,
  ``websocketUrl`` (the public one, or null: then ``ws[s]://<page host>:<websocketPort>/``),
  ``websocketPort``, ``secure`` (TLS) and ``developmentLogin``;
* ``POST /dev/login`` with ``{"userID": ...}``: a userSig for that user, only when the server
  runs with the development secret key (:mod:`callwire.dev`) and listens on loopback, and only
  to loopback clients; otherwise 404 with the reason. Anyone who can reach such a server could
  make userSigs anyway: the key is public.

REST paths (``/v1/...`` and the unprefixed ``/records/...``, ``/callback/...``) go on to the
REST API untouched.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from callwire.dev import DEV_SECRET_KEY
from callwire.protocol import PROTOCOL_VERSION, check_user_id
from callwire.usersig import generate_user_sig

__all__ = ["DEFAULT_WEB_ROOT", "WebClient", "dev_login_allowed", "install", "is_loopback",
           "origin_of"]

logger = logging.getLogger(__name__)

DEFAULT_WEB_ROOT: Final = Path(str(importlib.resources.files("signaling_server") / "webclient"))
"""The browser client's files, package data of ``signaling_server`` (in a wheel too)."""

DEV_SIG_SECONDS: Final = 86_400
"""Validity of a development-login userSig."""

_REST_PREFIXES: Final = ("/v1/", "/records/", "/callback/")
_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wav": "audio/wav",
}
_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:{sfu}; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": _CSP.format(sfu=""),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (a CSP source), or "" when it has none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dev_login_allowed(secret_key: str, host: str) -> bool:
    """The development login is on only with the development key, listening on loopback."""
    return secret_key == DEV_SECRET_KEY and is_loopback(host)


@dataclass(frozen=True)
class WebClient:
    """What the HTTP port serves besides the REST API; see the module docstring."""

    sdk_app_id: int
    websocket_port: Callable[[], int]
    """The websocket listener's port (read at each request: it binds after HTTP)."""
    secure: bool = False
    root: Path = DEFAULT_WEB_ROOT
    public_ws_url: str | None = None
    dev_secret_key: str | None = None
    """The key development userSigs are made with; None turns the development login off."""
    sfu_urls: tuple[str, ...] = ()
    """The Janus HTTP API URLs of ``--sfu``: the page may connect to their origins."""

    @property
    def headers(self) -> dict[str, str]:
        """The headers of every answer: the CSP names the Janus origins the page may reach."""
        origins = sorted({o for o in map(origin_of, self.sfu_urls) if o})
        sfu = "".join(f" {origin}" for origin in origins)
        return {**_HEADERS, "Content-Security-Policy": _CSP.format(sfu=sfu)}

    def settings(self) -> dict[str, Any]:
        """The body of ``/config.json``."""
        return {
            "sdkAppId": self.sdk_app_id,
            "protocolVersion": PROTOCOL_VERSION,
            "websocketUrl": self.public_ws_url,
            "websocketPort": self.websocket_port(),
            "secure": self.secure,
            "developmentLogin": self.dev_secret_key is not None,
        }

    def file(self, path: str) -> Path | None:
        """The file of the web root that ``path`` names, or None (outside it, hidden, absent)."""
        relative = path.lstrip("/") or "index.html"
        parts = relative.split("/")
        if any(not part or part.startswith(".") for part in parts):
            return None
        root = self.root.resolve()
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    async def serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer a web-client request, or hand it on to the REST API."""
        path = request.path
        if path.startswith(_REST_PREFIXES):
            return await handler(request)
        if path == "/dev/login":
            return await self._dev_login(request)
        if request.method not in ("GET", "HEAD"):
            return await handler(request)
        if path == "/config.json":
            return web.json_response(self.settings(), headers=self.headers)
        found = self.file(path)
        if found is None:
            if not self.root.is_dir():
                return _text(404, f"the web client is not installed: {self.root} is not a "
                                  "directory (start the server with --web-root DIR)")
            return _text(404, f"{path[:200]} is not a file of the web client")
        content_type = _CONTENT_TYPES.get(found.suffix, "application/octet-stream")
        return web.FileResponse(found, headers={**self.headers, "Content-Type": content_type})

    async def _dev_login(self, request: web.Request) -> web.StreamResponse:
        if self.dev_secret_key is None:
            return _error(404, "the development login is off: the server runs with its own "
                               "secret key or listens beyond loopback; paste a userSig instead")
        if not is_loopback(request.remote or ""):
            return _error(403, "the development login only answers clients on this machine")
        if request.method != "POST":
            return _error(405, 'POST {"userID": ...} to /dev/login')
        try:
            body = json.loads(await request.text())
        except ValueError:
            return _error(400, 'the body must be JSON: {"userID": "alice"}')
        user_id = body.get("userID") if isinstance(body, dict) else None
        problem = check_user_id(user_id)
        if problem is not None:
            return _error(400, f"userID {problem}")
        assert isinstance(user_id, str)
        user_sig = generate_user_sig(
            self.sdk_app_id, self.dev_secret_key, user_id, DEV_SIG_SECONDS
        )
        logger.info("development userSig issued for %s", user_id)
        return web.json_response(
            {"sdkAppId": self.sdk_app_id, "userID": user_id, "userSig": user_sig,
             "expiresIn": DEV_SIG_SECONDS},
            headers=_HEADERS,
        )


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=_HEADERS)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=_HEADERS)


def install(app: web.Application, client: WebClient) -> None:
    """Serve ``client`` on ``app`` (before the app starts), in front of its own routes."""

    @web.middleware
    async def web_client(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await client.serve(request, handler)

    app.middlewares.append(web_client)
