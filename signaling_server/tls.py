"""TLS for the server's listeners (wss and https), with the certificate reloadable in place.

Browsers grant the camera and microphone only to secure origins (https, or localhost), so a
browser on another machine needs the page and the websocket over TLS: ``--tls-cert`` and
``--tls-key`` (PEM files) give both listeners one :class:`ssl.SSLContext`. A renewed
certificate is picked up by :meth:`ServerTls.reload` (``signaling-server`` calls it on SIGHUP):
the same context loads the files again, so every connection accepted afterwards presents the
new certificate while open connections keep theirs. Files that do not load (a half-written
renewal, a key that does not match) leave the old certificate in use and raise
:class:`TlsError` with the reason.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

__all__ = ["ServerTls", "TlsError", "TlsFiles"]

logger = logging.getLogger(__name__)


class TlsError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM certificate chain and its private key are."""

    cert: str
    key: str


def _new_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _load(context: ssl.SSLContext, files: TlsFiles) -> None:
    for path in (files.cert, files.key):
        if not os.path.isfile(path):
            raise TlsError(f"cannot read {path}: no such file")
        if not os.access(path, os.R_OK):
            raise TlsError(f"cannot read {path}: permission denied")
    try:
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(
            f"cannot use certificate {files.cert} with key {files.key}: {exc}"
        ) from None


class ServerTls:
    """One server-side :class:`ssl.SSLContext` for every listener; see the module docstring."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = _new_context()
        _load(self.context, files)

    def reload(self) -> None:
        """Load the files again for new connections; on failure keep the current ones."""
        _load(_new_context(), self.files)  # check first: a failed load could leave it half-set
        _load(self.context, self.files)
        logger.info("TLS certificate reloaded from %s", self.files.cert)
