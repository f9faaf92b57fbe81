"""userSig generation and verification in the TLSSigAPIv2 format."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callwire.codes import ErrorCode
from callwire.usersig import (
    MAX_USER_SIG_CHARS,
    UserSigExpired,
    UserSigInvalid,
    UserSigRefused,
    VerifiedSig,
    generate_user_sig,
    verify_user_sig,
)

APP = 1400000001
KEY = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"
NOW = 1_700_000_000


def url_encode(raw: bytes) -> str:
    """Standard base64 made URL-safe the TLSSigAPIv2 way, written independently of auth.py."""
    return base64.b64encode(raw).decode().replace("+", "*").replace("/", "-").replace("=", "_")


def pack(doc: Any) -> str:
    """Serialize, compress and encode any JSON document as a userSig would be."""
    return url_encode(zlib.compress(json.dumps(doc).encode()))


def signed_doc(
    identifier: str = "alice",
    sdkappid: int = APP,
    issued: int = NOW,
    expire: int = 3600,
    key: str = KEY,
    userbuf: bytes | None = None,
) -> dict[str, Any]:
    """A correctly signed userSig document built by hand from the published format."""
    content = (
        f"TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\n"
        f"TLS.time:{issued}\nTLS.expire:{expire}\n"
    )
    doc: dict[str, Any] = {
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": issued,
    }
    if userbuf is not None:
        buf64 = base64.b64encode(userbuf).decode()
        content += f"TLS.userbuf:{buf64}\n"
        doc["TLS.userbuf"] = buf64
    digest = hmac.new(key.encode(), content.encode(), hashlib.sha256).digest()
    doc["TLS.sig"] = base64.b64encode(digest).decode()
    return doc


def test_round_trip() -> None:
    """A generated sig verifies and reports who it is for and when it expires."""
    sig = generate_user_sig(APP, KEY, "alice", expire_s=600, now=NOW + 0.7)
    verified = verify_user_sig(sig, APP, KEY, "alice", now=NOW + 10)
    assert verified == VerifiedSig("alice", APP, NOW, 600)
    assert verified.expires_at == NOW + 600


def test_generated_sig_has_the_published_layout() -> None:
    """The sig decodes to exactly the TLSSigAPIv2 document with an HMAC-SHA256 over the lines."""
    sig = generate_user_sig(APP, KEY, "bob", expire_s=86400, now=NOW)
    assert set(sig) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-_")
    raw = base64.b64decode(sig.replace("*", "+").replace("-", "/").replace("_", "="))
    assert json.loads(zlib.decompress(raw)) == signed_doc("bob", expire=86400)


def test_default_expiry_is_180_days() -> None:
    """Without expire_s the sig is valid for 180 days."""
    sig = generate_user_sig(APP, KEY, "alice", now=NOW)
    assert verify_user_sig(sig, APP, KEY, "alice", now=NOW).expire == 86400 * 180


def test_independently_built_vector_verifies() -> None:
    """A sig assembled by hand (JSON, zlib, base64, replacement) is accepted."""
    sig = pack(signed_doc("user_01", expire=7200))
    verified = verify_user_sig(sig, APP, KEY, "user_01", now=NOW + 7200)
    assert (verified.user_id, verified.issued_at, verified.expire) == ("user_01", NOW, 7200)


def test_sig_with_userbuf_verifies() -> None:
    """A sig carrying TLS.userbuf verifies and exposes the buffer; a generated one too."""
    buf = b"\x00\x05alice\xff"
    verified = verify_user_sig(pack(signed_doc(userbuf=buf)), APP, KEY, "alice", now=NOW)
    assert verified.userbuf == buf
    sig = generate_user_sig(APP, KEY, "alice", 60, NOW, userbuf=buf)
    assert verify_user_sig(sig, APP, KEY, "alice", now=NOW).userbuf == buf


def test_userbuf_is_covered_by_the_signature() -> None:
    """Changing TLS.userbuf after signing is refused."""
    doc = signed_doc(userbuf=b"room 1")
    doc["TLS.userbuf"] = base64.b64encode(b"room 2").decode()
    with pytest.raises(UserSigInvalid, match="signature"):
        verify_user_sig(pack(doc), APP, KEY, "alice", now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("TLS.time", NOW + 1),
        ("TLS.expire", 3601),
        ("TLS.sig", base64.b64encode(b"\x00" * 32).decode()),
        ("TLS.ver", "1.0"),
        ("TLS.userbuf", base64.b64encode(b"extra").decode()),
    ],
)
def test_tampered_field_is_invalid(field: str, value: Any) -> None:
    """Changing any field of a valid sig makes it invalid."""
    doc = signed_doc()
    doc[field] = value
    with pytest.raises(UserSigInvalid) as caught:
        verify_user_sig(pack(doc), APP, KEY, "alice", now=NOW)
    assert caught.value.code == ErrorCode.USER_SIG_INVALID
    assert int(caught.value.code) == 70002


def test_tampered_identifier_is_invalid_for_both_users() -> None:
    """A sig whose identifier was rewritten is refused for the new and the original user."""
    doc = signed_doc("alice")
    doc["TLS.identifier"] = "mallory"
    with pytest.raises(UserSigInvalid, match="signature"):
        verify_user_sig(pack(doc), APP, KEY, "mallory", now=NOW)
    with pytest.raises(UserSigInvalid, match="mallory"):
        verify_user_sig(pack(doc), APP, KEY, "alice", now=NOW)


def test_tampered_sdkappid_is_invalid() -> None:
    """A sig whose sdkappid was rewritten to this server's is refused."""
    doc = signed_doc(sdkappid=APP + 1)
    doc["TLS.sdkappid"] = APP
    with pytest.raises(UserSigInvalid, match="signature"):
        verify_user_sig(pack(doc), APP, KEY, "alice", now=NOW)


