"""Does the search learn? Random, grid and Optuna's TPE at equal budgets on a stand-in whose
truth is known: each fold's score is a smooth function of lr and dropout plus fold-specific noise
(tests/standins.py), every configuration trained on 3 folds, each searcher told the fold means
through raycity's FoldFanOut exactly as in a sweep (one configuration at a time).

For each budget and method it reports the true (noise-free) score of the configuration the
search recommends — the one with the best fold mean — averaged over seeds, and how often TPE's
recommendation beats random search's. The optimum is 0.700.

    python benchmarks/search.py [--budgets 6 12 18 24] [--seeds 8]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine, table  # noqa: E402

from tests.standins import search_outcome  # noqa: E402

METHODS = ("random", "grid", "optuna")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budgets", type=int, nargs="+", default=[6, 12, 18, 24])
    p.add_argument("--seeds", type=int, default=8)
    args = p.parse_args()
    logging.getLogger("ray").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    for budget in args.budgets:
        scores = {m: [search_outcome(m, budget, s)[0] for s in range(args.seeds)]
                  for m in METHODS}
        wins = sum(o > r for o, r in zip(scores["optuna"], scores["random"]))
        rows.append([budget, *(f"{np.mean(scores[m]):.3f} ± {np.std(scores[m]):.3f}"
                               for m in METHODS), f"{wins}/{args.seeds}"])
        print(rows[-1], flush=True)
    print(f"\n## Search: true score of the recommended configuration (optimum 0.700), mean ± std "
          f"over {args.seeds} seeds, 3 folds each\n")
    print(table(["configurations", *METHODS, "TPE beats random"], rows))
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
