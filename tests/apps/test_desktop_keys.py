"""The desktop app's key table: codes to commands, case, Esc, help lines, no double binding."""

from __future__ import annotations

import pytest

from callclient.apps.desktop.keys import DEFAULT_BINDINGS, Binding, Command, KeyBindings


def test_key_table() -> None:
    """Every key of the table maps to its command; letters ignore case; unknown keys do not."""
    bindings = KeyBindings()
    expected = {"h": Command.HANGUP, "a": Command.ACCEPT, "r": Command.REJECT,
                "m": Command.MICROPHONE, "c": Command.CAMERA, "s": Command.SWITCH_CAMERA,
                "p": Command.ROUTE, "f": Command.FILL_MODE, "o": Command.ROTATE,
                "v": Command.MEDIA_TYPE, "?": Command.HELP, "q": Command.QUIT,
                "d": Command.DIAL, "\t": Command.SELECT}
    for key, command in expected.items():
        binding = bindings.lookup(ord(key))
        assert binding is not None and binding.command is command
    assert {b.command for b in DEFAULT_BINDINGS} == set(Command)
    assert bindings.lookup(ord("M")) == bindings.lookup(ord("m"))
    assert bindings.lookup(27) == bindings.lookup(ord("q"))
    assert bindings.lookup(ord("z")) is None and bindings.lookup(-1) is None
    # waitKey may report modifier bits above the low byte.
    assert bindings.lookup(0x100000 | ord("h")) == bindings.lookup(ord("h"))


def test_help_lines_name_every_key() -> None:
    """One help line per binding, Tab written as a word; the summary lists them all."""
    bindings = KeyBindings()
    lines = bindings.help_lines()
    assert len(lines) == len(DEFAULT_BINDINGS)
    assert lines[0].split() == ["a", "accept", "the", "incoming", "call"]
    assert any(line.strip().startswith("Tab ") for line in lines)
    assert not any("\t" in line for line in lines)
    summary = bindings.summary()
    assert "h hang up / cancel" in summary and "Tab select the next tile" in summary
    assert summary.count(";") == len(DEFAULT_BINDINGS) - 1


def test_a_key_bound_twice_is_refused() -> None:
    """Two bindings for one key code (here Esc) are a ValueError naming the code."""
    with pytest.raises(ValueError, match="key 27 is bound twice"):
        KeyBindings([Binding("q", Command.QUIT, "quit", codes=(27,)),
                     Binding("\x1b", Command.HELP, "help")])