def test_wrong_secret_key_is_invalid() -> None:
    """A sig made with another key is refused."""
    sig = generate_user_sig(APP, "another key", "alice", 60, NOW)
    with pytest.raises(UserSigInvalid, match="secret key"):
        verify_user_sig(sig, APP, KEY, "alice", now=NOW)


def test_expired() -> None:
    """One second after time + expire the sig is expired, with code 70003; at the limit not."""
    sig = generate_user_sig(APP, KEY, "alice", expire_s=60, now=NOW)
    assert verify_user_sig(sig, APP, KEY, "alice", now=NOW + 60).expires_at == NOW + 60
    with pytest.raises(UserSigExpired) as caught:
        verify_user_sig(sig, APP, KEY, "alice", now=NOW + 61)
    assert caught.value.code == ErrorCode.USER_SIG_EXPIRED
    assert int(caught.value.code) == 70003
    assert str(NOW + 60) in caught.value.message
    assert isinstance(caught.value, UserSigRefused)


def test_expired_forgery_is_invalid_not_expired() -> None:
    """A forged sig is reported invalid even when its times are in the past."""
    doc = signed_doc(expire=1, key="not the key")
    with pytest.raises(UserSigInvalid):
        verify_user_sig(pack(doc), APP, KEY, "alice", now=NOW + 100)


def test_wrong_sdkappid_message_names_both_ids() -> None:
    """A sig for another application is invalid and says which one it was for."""
    sig = generate_user_sig(1400000001, KEY, "alice", 60, NOW)
    with pytest.raises(UserSigInvalid) as caught:
        verify_user_sig(sig, 1400000002, KEY, "alice", now=NOW)
    assert caught.value.message == (
        "userSig was issued for sdkappid 1400000001, this server serves 1400000002"
    )


