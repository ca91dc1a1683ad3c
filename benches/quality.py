"""Quality benchmark: compressed KV caches against the exact DynamicCache on SmolLM2-135M-Instruct.

Prints perplexity delta, KL(exact || compressed), top-1 agreement, measured cache bytes and the
ratio against fp16, passkey retrieval and CPU decode speed; the protocol is documented in
``nexusquant.eval.harness``. Run from the project root::

    python benches/quality.py --quick                      # smoke run (minutes)
    python benches/quality.py --json bench-results/q.json  # full protocol (long on a small CPU)
"""

import sys

from nexusquant.eval.harness import main

if __name__ == "__main__":
    sys.exit(main())
