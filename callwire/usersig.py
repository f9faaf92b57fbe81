"""userSig in the TLSSigAPIv2 format: generate and verify.

A userSig is a JSON document ``{"TLS.ver": "2.0", "TLS.identifier", "TLS.sdkappid",
"TLS.expire", "TLS.time", "TLS.sig"}`` (plus an optional base64 ``"TLS.userbuf"``),
zlib-compressed, standard base64 encoded, then made URL-safe by replacing ``+`` with ``*``,
``/`` with ``-`` and ``=`` with ``_``. ``TLS.sig`` is the base64 HMAC-SHA256, keyed with the
secret key, of the lines ``TLS.identifier:<id>``, ``TLS.sdkappid:<n>``, ``TLS.time:<t>``,
``TLS.expire:<e>`` (and ``TLS.userbuf:<base64>``), each ending in ``\\n``. Sigs made by
Tencent's public generators verify here and the other way round.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any, Final

from callwire.codes import ErrorCode

__all__ = [
    "DEFAULT_EXPIRE_S",
    "MAX_DECOMPRESSED_BYTES",
    "MAX_USER_SIG_CHARS",
    "UserSigExpired",
    "UserSigInvalid",
    "UserSigRefused",
    "VerifiedSig",
    "generate_user_sig",
    "verify_user_sig",
]

logger = logging.getLogger(__name__)

DEFAULT_EXPIRE_S: Final = 86400 * 180
"""Default validity of a generated userSig: 180 days, as Tencent's generators."""

MAX_USER_SIG_CHARS: Final = 4096
"""Longer userSigs are refused before decoding (a real one is about 200 characters)."""

MAX_DECOMPRESSED_BYTES: Final = 8192
"""A userSig whose JSON inflates beyond this is refused (zip bomb guard)."""

_VERSION: Final = "2.0"
_TO_URL: Final = str.maketrans("+/=", "*-_")
_FROM_URL: Final = str.maketrans("*-_", "+/=")

class UserSigRefused(Exception):
    """A userSig that does not let its bearer in; ``code`` is the reply's error code."""

    code: int = ErrorCode.USER_SIG_INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UserSigInvalid(UserSigRefused):
    """The userSig cannot be decoded, is incomplete, forged, or was issued for someone else."""

    code = ErrorCode.USER_SIG_INVALID


class UserSigExpired(UserSigRefused):
    """The userSig is authentic but its validity period is over."""

    code = ErrorCode.USER_SIG_EXPIRED


@dataclass(frozen=True)
class VerifiedSig:
    """What a valid userSig asserts; ``issued_at`` and ``expire`` are in seconds."""

    user_id: str
    sdk_app_id: int
    issued_at: int
    expire: int
    userbuf: bytes | None = None

    @property
    def expires_at(self) -> int:
        """Unix time after which the sig is expired."""
        return self.issued_at + self.expire


def _content(
    identifier: str, sdk_app_id: int, issued_at: int, expire: int, userbuf_b64: str | None
) -> bytes:
    text = (
        f"TLS.identifier:{identifier}\n"
        f"TLS.sdkappid:{sdk_app_id}\n"
        f"TLS.time:{issued_at}\n"
        f"TLS.expire:{expire}\n"
    )
    if userbuf_b64 is not None:
        text += f"TLS.userbuf:{userbuf_b64}\n"
    return text.encode("utf-8")


def _hmac(secret_key: str, content: bytes) -> bytes:
    return hmac.new(secret_key.encode("utf-8"), content, hashlib.sha256).digest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def generate_user_sig(
    sdk_app_id: int,
    secret_key: str,
    user_id: str,
    expire_s: int = DEFAULT_EXPIRE_S,
    now: float | None = None,
    *,
    userbuf: bytes | None = None,
) -> str:
    """A userSig for ``user_id`` valid ``expire_s`` seconds from ``now`` (default: the clock)."""
    if not _is_int(sdk_app_id) or sdk_app_id < 0:
        raise ValueError(f"sdk_app_id must be a non-negative integer, not {sdk_app_id!r}")
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id must be a non-empty string")
    if not _is_int(expire_s) or expire_s < 0:
        raise ValueError(f"expire_s must be a non-negative integer, not {expire_s!r}")
    issued_at = int(time.time() if now is None else now)
    userbuf_b64 = None if userbuf is None else base64.b64encode(userbuf).decode("ascii")
    digest = _hmac(secret_key, _content(user_id, sdk_app_id, issued_at, expire_s, userbuf_b64))
    doc: dict[str, Any] = {
        "TLS.ver": _VERSION,
        "TLS.identifier": user_id,
        "TLS.sdkappid": sdk_app_id,
        "TLS.expire": expire_s,
        "TLS.time": issued_at,
    }
    if userbuf_b64 is not None:
        doc["TLS.userbuf"] = userbuf_b64
    doc["TLS.sig"] = base64.b64encode(digest).decode("ascii")
    packed = zlib.compress(json.dumps(doc, separators=(",", ":")).encode("utf-8"))
    return base64.b64encode(packed).decode("ascii").translate(_TO_URL)


