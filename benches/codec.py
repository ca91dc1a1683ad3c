"""Codec benchmark: SQNR, stored bits per element, encode/decode MB/s vs a scalar baseline.

Usage: ``python benches/codec.py [--n N] [--head-dim D] [--threads T] [--json]`` (the same as
``nexusquant bench``).
"""

import sys

from nexusquant.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
