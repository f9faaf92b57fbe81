"""The STUN/TURN servers the engine's peer connections use, chosen from the server's list.

The signaling server hands out ``iceServers`` at login and fresh ones (``ICE_SERVERS``) before
they expire (docs/protocol.md, "ICE servers"). aiortc uses only the *first* STUN URL and the
*first* TURN URL it can (``turn:`` over UDP or TCP, ``turns:`` over TLS/TCP) of an
``RTCConfiguration``: a browser would try every TURN URL at once, aiortc never falls back from
a TURN/UDP URL to the TURN/TCP one where a firewall drops UDP. So :class:`IceChooser` tries
each TURN URL in the server's order with a real allocation (aioice's TURN client, the one
aiortc uses) and gives the peer connections the STUN servers plus the first TURN URL that
allocated. A TURN server that refuses the credentials, does not answer, or (``turns:``)
presents a certificate this machine does not trust is reported once (``on_error`` with
:data:`~callwire.codes.ErrorCode.TURN_AUTH_FAILED`,
:data:`~callwire.codes.ErrorCode.TURN_UNREACHABLE` or
:data:`~callwire.codes.ErrorCode.TURN_TLS_FAILED`, and a warning), and the calls go on
with direct paths only. ICE itself prefers host and server-reflexive pairs over the relay.

``turns:`` is TLS over TCP with Python's default context (aioice gets ``ssl=True`` from
aiortc and from :func:`probe_turn` alike): the certificate must be valid for the URL's host
and signed by a CA of the system's store, or of the file ``SSL_CERT_FILE`` names (read at
each connection, so setting it in the environment before the first call is enough). There is
no engine option for a CA: aiortc hands aioice a bool, not a context, so an option could
reach this probe but not the allocations of the peer connections. DTLS to the TURN server
(``turns:`` over UDP) is not supported by aiortc; :func:`~callwire.turn.parse_turn_url`
refuses it.

Servers given to :class:`~callclient.engine.CallEngine` (``ice_servers=``) override all this:
they are used as given, untried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioice import stun, turn

from callclient.observer import Error, Notification
from callclient.peer import IceServer
from callclient.tasks import TaskOwner
from callwire.codes import ErrorCode
from callwire.messages import IceServers
from callwire.turn import TurnUrl, parse_turn_url

__all__ = ["IceChooser", "TurnProbe", "probe_turn"]

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0
"""Seconds one TURN URL may take to allocate: aioice retransmits its first request after 0.5,
1.5 and 3.5 s, so an answering server on a lossy path still makes it."""

_AUTH_ERRORS = frozenset({401, 403, 431, 441})
"""STUN error codes of refused credentials (RFC 8489 and 8656)."""


@dataclass(frozen=True)
class TurnProbe:
    """The outcome of one allocation attempt."""

    url: str
    ok: bool
    refused: bool = False
    """The server answered and refused the credentials."""
    tls_failed: bool = False
    """``turns:``: the TLS handshake failed (an untrusted or mismatched certificate, or no
    TLS on that port)."""
    reason: str = ""


class _Sink(asyncio.DatagramProtocol):
    """Receives nothing: the probe only allocates."""


async def probe_turn(
    url: TurnUrl,
    username: str | None,
    credential: str | None,
    timeout: float = PROBE_TIMEOUT,  # noqa: ASYNC109 - a bound per URL, named in the result
) -> TurnProbe:
    """Allocate a relay on ``url`` with these credentials and release it at once."""
    transport: Any = None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await turn.create_turn_endpoint(
                _Sink,
                server_addr=(url.host.strip("[]"), url.port),
                username=username,
                password=credential,
                ssl=url.scheme == "turns",
                transport=url.transport,
            )
    except stun.TransactionFailed as exc:
        code = exc.response.attributes.get("ERROR-CODE", (0, ""))[0]
        return TurnProbe(url.url, False, refused=code in _AUTH_ERRORS, reason=str(exc))
    except ssl.SSLError as exc:  # before OSError, its base class
        return TurnProbe(url.url, False, tls_failed=True, reason=f"{type(exc).__name__}: {exc}")
    except (TimeoutError, stun.TransactionTimeout):
        return TurnProbe(url.url, False, reason=f"no answer within {timeout:g} s")
    except (OSError, ValueError, ConnectionError) as exc:
        return TurnProbe(url.url, False, reason=f"{type(exc).__name__}: {exc}")
    finally:
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()  # deletes the allocation in the background
    return TurnProbe(url.url, True)


def _servers(entries: IceServers) -> list[IceServer]:
    return [IceServer(list(e.urls), e.username, e.credential) for e in entries.servers]


class IceChooser:
    """The servers for the next peer connection: explicit ones, or the server's, tried."""

    def __init__(
        self,
        explicit: list[IceServer],
        tasks: TaskOwner,
        notify: Callable[[Notification], None],
        *,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._explicit = explicit
        self._tasks = tasks
        self._notify = notify
        self._probe_timeout = probe_timeout
        self._offered: list[IceServer] = []
        self._chosen: list[IceServer] | None = None
        self._generation = 0
        self.expires_at: float | None = None
        """When the server's credentials expire (Unix seconds), None without any."""
        self.probes: list[TurnProbe] = []
        """What the last check of the server's TURN URLs found, in the order tried."""
        self.checked = asyncio.Event()
        """Set once the server's TURN URLs of the last update have been tried."""

    @property
    def servers(self) -> list[IceServer]:
        """What a peer connection made now uses."""
        if self._explicit:
            return list(self._explicit)
        if self._chosen is not None:
            return list(self._chosen)
        return list(self._offered)  # not tried yet: aiortc takes the first TURN URL

    def update(self, offered: IceServers) -> None:
        """New servers from the signaling server (login reply or ``ICE_SERVERS``)."""
        self._generation += 1
        self._offered = _servers(offered)
        self.expires_at = offered.expires_at
        self._chosen = None
        self.checked.clear()
        if self._explicit or not any(_turn_urls(s) for s in self._offered):
            self._chosen = list(self._offered)
            self.checked.set()
            return
        self._tasks.spawn(self._check(self._generation), name="check TURN servers")

    def clear(self) -> None:
        """Logged out: forget the server's servers."""
        self._generation += 1
        self._offered, self._chosen, self.expires_at = [], None, None
        self.checked.clear()

    async def _check(self, generation: int) -> None:
        probes: list[TurnProbe] = []
        chosen: IceServer | None = None
        for server in self._offered:
            for url in _turn_urls(server):
                probe = await probe_turn(url, server.username, server.credential,
                                         self._probe_timeout)
                probes.append(probe)
                if probe.ok:
                    chosen = IceServer(url.url, server.username, server.credential)
                    break
            if chosen is not None:
                break
        if generation != self._generation:
            return  # superseded by newer credentials or a logout
        self.probes = probes
        stun_servers = [IceServer(u, None, None) for s in self._offered for u in _stun_urls(s)]
        if chosen is not None:
            logger.info("TURN server %s allocated; relay candidates come from it", chosen.urls)
            self._chosen = [*stun_servers, chosen]
        else:
            refused = [p for p in probes if p.refused]
            untrusted = [p for p in probes if p.tls_failed]
            if refused:
                # The server answers: its STUN side still gives server-reflexive candidates.
                self._chosen = stun_servers
                message = (
                    f"TURN server {refused[0].url} refused the credentials ({refused[0].reason});"
                    " the signaling server's --turn-secret must equal coturn's "
                    "static-auth-secret. Calls use direct paths only."
                )
                code = ErrorCode.TURN_AUTH_FAILED
            elif untrusted:
                # The server answers TCP: its STUN side stays, as for refused credentials.
                self._chosen = stun_servers
                message = (
                    f"TLS to TURN server {untrusted[0].url} failed ({untrusted[0].reason}); "
                    "give coturn a certificate for that host name from a CA this machine "
                    "trusts, or point SSL_CERT_FILE at the CA file that signed it. "
                    "Calls use direct paths only."
                )
                code = ErrorCode.TURN_TLS_FAILED
            else:
                # Unreachable: so is the STUN side of those hosts, which would only delay
                # gathering by 5 s; a STUN server elsewhere is kept.
                dead = {f"{u.host}:{u.port}" for s in self._offered for u in _turn_urls(s)}
                self._chosen = [
                    stun for stun in stun_servers
                    if str(stun.urls).split(":", 1)[-1].split("?", 1)[0] not in dead
                ]
                message = (
                    "no TURN server answered ("
                    + "; ".join(f"{p.url}: {p.reason}" for p in probes)
                    + "); open the TURN ports (3478 UDP/TCP, 5349 TCP) or check --turn. "
                    "Calls use direct paths only."
                )
                code = ErrorCode.TURN_UNREACHABLE
            logger.warning("%s", message)
            self._notify(Error(int(code), message))
        self.checked.set()


def _parsed_urls(server: IceServer) -> list[str]:
    return [server.urls] if isinstance(server.urls, str) else list(server.urls)


def _turn_urls(server: IceServer) -> list[TurnUrl]:
    urls = []
    for url in _parsed_urls(server):
        if url.startswith(("turn:", "turns:")):
            try:
                urls.append(parse_turn_url(url))
            except ValueError as exc:
                logger.warning("ignoring an ICE server URL: %s", exc)
    return urls


def _stun_urls(server: IceServer) -> list[str]:
    return [u for u in _parsed_urls(server) if u.startswith(("stun:", "stuns:"))]

