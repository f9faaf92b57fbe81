"""TURN URLs and coturn's shared-secret credentials (callwire.turn)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from callwire.turn import ice_servers, parse_turn_url, turn_credentials


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "transport"),
    [
        ("turn:turn.example.com", "turn", "turn.example.com", 3478, "udp"),
        ("turn:198.18.0.1:3479?transport=tcp", "turn", "198.18.0.1", 3479, "tcp"),
        ("turns:turn.example.com", "turns", "turn.example.com", 5349, "tcp"),
        ("turn:[2001:db8::1]:3478?transport=udp", "turn", "[2001:db8::1]", 3478, "udp"),
    ],
)
def test_turn_urls_parse(url: str, scheme: str, host: str, port: int, transport: str) -> None:
    """Default ports and transports follow RFC 7065."""
    parsed = parse_turn_url(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.transport) == (
        scheme, host, port, transport
    )


@pytest.mark.parametrize(
    "url",
    ["stun:x.example", "turn:", "turn:host:0", "turn:host:99999", "turns:h?transport=udp",
     "turn:host?transport=sctp", "http://host"],
)
def test_bad_turn_urls_say_what_is_accepted(url: str) -> None:
    with pytest.raises(ValueError, match="turn"):
        parse_turn_url(url)


def test_credentials_are_coturns_rest_scheme() -> None:
    """Username "expiry:user", password base64(HMAC-SHA1(secret, username)) (RFC 2104 by
    the standard library, the scheme coturn's use-auth-secret checks)."""
    username, credential = turn_credentials("s3cret", "alice", 1_800_000_000)
    assert username == "1800000000:alice"
    mac = hmac.new(b"s3cret", b"1800000000:alice", hashlib.sha1).digest()
    assert base64.b64decode(credential) == mac
    assert turn_credentials("s3cret", "bob", 1_800_000_000)[1] != credential
    assert turn_credentials("other", "alice", 1_800_000_000)[1] != credential


def test_ice_servers_lists_stun_then_turn_in_order() -> None:
    urls = (parse_turn_url("turn:a.example:3478"),
            parse_turn_url("turn:a.example:3478?transport=tcp"),
            parse_turn_url("turns:a.example:5349"))
    servers = ice_servers(urls, "k", "alice", 100)
    assert servers[0] == {"urls": ["stun:a.example:3478"]}
    assert servers[1]["urls"] == [u.url for u in urls]
    assert servers[1]["username"] == "100:alice"
    only_tcp = ice_servers(urls[1:2], "k", "alice", 100)
    assert len(only_tcp) == 1 and "username" in only_tcp[0]
