"""The release version of the distribution (callwire, callclient and signaling_server ship
together), written here and nowhere else.

``pyproject.toml`` reads it for the package metadata (setuptools' dynamic version),
``callclient --version`` and ``signaling-server --version`` print it, the server reports it in
the login reply (``serverVersion``, docs/protocol.md) and both programs put it in their
websocket handshake (``User-Agent`` / ``Server`` headers).
"""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "__version__", "product_token"]

__version__ = "0.1.0"

DISTRIBUTION = "callclient"
"""The name the three packages are installed under (``pip install callclient``)."""


def product_token(program: str) -> str:
    """``program/version``, as HTTP ``User-Agent`` and ``Server`` headers name software."""
    return f"{program}/{__version__}"
