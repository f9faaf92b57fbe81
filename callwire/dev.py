"""The development credentials: what every program uses when it is given none.

They let ``make demo`` and the tests run with nothing configured. Anyone can mint a userSig
with this key, so a server started with it must only listen on loopback.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEV_SDK_APP_ID", "DEV_SECRET_KEY"]

DEV_SDK_APP_ID: Final = 1400000001
DEV_SECRET_KEY: Final = "callclient-development-secret-key-do-not-use-in-production"
