"""Optional dependencies: import one, or fail with the extra that installs it.

A feature that needs a package the plain install leaves out calls :func:`require`; when the
package is missing it raises :class:`MissingExtraError`, whose message names the feature and
the ``pip install 'callclient[EXTRA]'`` that brings it. The extras themselves are declared in
``pyproject.toml`` (``[project.optional-dependencies]``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from callwire.version import DISTRIBUTION

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """A feature needs an optional package that is not installed."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs {module}, which is not installed; install the {extra!r} "
            f"extra: pip install '{DISTRIBUTION}[{extra}]'",
            name=module,
        )
        self.feature = feature
        self.module = module
        self.extra = extra


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module``; :class:`MissingExtraError` naming ``extra`` if it (or a package
    it needs) is not installed. Other import failures (a broken library) propagate."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtraError(feature, module, extra) from exc
