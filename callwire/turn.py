"""TURN URLs and time-limited TURN credentials, coturn's shared-secret ("REST API") scheme.

coturn with ``use-auth-secret`` and ``static-auth-secret=SECRET`` accepts any username of the
form ``"<expiry>:<userId>"`` (expiry in Unix seconds) whose password is
``base64(HMAC-SHA1(SECRET, username))``, until the expiry passes. The signaling server, which
knows the secret, hands such a pair to each logged-in user (``iceServers`` in the login reply,
``ICE_SERVERS`` before they expire), so a relay is usable only by users of this server and only
for a bounded time. No I/O here: the server and the tests share these functions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_TTL_S",
    "TurnUrl",
    "ice_servers",
    "parse_turn_url",
    "turn_credentials",
]

DEFAULT_TTL_S: Final = 24 * 3600
"""How long the credentials handed out at login are valid, by default."""

_URL_RE: Final = re.compile(
    r"^(?P<scheme>turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?$"
)


@dataclass(frozen=True)
class TurnUrl:
    """One parsed ``turn:``/``turns:`` URL (RFC 7065)."""

    url: str
    scheme: str
    host: str
    port: int
    transport: str
    """``udp`` or ``tcp``; ``turns:`` (TLS) is always ``tcp``."""

    @property
    def stun_url(self) -> str | None:
        """The STUN URL of the same server (coturn answers Binding requests on its TURN
        port), for a plain UDP ``turn:`` URL; None otherwise."""
        if self.scheme == "turn" and self.transport == "udp":
            return f"stun:{self.host}:{self.port}"
        return None


def parse_turn_url(url: str) -> TurnUrl:
    """Parse ``turn:HOST[:PORT][?transport=udp|tcp]`` or ``turns:HOST[:PORT][?transport=tcp]``.

    Raises ``ValueError`` with a sentence saying what is accepted.
    """
    match = _URL_RE.match(url.strip())
    if match is None:
        raise ValueError(
            f"{url!r} is not a TURN URL: write turn:HOST[:PORT][?transport=udp|tcp] or "
            "turns:HOST[:PORT] (e.g. turn:turn.example.com:3478)"
        )
    scheme = match["scheme"]
    transport = match["transport"] or ("tcp" if scheme == "turns" else "udp")
    if scheme == "turns" and transport != "tcp":
        raise ValueError(f"{url!r}: turns: (TLS) runs over TCP only; drop ?transport=udp")
    port = int(match["port"] or (5349 if scheme == "turns" else 3478))
    if not 0 < port < 65536:
        raise ValueError(f"{url!r}: port {port} is out of range 1..65535")
    return TurnUrl(url.strip(), scheme, match["host"], port, transport)


def turn_credentials(secret: str, user_id: str, expires_at: int) -> tuple[str, str]:
    """``(username, credential)`` valid until ``expires_at`` (Unix seconds) for ``user_id``."""
    username = f"{expires_at}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(
    urls: tuple[TurnUrl, ...], secret: str, user_id: str, expires_at: int
) -> list[dict[str, Any]]:
    """The ``iceServers`` list for ``user_id``: the STUN side of the TURN servers first (no
    credentials), then every TURN URL in the configured order with one credential pair."""
    stun = list(dict.fromkeys(u.stun_url for u in urls if u.stun_url is not None))
    username, credential = turn_credentials(secret, user_id, expires_at)
    servers: list[dict[str, Any]] = []
    if stun:
        servers.append({"urls": stun})
    servers.append(
        {"urls": [u.url for u in urls], "username": username, "credential": credential}
    )
    return servers
