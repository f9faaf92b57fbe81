"""CallCore hands out time-limited TURN credentials at login and renews them (ICE_SERVERS)."""

from __future__ import annotations

from callwire.messages import parse_ice_servers
from callwire.turn import parse_turn_url, turn_credentials
from signaling_server.core import CoreConfig
from tests.helpers.core import CoreHarness

URLS = (parse_turn_url("turn:198.18.0.1:3478"), parse_turn_url("turn:198.18.0.1?transport=tcp"))


def _harness(ttl: int = 600) -> CoreHarness:
    # No login deadline: these tests keep a logged-out connection open for minutes.
    return CoreHarness(
        CoreConfig(turn_urls=URLS, turn_secret="sekrit", turn_ttl_s=ttl, login_timeout_s=None)
    )


def test_no_turn_configured_no_ice_servers() -> None:
    """Nothing configured (make demo): the login reply has no iceServers at all."""
    h = CoreHarness()
    reply = h.login("alice")
    assert "iceServers" not in reply and "iceServersExpireAt" not in reply
    h.advance(80_000)
    assert "ICE_SERVERS" not in h.names("alice")


def test_login_reply_has_stun_and_turn_for_this_user() -> None:
    h = _harness()
    reply = h.login("alice")
    expires = reply["iceServersExpireAt"]
    assert expires == int(h.now) + 600
    parsed = parse_ice_servers(reply)
    assert parsed.expires_at == expires
    stun, relay = parsed.servers
    assert stun.urls == ("stun:198.18.0.1:3478",) and stun.username is None
    assert relay.urls == tuple(u.url for u in URLS)
    assert (relay.username, relay.credential) == turn_credentials("sekrit", "alice", expires)


def test_fresh_credentials_pushed_when_a_quarter_is_left() -> None:
    """ICE_SERVERS comes once per renewal, at 3/4 of the lifetime, each valid ttl again."""
    h = _harness(ttl=400)
    first = h.login("alice")["iceServersExpireAt"]
    h.advance(299)
    assert "ICE_SERVERS" not in h.names("alice")
    h.advance(2)
    events = [data for name, data in h.events("alice") if name == "ICE_SERVERS"]
    assert len(events) == 1
    renewed = parse_ice_servers(events[0], "ICE_SERVERS")
    assert renewed.expires_at is not None and renewed.expires_at > first
    assert renewed.servers[1].username == f"{int(renewed.expires_at)}:alice"
    h.advance(300)  # the renewed ones reach their own three quarters
    assert [n for n in h.names("alice") if n == "ICE_SERVERS"] == ["ICE_SERVERS"]


def test_no_renewal_after_logout_nor_a_double_one_after_relogin() -> None:
    h = _harness(ttl=400)
    conn = h.open()
    h.login("alice", conn=conn)
    h.request(conn, "logout")
    h.advance(350)
    assert "ICE_SERVERS" not in h.names(conn)
    h.login("alice", conn=conn)  # a new login: one timer, for its own credentials
    h.advance(301)
    assert [n for n in h.names(conn) if n == "ICE_SERVERS"] == ["ICE_SERVERS"]
    h.disconnect(conn)
    h.advance(1000)  # a closed connection's timer does nothing
