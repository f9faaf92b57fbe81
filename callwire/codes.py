"""Every numeric code of the system: error codes in replies and events, websocket close codes.

Error codes below zero are TUICallDefine's (``ERROR_PARAM_INVALID`` is -1202 and so on) or
TRTC's device error codes; 70001..70009 are the REST API's codes, reused where the meaning is
the same (a bad or expired userSig); 10010..10021 are the group codes of the Chat service's
group REST API, which the group REST API uses; 4000..4999 are this project's protocol codes.
Close codes 4000..4999 are the range RFC 6455 leaves to applications. ``docs/protocol.md``
gives each meaning.
"""

from __future__ import annotations

import enum

__all__ = ["FINAL_CLOSE_CODES", "CloseCode", "ErrorCode"]

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
    # Client-side ICE server checks (callclient.ice), reported through on_error
    TURN_AUTH_FAILED = -1330  # the TURN server refused the credentials the server handed out
    TURN_UNREACHABLE = -1331  # no TURN URL answered
    MEDIA_CONNECT_FAIL = -1332  # ICE found no working path to a member
    TURN_TLS_FAILED = -1333  # TLS to a turns: URL failed: its certificate is not trusted
    # REST API codes, also used at login
    REST_INVALID_PARAMETERS = 70001
    USER_SIG_INVALID = 70002
    USER_SIG_EXPIRED = 70003
    NOT_ADMINISTRATOR = 70004
    RATE_LIMITED = 70005
    BODY_UNPARSEABLE = 70009
    # REST API group codes, those of the Chat service's group API
    GROUP_NOT_FOUND = 10010
    GROUP_FULL = 10014
    GROUP_ID_USED = 10021
    # protocol
    MALFORMED_FRAME = 4000
    UNKNOWN_TYPE = 4001
    FRAME_TOO_LARGE = 4002
    TOO_MANY_MESSAGES = 4003
    UNSUPPORTED_VERSION = 4004
    CALL_NOT_FOUND = 4040
    USER_OFFLINE = 4041
    CALL_FULL = 4090
    CALL_MEMBER_LIMIT = 4091  # the call has had MAX_CALL_MEMBERS distinct users
    SERVER_BUSY = 4290  # too many record queries waiting; retry after the replies
    INVITE_RATE_LIMITED = 4291  # the user invites faster than CoreConfig.invite_rate_per_s
    INTERNAL = 4500
    SERVER_SHUTTING_DOWN = 4503
    SFU_UNAVAILABLE = 4504
    CLUSTER_UNAVAILABLE = 4505
    """The cluster's coordination service (Redis) or its call owner is unreachable; retry in a
    moment (the client's login and reconnect do, going to the next server URL)."""
    STORE_UNAVAILABLE = 4506  # the record database is unreachable: new calls are refused


class CloseCode(enum.IntEnum):
    """Why the server closed a websocket (``ws.close_code``)."""

    GOING_AWAY = 1001
    """The server is shutting down; reconnect later."""
    POLICY_VIOLATION = 1008
    """Too many invalid frames."""
    SERVICE_RESTART = 1012
    """Cluster mode: the node's call owner changed, the node lost its coordination service,
    or the node is stopping; reconnect at once, to any node (the client does, without its
    backoff) and log in again."""
    KICKED = 4001
    """The same user logged in elsewhere."""
    SIG_EXPIRED = 4003
    """The userSig expired."""
    RATE_LIMITED = 4008
    """The connection sent frames faster than allowed."""
    LOGIN_TIMEOUT = 4010
    """The connection did not log in within the server's login deadline (10 s by default)."""
    TOO_MANY_CONNECTIONS = 4029
    """The server already holds as many connections as it allows from this address, or in
    all; the reason says which. Retry later."""


FINAL_CLOSE_CODES: frozenset[int] = frozenset({CloseCode.KICKED, CloseCode.SIG_EXPIRED})
"""Close codes after which logging in again with the same credentials would be wrong."""
