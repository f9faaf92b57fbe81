"""The files the programs ship with: the desktop app's call-progress tones.

``ringtone.wav`` (an incoming call rings) and ``ringback.wav`` (the caller hears it until the
call connects) are package data of this package, so a wheel or sdist install carries them and
nothing at run time depends on the source tree or the working directory. They are read through
:mod:`importlib.resources`; :func:`asset_path` gives a real file for APIs that open a path
(PyAV, OpenCV), extracted for the life of the process when the package is not a plain directory
(a zip import). ``scripts/make-tones`` regenerates them (:mod:`callclient.media.tones`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from importlib import resources
from pathlib import Path

__all__ = ["RINGBACK", "RINGTONE", "asset_names", "asset_path"]

RINGTONE = "ringtone.wav"
"""What an incoming call rings with."""
RINGBACK = "ringback.wav"
"""What the caller hears while the call rings."""

_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def asset_names() -> list[str]:
    """The names of the files this package ships (its data, not its modules)."""
    return sorted(
        entry.name
        for entry in resources.files(__name__).iterdir()
        if entry.is_file() and not entry.name.endswith((".py", ".pyc"))
    )


@functools.cache
def asset_path(name: str) -> Path:
    """A filesystem path of the shipped file ``name``, valid until the process exits.

    Raises :class:`FileNotFoundError` naming the files there are when ``name`` is not one.
    """
    resource = resources.files(__name__).joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(
            f"callclient ships no file {name!r} (it ships {', '.join(asset_names())})"
        )
    return _extracted.enter_context(resources.as_file(resource))
