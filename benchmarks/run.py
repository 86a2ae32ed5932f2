"""Run the benchmark suite: ``python benchmarks/run.py [--shapes tiny,small,orpheus-3b] [--device cuda]``.

The suite itself is ``pipecat_localtts.benchmark`` (also ``pipecat-localtts bench``), so an
installed package can run it too. Results go to ``benchmarks/results/`` by default:
``results.json`` (every figure, with the machine) and ``results.png`` (the plots).
"""

import sys

from pipecat_localtts.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
