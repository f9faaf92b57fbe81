"""The desktop app's call phase from the engine's call status and role."""

from __future__ import annotations

import pytest

from callclient.apps.desktop.phase import Phase, phase_of
from callclient.types import CallRole, CallStatus
from tests.helpers.desktop import FakeCall


@pytest.mark.parametrize(
    ("call", "dialing", "phase"),
    [
        (None, False, Phase.IDLE),
        (None, True, Phase.CALLING),
        (FakeCall(CallStatus.NONE, CallRole.CALLER), False, Phase.IDLE),
        (FakeCall(CallStatus.WAITING, CallRole.CALLER), False, Phase.CALLING),
        (FakeCall(CallStatus.WAITING, CallRole.CALLED, caller="carol"), False, Phase.INCOMING),
        (FakeCall(CallStatus.ACCEPT, CallRole.CALLER), False, Phase.CONNECTED),
        (FakeCall(CallStatus.ACCEPT, CallRole.CALLED), True, Phase.CONNECTED),
    ],
)
def test_phase_of_call_status(call: FakeCall | None, dialing: bool, phase: Phase) -> None:
    """Status and role decide the phase; a pending dial only counts while there is no call."""
    assert phase_of(call, dialing=dialing) is phase
