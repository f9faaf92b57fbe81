"""``python -m callclient.apps.desktop``: the desktop app (the same as ``callclient app``)."""

from __future__ import annotations

import sys

from callclient.apps.desktop.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
