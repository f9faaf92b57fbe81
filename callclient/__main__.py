"""``python -m callclient``: the ``callclient`` command."""

from __future__ import annotations

import sys

from callclient.cli import main

if __name__ == "__main__":
    sys.exit(main())
