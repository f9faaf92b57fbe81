"""Where the desktop app finds its default sound files.

The one place that knows where the bundled assets live, so switching to
``importlib.resources`` touches this function only.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["asset"]


def asset(name: str) -> Path:
    """The bundled asset ``name`` (``ringtone.wav``, ``ringback.wav``) in the repository's
    ``assets`` folder."""
    return Path(__file__).resolve().parents[3] / "assets" / name
