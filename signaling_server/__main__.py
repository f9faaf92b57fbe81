"""``python -m signaling_server``: the ``signaling-server`` command."""

from __future__ import annotations

import sys

from signaling_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
