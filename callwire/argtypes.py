"""argparse value types shared by the command-line programs (callclient, signaling-server).

Each raises :class:`argparse.ArgumentTypeError` with a sentence naming the bad value, so a bad
flag ends with argparse's usage message and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import re

__all__ = [
    "LOG_LEVELS", "non_negative_int", "port", "positive_float", "positive_int", "websocket_urls",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""The ``--log-level`` choices."""


def _int(text: str, what: str = "an integer") -> int:
    # int() alone also takes " 80\n", "8_0" and non-ASCII digits; only plain digits are meant.
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return int(text)


def positive_int(text: str) -> int:
    """An integer > 0."""
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: any free port)."""
    value = _int(text, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0..65535)")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def websocket_urls(text: str) -> tuple[str, ...]:
    """One ``ws://`` or ``wss://`` URL, or several separated by commas (a cluster's nodes)."""
    urls = tuple(part.strip() for part in text.split(",") if part.strip())
    if not urls:
        raise argparse.ArgumentTypeError(f"{text!r} names no server URL")
    for url in urls:
        if not url.startswith(("ws://", "wss://")):
            raise argparse.ArgumentTypeError(
                f"server URL must start with ws:// or wss://: {url!r}"
            )
    return urls
