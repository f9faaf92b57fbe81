"""One exception tree for the client and one table of error codes for the whole system.

Codes below zero are TUICallDefine's error codes (``ERROR_PARAM_INVALID`` is -1202 and so on)
or TRTC's device error codes; 70001..70009 are the REST API's codes, reused where the meaning
is the same (a bad or expired userSig); 4000..4999 are this project's protocol codes.
"""

from __future__ import annotations

import enum

__all__ = [
    "CallError",
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


class ErrorCode(enum.IntEnum):
    """Every numeric error code the system uses; see docs/protocol.md for each meaning."""

    # TUICallDefine
    PERMISSION_DENIED = -1101
    INIT_FAIL = -1201  # not logged in
    PARAM_INVALID = -1202
    REQUEST_REFUSED = -1203  # the current state does not allow this
    REQUEST_REPEATED = -1204
    SCENE_NOT_SUPPORTED = -1205
    SIGNALING_SEND_FAIL = -1406
    # TRTC device errors
    CAMERA_START_FAIL = -1301
    MIC_START_FAIL = -1302
    CAMERA_STOPPED = -1316
    SPEAKER_START_FAIL = -1321
    # REST API codes, also used at login
    REST_INVALID_PARAMETERS = 70001
    USER_SIG_INVALID = 70002
    USER_SIG_EXPIRED = 70003
    NOT_ADMINISTRATOR = 70004
    RATE_LIMITED = 70005
    BODY_UNPARSEABLE = 70009
    # protocol
    MALFORMED_FRAME = 4000
    UNKNOWN_TYPE = 4001
    FRAME_TOO_LARGE = 4002
    TOO_MANY_MESSAGES = 4003
    UNSUPPORTED_VERSION = 4004
    CALL_NOT_FOUND = 4040
    USER_OFFLINE = 4041
    CALL_FULL = 4090
    INTERNAL = 4500
    SERVER_SHUTTING_DOWN = 4503


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
    ErrorCode.REQUEST_REPEATED: RequestRepeatedError,
    ErrorCode.PERMISSION_DENIED: PermissionDeniedError,
    ErrorCode.USER_SIG_INVALID: UserSigError,
    ErrorCode.USER_SIG_EXPIRED: UserSigError,
    ErrorCode.SIGNALING_SEND_FAIL: ConnectionClosedError,
}


def error_for_code(code: int, message: str) -> CallError:
    """The exception of the right class for an error reply from the server."""
    return _BY_CODE.get(code, CallError)(message, code)
