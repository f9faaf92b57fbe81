"""A CallEngine in its own process, for tests that kill a participant.

Usage: ``python engine_child.py SERVER_URL SDK_APP_ID USER_ID USER_SIG``. It logs in with virtual
devices, opens its camera, prints ``ready USER_ID`` once logged in, accepts every invitation
(printing ``accepted CALLER``) and runs until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

from callclient.engine import CallEngine
from callclient.media.deviceset import DeviceSet


async def main(url: str, sdk_app_id: int, user_id: str, user_sig: str) -> None:
    """Log in, announce readiness, and accept every call until killed."""
    async with CallEngine(url, devices=DeviceSet.virtual(user_id)) as engine:
        events = engine.events()
        await engine.login(sdk_app_id, user_id, user_sig)
        await engine.open_camera()
        print(f"ready {user_id}", flush=True)
        async for event in events:
            if event.name == "on_call_received":
                await engine.accept()
                print(f"accepted {event.args[0]}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