def test_wrong_user_is_invalid() -> None:
    """A sig of alice cannot log in bob."""
    sig = generate_user_sig(APP, KEY, "alice", 60, NOW)
    with pytest.raises(UserSigInvalid, match=r"'alice'.*'bob'"):
        verify_user_sig(sig, APP, KEY, "bob", now=NOW)


@pytest.mark.parametrize(
    "field", ["TLS.ver", "TLS.identifier", "TLS.sdkappid", "TLS.time", "TLS.expire", "TLS.sig"]
)
def test_missing_field_is_invalid(field: str) -> None:
    """Every field of the document is required."""
    doc = signed_doc()
    del doc[field]
    with pytest.raises(UserSigInvalid, match=field):
        verify_user_sig(pack(doc), APP, KEY, "alice", now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("TLS.sdkappid", str(APP)),
        ("TLS.sdkappid", True),
        ("TLS.time", float(NOW)),
        ("TLS.time", -1),
        ("TLS.expire", "3600"),
        ("TLS.identifier", 7),
        ("TLS.sig", None),
        ("TLS.sig", "not base64!"),
        ("TLS.userbuf", "not base64!"),
        ("TLS.userbuf", 12),
    ],
)
def test_wrong_field_type_is_invalid(field: str, value: Any) -> None:
    """Fields of the wrong JSON type are refused, never coerced."""
    doc = signed_doc()
    doc[field] = value
    with pytest.raises(UserSigInvalid):
        verify_user_sig(pack(doc), APP, KEY, "alice", now=NOW)


@pytest.mark.parametrize(
    "sig",
    [
        "",
        "not base64 at all!",
        "eJ",  # bad padding
        "éèà",
        url_encode(b"definitely not zlib data"),
        url_encode(zlib.compress(b"{not json")),
        url_encode(zlib.compress(b"\xff\xfe\x00")),
        url_encode(zlib.compress(b'["a list"]')),
        url_encode(zlib.compress(b"[" * 5000)),
        url_encode(zlib.compress(json.dumps(signed_doc()).encode())[:-6]),  # truncated
        url_encode(zlib.compress(json.dumps(signed_doc()).encode()) + b"xx"),  # trailing
        "A" * (MAX_USER_SIG_CHARS + 4),
    ],
)
def test_garbage_is_invalid(sig: str) -> None:
    """Undecodable input is UserSigInvalid, never another exception."""
    with pytest.raises(UserSigInvalid):
        verify_user_sig(sig, APP, KEY, "alice", now=NOW)


def test_non_string_is_invalid() -> None:
    """A sig that is not a string at all is refused as invalid."""
    with pytest.raises(UserSigInvalid):
        verify_user_sig(None, APP, KEY, "alice", now=NOW)  # type: ignore[arg-type]


def test_zip_bomb_is_refused() -> None:
    """A short sig inflating to a megabyte of valid JSON is refused without inflating it all."""
    payload = b" " * 1_000_000 + json.dumps(signed_doc()).encode()
    sig = url_encode(zlib.compress(payload, 9))
    assert len(sig) < MAX_USER_SIG_CHARS
    with pytest.raises(UserSigInvalid, match="inflates"):
        verify_user_sig(sig, APP, KEY, "alice", now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_user_sig_error(sig: str) -> None:
    """Any text is either a valid sig or raises a UserSigRefused."""
    with pytest.raises(UserSigRefused):
        verify_user_sig(sig, APP, KEY, "alice", now=NOW)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                *("TLS.ver", "TLS.identifier", "TLS.sdkappid", "TLS.time", "TLS.expire"),
                *("TLS.sig", "TLS.userbuf", "other"),
            ]
        ),
        _json,
    )
)
def test_arbitrary_documents_only_raise_user_sig_error(doc: dict[str, Any]) -> None:
    """Well-packed documents with arbitrary field values raise nothing but UserSigRefused."""
    with pytest.raises(UserSigRefused):
        verify_user_sig(pack(doc), APP, KEY, "alice", now=NOW)
