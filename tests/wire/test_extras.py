"""Optional dependencies: a missing one fails with the extra that installs it, and every extra
the code names is declared in the package metadata with the package it needs."""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bench import stack
from callwire.extras import MissingExtraError, require
from callwire.version import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[2]


def _extra_packages(extra: str) -> set[str]:
    """The packages the installed distribution's ``extra`` brings (from its metadata)."""
    found = set()
    for line in importlib.metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
            found.add(requirement.name)
    return found


def test_require_returns_an_installed_module() -> None:
    """A present module is imported and returned."""
    assert require("json", extra="bench", feature="a feature") is json


def test_missing_module_names_the_feature_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing module raises MissingExtraError (an ImportError) whose message says what
    needs it and the pip command that installs it."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(MissingExtraError) as caught:
        require("matplotlib", extra="bench", feature="the latency plot")
    assert isinstance(caught.value, ImportError) and caught.value.name == "matplotlib"
    assert str(caught.value) == (
        "the latency plot needs matplotlib, which is not installed; install the 'bench' "
        "extra: pip install 'callclient[bench]'"
    )


def test_bench_stack_without_matplotlib_says_which_extra_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench.stack checks for its plotting library first: exit 2, one line naming the extra."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert stack.main(["--quick"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("bench.stack: error: the latency plot of bench.stack needs ")
    assert "pip install 'callclient[bench]'" in captured.err


def test_every_extra_the_code_names_is_declared_with_its_package() -> None:
    """Each ``require(MODULE, extra=EXTRA)`` in the sources names an extra of the metadata
    that brings MODULE's package."""
    calls = re.compile(r'require\("([\w.]+)", extra="(\w+)"')
    named = {
        (module.split(".")[0], extra)
        for folder in ("callwire", "callclient", "signaling_server", "bench")
        for path in (ROOT / folder).rglob("*.py")
        for module, extra in calls.findall(path.read_text())
    }
    assert ("matplotlib", "bench") in named
    for package, extra in sorted(named):
        assert package in _extra_packages(extra), (package, extra)
