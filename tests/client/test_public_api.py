"""The public surface: everything the README shows comes from ``callclient`` itself."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import callclient
from callclient import observer
from callclient.observer import CALLBACK_NAMES, NOTIFICATION_TYPES, CallObserver

ROOT = Path(__file__).resolve().parents[2]


def test_every_exported_name_resolves_and_is_documented() -> None:
    """Each name in ``callclient.__all__`` loads and has a docstring (or is a constant)."""
    for name in callclient.__all__:
        value = getattr(callclient, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, f"callclient.{name} has no docstring"


def test_readme_example_imports_only_from_callclient() -> None:
    """The README's "Using the client" code imports nothing but ``callclient``."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using the client", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    imports = [line.strip() for line in code.splitlines()
               if line.strip().startswith(("import ", "from "))]
    assert imports, "the README example has no imports"
    for line in imports:
        module = line.split()[1]
        assert module in ("asyncio", "callclient"), line
    compile(code, "README.md", "exec")
    names = [n.strip() for line in imports if line.startswith("from callclient import")
             for n in line.split("import", 1)[1].split(",")]
    assert all(hasattr(callclient, n) for n in names), names


def test_importing_the_package_loads_no_media_library() -> None:
    """``import callclient`` stays light: the engine and media load on first use."""
    code = "import sys, callclient; print(','.join(m for m in ('aiortc', 'cv2', 'av') " \
           "if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=True)
    assert result.stdout.strip() == ""


def test_one_notification_per_callback_with_the_same_arguments() -> None:
    """Every CallObserver callback has a Notification whose fields are its parameters."""
    assert [n.callback for n in NOTIFICATION_TYPES] == list(CALLBACK_NAMES)
    for kind in NOTIFICATION_TYPES:
        params = list(inspect.signature(getattr(CallObserver, kind.callback)).parameters)[1:]
        fields = [f.name for f in dataclasses.fields(kind)]
        assert fields == params, kind.__name__
        assert kind.__name__ in observer.__all__


def test_recorders_see_every_callback_as_one_event() -> None:
    """An EventRecorder turns each delivered notification into one CallEvent, in order."""
    seen: list[observer.CallEvent] = []

    class Keep(observer.EventRecorder):
        def record(self, event: observer.CallEvent) -> None:
            seen.append(event)

    keep = Keep()
    observer.UserJoin("carol").deliver(keep)
    observer.UserVoiceVolumeChanged({"a": 3}).deliver(keep)
    assert seen == [observer.CallEvent("on_user_join", ("carol",)),
                    observer.CallEvent("on_user_voice_volume_changed", ({"a": 3},))]


def test_every_reference_type_is_exported() -> None:
    """The reference's types, CallIOSOfflinePushType included, come from ``callclient``."""
    for name in ("CallIOSOfflinePushType", "OfflinePushInfo", "UserInfo", "GroupCallInfo",
                 "DeviceList", "CameraInfo", "AudioDeviceInfo"):
        assert name in callclient.__all__, name
    assert callclient.CallIOSOfflinePushType.APNS == 0
    assert callclient.CallIOSOfflinePushType.VOIP == 1
    fields = [f.name for f in dataclasses.fields(callclient.OfflinePushInfo)]
    assert fields == [
        "title", "desc", "ignore_ios_badge", "ios_sound", "android_sound",
        "android_oppo_channel_id", "android_vivo_classification", "android_xiaomi_channel_id",
        "android_fcm_channel_id", "android_huawei_category", "is_disable_push", "ios_push_type",
    ]


def test_every_callback_names_its_web_event() -> None:
    """Each callback maps to one TUICallEvent name, the reference's where it has one."""
    assert set(observer.WEB_EVENTS) == set(CALLBACK_NAMES)
    assert observer.WEB_EVENTS["on_user_voice_volume_changed"] == "USER_VOICE_VOLUME"
    assert observer.WEB_EVENTS["on_devices_updated"] == "DEVICED_UPDATED"
    assert observer.WEB_EVENTS["on_call_end"] == "CALLING_END"
    assert len(set(observer.WEB_EVENTS.values())) == len(CALLBACK_NAMES)
    assert observer.CallEvent("on_user_join", ("x",)).web_event == "USER_ENTER"
