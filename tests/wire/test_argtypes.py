"""The command-line value types validate the whole string."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callwire import argtypes


@given(
    number=st.integers(min_value=1, max_value=65535),
    affix=st.sampled_from(["\n", " ", "\t", "_0", "\u0660", "x"]),
    where=st.sampled_from(["suffix", "prefix"]),
)
def test_integer_flags_refuse_anything_around_the_digits(
    number: int, affix: str, where: str
) -> None:
    """``int()`` takes " 80\\n", "8_0" and Arabic-Indic digits; a flag value does not."""
    text = f"{number}{affix}" if where == "suffix" else f"{affix}{number}"
    for parse in (argtypes.positive_int, argtypes.non_negative_int, argtypes.port):
        with pytest.raises(argparse.ArgumentTypeError, match="is not"):
            parse(text)
    assert argtypes.positive_int(str(number)) == number
    assert argtypes.port(str(number)) == number


def test_websocket_urls_take_one_or_several_comma_separated() -> None:
    """``--server``: one ws:// or wss:// URL or several (a cluster's nodes); each is checked."""
    assert argtypes.websocket_urls("ws://a:1") == ("ws://a:1",)
    assert argtypes.websocket_urls(" ws://a:1, wss://b:2 ,") == ("ws://a:1", "wss://b:2")
    with pytest.raises(argparse.ArgumentTypeError, match="ws:// or wss://: 'http://b'"):
        argtypes.websocket_urls("ws://a:1,http://b")
    with pytest.raises(argparse.ArgumentTypeError, match="names no server URL"):
        argtypes.websocket_urls(" , ")