def _decode(sig: Any) -> dict[str, Any]:
    """The JSON document inside ``sig``, or UserSigInvalid."""
    if not isinstance(sig, str) or not sig:
        raise UserSigInvalid("userSig is empty or not a string; generate one for this user")
    if len(sig) > MAX_USER_SIG_CHARS:
        raise UserSigInvalid(
            f"userSig is {len(sig)} characters long, at most {MAX_USER_SIG_CHARS} are accepted"
        )
    try:
        packed = base64.b64decode(sig.translate(_FROM_URL), validate=True)
    except (binascii.Error, ValueError):
        raise UserSigInvalid(
            "userSig is not URL-safe base64; was it truncated or altered in transit?"
        ) from None
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(packed, MAX_DECOMPRESSED_BYTES + 1)
    except zlib.error:
        raise UserSigInvalid("userSig does not contain zlib data; it is not a userSig") from None
    if len(raw) > MAX_DECOMPRESSED_BYTES:
        raise UserSigInvalid(f"userSig inflates beyond {MAX_DECOMPRESSED_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise UserSigInvalid("userSig's zlib data is truncated or has trailing bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise UserSigInvalid("userSig does not contain a JSON document") from None
    if not isinstance(doc, dict):
        raise UserSigInvalid("userSig's JSON is not an object")
    return doc


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    if name not in doc:
        raise UserSigInvalid(f"userSig has no {name!r} field")
    value = doc[name]
    ok = _is_int(value) and value >= 0 if kind is int else isinstance(value, kind)
    if not ok:
        expected = "a non-negative integer" if kind is int else "a string"
        raise UserSigInvalid(f"userSig field {name!r} must be {expected}, not {value!r:.40}")
    return value


def verify_user_sig(
    sig: str, sdk_app_id: int, secret_key: str, user_id: str, now: float | None = None
) -> VerifiedSig:
    """Check ``sig`` for ``user_id`` on this server; raise UserSigInvalid or UserSigExpired."""
    doc = _decode(sig)
    version = _field(doc, "TLS.ver", str)
    if version != _VERSION:
        raise UserSigInvalid(f"userSig version is {version!r:.20}, only '2.0' is supported")
    identifier: str = _field(doc, "TLS.identifier", str)
    sig_app_id: int = _field(doc, "TLS.sdkappid", int)
    issued_at: int = _field(doc, "TLS.time", int)
    expire: int = _field(doc, "TLS.expire", int)
    signature: str = _field(doc, "TLS.sig", str)
    userbuf: bytes | None = None
    userbuf_b64: str | None = None
    if "TLS.userbuf" in doc:
        text: str = _field(doc, "TLS.userbuf", str)
        try:
            userbuf = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise UserSigInvalid("userSig field 'TLS.userbuf' is not base64") from None
        userbuf_b64 = base64.b64encode(userbuf).decode("ascii")
    if sig_app_id != sdk_app_id:
        raise UserSigInvalid(
            f"userSig was issued for sdkappid {sig_app_id}, this server serves {sdk_app_id}"
        )
    if identifier != user_id:
        raise UserSigInvalid(
            f"userSig was issued for user {identifier!r:.80}, not for {user_id!r:.80}"
        )
    try:
        given = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise UserSigInvalid("userSig field 'TLS.sig' is not base64") from None
    expected = _hmac(secret_key, _content(identifier, sig_app_id, issued_at, expire, userbuf_b64))
    if not hmac.compare_digest(given, expected):
        raise UserSigInvalid(
            f"userSig signature does not match: it was not made with the secret key of "
            f"sdkappid {sdk_app_id}, or it was altered"
        )
    verified = VerifiedSig(identifier, sig_app_id, issued_at, expire, userbuf)
    current = time.time() if now is None else now
    if current > verified.expires_at:
        raise UserSigExpired(
            f"userSig of {identifier!r:.80} expired at unix time {verified.expires_at} "
            f"(issued at {issued_at}, valid {expire} s); generate a new one"
        )
    logger.debug("userSig of %r verified, expires at %d", identifier, verified.expires_at)
    return verified
