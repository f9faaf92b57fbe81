"""The client's exception tree: one root, a subclass per cause, each with its error code.

The codes themselves (:class:`~callwire.codes.ErrorCode`) are part of the wire contract and
live in :mod:`callwire.codes`; they are re-exported here for applications.
"""

from __future__ import annotations

from callwire.codes import ErrorCode

__all__ = [
    "CallError",
    "ClusterUnavailableError",
    "ConnectionClosedError",
    "DeviceError",
    "ErrorCode",
    "InvalidParameterError",
    "NotLoggedInError",
    "PermissionDeniedError",
    "ProtocolError",
    "RequestRefusedError",
    "RequestRepeatedError",
    "UserSigError",
    "error_for_code",
]


class CallError(Exception):
    """Root of every error the client raises; carries a numeric ``code``."""

    code: int = ErrorCode.INTERNAL

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = int(code)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class ProtocolError(CallError):
    """A frame that is not valid protocol: bad JSON, unknown type, missing or wrong fields."""

    code = ErrorCode.PARAM_INVALID


class InvalidParameterError(ProtocolError):
    """An argument has a wrong type or value (ERROR_PARAM_INVALID)."""

    code = ErrorCode.PARAM_INVALID


class NotLoggedInError(CallError):
    """The operation needs a logged-in engine (ERROR_INIT_FAIL)."""

    code = ErrorCode.INIT_FAIL


class RequestRefusedError(CallError):
    """The current call state does not allow the operation (ERROR_REQUEST_REFUSED)."""

    code = ErrorCode.REQUEST_REFUSED


class RequestRepeatedError(CallError):
    """The operation is already done or in progress (ERROR_REQUEST_REPEATED)."""

    code = ErrorCode.REQUEST_REPEATED


class PermissionDeniedError(CallError):
    """The user may not act on this call (ERROR_PERMISSION_DENIED)."""

    code = ErrorCode.PERMISSION_DENIED


class UserSigError(CallError):
    """The userSig is invalid or expired."""

    code = ErrorCode.USER_SIG_INVALID


class DeviceError(CallError):
    """A camera, microphone or speaker could not be opened or stopped delivering."""

    code = ErrorCode.CAMERA_START_FAIL


class ConnectionClosedError(CallError):
    """The signaling connection is closed; the request may not have reached the server."""

    code = ErrorCode.SIGNALING_SEND_FAIL


class ClusterUnavailableError(CallError):
    """The server's cluster cannot serve right now (its Redis or its call owner is
    unreachable): retryable. Login tries the other server URLs and retries within its
    timeout; a reconnect keeps retrying with backoff."""

    code = ErrorCode.CLUSTER_UNAVAILABLE


_BY_CODE: dict[int, type[CallError]] = {
    ErrorCode.PARAM_INVALID: InvalidParameterError,
    ErrorCode.MALFORMED_FRAME: ProtocolError,
    ErrorCode.UNKNOWN_TYPE: ProtocolError,
    ErrorCode.FRAME_TOO_LARGE: ProtocolError,
    ErrorCode.UNSUPPORTED_VERSION: ProtocolError,
    ErrorCode.INIT_FAIL: NotLoggedInError,
    ErrorCode.REQUEST_REFUSED: RequestRefusedError,
    ErrorCode.CALL_NOT_FOUND: RequestRefusedError,
    ErrorCode.CALL_FULL: RequestRefusedError,
    ErrorCode.CALL_MEMBER_LIMIT: RequestRefusedError,
    ErrorCode.INVITE_RATE_LIMITED: RequestRefusedError,
    ErrorCode.SERVER_BUSY: RequestRefusedError,
    ErrorCode.REQUEST_REPEATED: RequestRepeatedError,
    ErrorCode.PERMISSION_DENIED: PermissionDeniedError,
    ErrorCode.USER_SIG_INVALID: UserSigError,
    ErrorCode.USER_SIG_EXPIRED: UserSigError,
    ErrorCode.SIGNALING_SEND_FAIL: ConnectionClosedError,
    ErrorCode.CLUSTER_UNAVAILABLE: ClusterUnavailableError,
}


def error_for_code(code: int, message: str) -> CallError:
    """The exception of the right class for an error reply from the server."""
    return _BY_CODE.get(code, CallError)(message, code)
