"""``python -m launch.results RESULTS_DIR``: re-render a run's results table and pass@1-vs-step plot.

The views live in :mod:`evals.results`; this is the command users type (README, ``docs/evaluation.md``).
"""

from __future__ import annotations

import sys

from evals.results import main

if __name__ == "__main__":
    sys.exit(main())
