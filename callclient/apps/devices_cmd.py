"""``callclient devices [--json]``: list the cameras, microphones and speakers.

Prints a table (or JSON with ``--json``). Exit status 0, or 1 when the audio devices could not
be listed (PortAudio missing); the cameras are listed either way, the reason goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from callclient.media.devices import list_devices
from callclient.types import AudioDeviceInfo, DeviceList

__all__ = ["format_table", "main"]


def format_table(devices: DeviceList) -> str:
    """The device list as a human-readable table (``*`` marks the default audio devices)."""
    lines = ["Cameras:"]
    if devices.cameras:
        lines += [f"  {c.index if c.index is not None else '-':>3}  {c.path:<14} {c.name}"
                  for c in devices.cameras]
    else:
        lines.append("  (none found)")
    for title, entries in (("Microphones", devices.microphones), ("Speakers", devices.speakers)):
        lines.append(f"{title}:")
        if devices.audio_error is not None:
            lines.append("  (unavailable: PortAudio is missing)")
        elif entries:
            lines += [_audio_line(d) for d in entries]
        else:
            lines.append("  (none found)")
    return "\n".join(lines)


def _audio_line(device: AudioDeviceInfo) -> str:
    mark = "*" if device.is_default else " "
    return (f"{mark} {device.index:>3}  {device.name:<32} {device.host_api}, "
            f"{device.channels} ch, {device.default_samplerate:g} Hz")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``callclient devices``; the exit status."""
    parser = argparse.ArgumentParser(
        prog="callclient devices", description="List cameras, microphones and speakers."
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    devices = list_devices()
    if args.json:
        print(json.dumps(devices.to_dict(), indent=2))
    else:
        print(format_table(devices))
    if devices.audio_error is not None:
        print(f"callclient devices: {devices.audio_error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
