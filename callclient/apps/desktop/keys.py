"""The key table: key codes from ``cv2.waitKey`` to the app's commands; pure.

:class:`Command` names what a key asks for, :class:`Binding` ties keys to one command with
a description, :class:`KeyBindings` looks a key code up and writes the help lines.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_BINDINGS", "Binding", "Command", "KeyBindings"]


class Command(enum.StrEnum):
    """What a key asks the app to do (the controller runs each one)."""

    ACCEPT = "accept"
    REJECT = "reject"
    HANGUP = "hangup"
    DIAL = "dial"
    JOIN = "join"
    MICROPHONE = "microphone"
    NOISE_SUPPRESSION = "noise_suppression"
    CAMERA = "camera"
    SWITCH_CAMERA = "switch_camera"
    ROUTE = "route"
    FILL_MODE = "fill_mode"
    ROTATE = "rotate"
    SELECT = "select"
    MEDIA_TYPE = "media_type"
    HELP = "help"
    QUIT = "quit"


_KEY_NAMES = {"\t": "Tab"}
"""How keys without a visible character are written in the help."""


@dataclass(frozen=True)
class Binding:
    """One row of the table: the keys that trigger it, its command, a description."""

    keys: str
    """The characters that trigger it (the first is shown in the help)."""
    command: Command
    description: str
    codes: tuple[int, ...] = ()
    """Extra key codes (Esc) besides the characters."""

    @property
    def label(self) -> str:
        """The key as the help writes it (``Tab`` for a tab)."""
        return _KEY_NAMES.get(self.keys[0], self.keys[0])


DEFAULT_BINDINGS = (
    Binding("a", Command.ACCEPT, "accept the incoming call"),
    Binding("r", Command.REJECT, "reject the incoming call"),
    Binding("h", Command.HANGUP, "hang up / cancel"),
    Binding("d", Command.DIAL, "call the --call/--group users (again)"),
    Binding("j", Command.JOIN, "join the --group-id group's call in progress"),
    Binding("m", Command.MICROPHONE, "microphone on/off"),
    Binding("n", Command.NOISE_SUPPRESSION, "noise suppression on/off"),
    Binding("c", Command.CAMERA, "camera on/off"),
    Binding("s", Command.SWITCH_CAMERA, "switch front/back camera"),
    Binding("p", Command.ROUTE, "speakerphone/earpiece"),
    Binding("f", Command.FILL_MODE, "fill/fit the selected tile"),
    Binding("o", Command.ROTATE, "rotate the selected tile by 90 deg"),
    Binding("\t", Command.SELECT, "select the next tile (Tab)"),
    Binding("v", Command.MEDIA_TYPE, "switch the call audio/video"),
    Binding("?", Command.HELP, "show/hide this help"),
    Binding("q", Command.QUIT, "hang up and quit (also Esc)", codes=(27,)),
)
"""The app's keys, in the order the help lists them."""


class KeyBindings:
    """The key table: key codes (``cv2.waitKey``) to bindings."""

    def __init__(self, bindings: Sequence[Binding] = DEFAULT_BINDINGS) -> None:
        self.bindings = tuple(bindings)
        self._by_code: dict[int, Binding] = {}
        for binding in self.bindings:
            for code in (*(ord(k) for k in binding.keys), *binding.codes):
                if code in self._by_code:
                    raise ValueError(f"key {code} is bound twice")
                self._by_code[code] = binding

    def lookup(self, code: int) -> Binding | None:
        """The binding of a key code (upper-case letters count as lower-case), or None."""
        if code < 0:
            return None
        code &= 0xFF
        binding = self._by_code.get(code)
        if binding is None and ord("A") <= code <= ord("Z"):
            binding = self._by_code.get(code + 32)
        return binding

    def help_lines(self) -> tuple[str, ...]:
        """One line per binding, for the help overlay."""
        return tuple(f"{b.label:>4}   {b.description}" for b in self.bindings)

    def summary(self) -> str:
        """All bindings on one line (the command line's epilog)."""
        return "; ".join(f"{b.label} {b.description}" for b in self.bindings)
