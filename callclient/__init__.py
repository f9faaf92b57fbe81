"""callclient: an asyncio WebRTC call client with a TUICallEngine-style API."""

from __future__ import annotations

from callclient.errors import *  # noqa: F403
from callclient.errors import __all__ as _errors_all
from callclient.types import *  # noqa: F403
from callclient.types import __all__ as _types_all
from callwire.version import __version__

__all__ = [*_types_all, *_errors_all, "__version__"]
