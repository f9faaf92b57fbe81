"""Offline call push: an invitation to a user with no connection, POSTed to the push endpoint.

The call core hands out an :class:`~signaling_server.core.OfflinePush` for every invitee that
rings while not connected (unless the inviter's ``offlinePushInfo.isDisablePush`` is set). The
server maps it with :func:`push_row` and stores it with the call's record, for a
:class:`~signaling_server.webhooks.WebhookService` running the :data:`PUSHES` channel: the
same durable outbox, retries and per-call order as the call-event webhooks, with its own
endpoint (``/v1/push/...`` in the REST API, :func:`push_commands`), so a slow push backend
never delays the webhooks nor the other way round. The business backend delivers the push
through APNs, FCM or a phone vendor's service; ``docs/webhooks.md`` "Offline call push"
describes the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from callwire.protocol import PUSH_INFO_DEFAULTS
from signaling_server.core import OfflinePush
from signaling_server.http_api import Body, invalid
from signaling_server.records import OutboxRow
from signaling_server.webhooks import (
    CallbackConfig,
    CallbackConfigError,
    Channel,
    WebhookService,
)

__all__ = ["COMMAND", "PUSHES", "push_commands", "push_request", "push_row"]

PUSHES: Final = Channel("push", "push_config", filtered=False)
"""Offline pushes: outbox rows of kind ``push``, endpoint in ``push_config``."""

COMMAND: Final = "offline_push"
"""The ``command`` query parameter of every push request."""

RestHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def push_request(push: OfflinePush) -> tuple[dict[str, str], dict[str, Any]]:
    """``(query, body)`` of the push request for ``push``; see docs/webhooks.md."""
    query = {
        "sdkappid": str(push.call.sdk_app_id),
        "command": COMMAND,
        "contenttype": "json",
    }
    body = {
        "UserId": push.user_id,
        "CallId": push.call.call_id,
        "EventTime": int(push.event_time),
        "ExpireTs": int(push.expires_at),
        "OfflinePushInfo": {**PUSH_INFO_DEFAULTS, **push.push_info},
        "Invitation": push.invitation,
    }
    return query, body


def push_row(service: WebhookService, push: OfflinePush) -> OutboxRow | None:
    """The outbox row of ``push`` on ``service`` (a :data:`PUSHES` service), or None when no
    push endpoint is configured; the server stores it with the call's record."""
    query, body = push_request(push)
    return service.outbox_row(push.call.sdk_app_id, push.call.call_id, COMMAND, COMMAND, query,
                              body, expires_at=push.expires_at)


def _wire(config: CallbackConfig) -> dict[str, Any]:
    return {"url": config.url, "createdTs": int(config.created_ts),
            "updatedTs": int(config.updated_ts)}


def push_commands(service: WebhookService) -> dict[str, RestHandler]:
    """The REST commands of the push endpoint's configuration (``push/...``)."""

    async def create(data: dict[str, Any]) -> dict[str, Any]:
        url = Body(data, ("url",)).string("url", required=True, max_len=2048)
        try:
            return _wire(await service.create_config(url, []))
        except CallbackConfigError as exc:
            raise invalid(str(exc)) from None

    async def get(data: dict[str, Any]) -> dict[str, Any]:
        Body(data, ())
        config = await service.get_config()
        if config is None:
            return {}
        return {**_wire(config), "delivery": await service.delivery_stats()}

    async def update(data: dict[str, Any]) -> dict[str, Any]:
        url = Body(data, ("url",)).string("url", required=True, max_len=2048)
        try:
            return _wire(await service.update_config(url))
        except CallbackConfigError as exc:
            raise invalid(str(exc)) from None

    async def delete(data: dict[str, Any]) -> dict[str, Any]:
        Body(data, ())
        return {"deleted": await service.delete_config()}

    return {
        "push/create_config": create,
        "push/get_config": get,
        "push/update_config": update,
        "push/delete_config": delete,
    }
