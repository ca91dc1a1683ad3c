"""``python -m nexusquant``: the ``nexusquant`` command (see :mod:`nexusquant.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
