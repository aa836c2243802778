"""A deterministic stand-in for training, for judging searches: no model, each fold's score is a
known smooth function of `lr` and `dropout` plus fold-specific noise, reported per epoch.

Used by the search tests and by `benchmarks/search.py`; `simulate` drives a searcher through
Tune's Searcher API in-process, one trial after another, as Tune would with one trial slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from raycity.data.dataset import derive_seed

SPACE = {"params": {"lr": {"loguniform": [1.0e-6, 1.0e-1]}, "dropout": {"uniform": [0.0, 0.5]}}}
NOISE = 0.02  # std of a fold's deviation from the true score (folds really do differ)


def true_score(lr: float, dropout: float) -> float:
    """The noise-free quality of a configuration, 0…0.7: a bump at lr 3e-4 (0.7 decades wide)
    and dropout 0.15 (0.12 wide) — narrow enough in five decades of lr that where a search looks
    matters."""
    return 0.7 * math.exp(-0.5 * ((math.log10(lr) + 3.5) / 0.7) ** 2
                          - 0.5 * ((dropout - 0.15) / 0.12) ** 2)


def fold_score(values: dict[str, float], fold: int, epoch: int, epochs: int, seed: int) -> float:
    """What fold `fold` reports at `epoch`: the true score reached along a learning curve, plus
    a deviation fixed per (configuration, fold, seed)."""
    key = [round(values["lr"] * 1e9), round(values["dropout"] * 1e6), fold, seed]
    deviation = np.random.default_rng(derive_seed(*key)).normal(0, NOISE)
    progress = 1 - math.exp(-3 * epoch / epochs)
    return progress * true_score(values["lr"], values["dropout"]) + deviation


def results(values: dict[str, float], fold: int, epochs: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for epoch in range(1, epochs + 1):
        score = fold_score(values, fold, epoch, epochs, seed)
        rows.append({"fold": fold, "epoch": epoch, "miou_low": score, "miou_full": score})
    return rows


def simulate(searcher: Any, epochs: int = 3, seed: int = 0,
             on_result: Callable[[str, dict], None] | None = None) -> None:
    """Runs `searcher` (a FoldFanOut) to the end: each suggested fold trial reports its epochs
    and completes before the next is asked for."""
    from ray.tune.search import Searcher

    n = 0
    while True:
        trial_id = f"t{n:04d}"
        n += 1
        config = searcher.suggest(trial_id)
        if config == Searcher.FINISHED:
            return
        assert config is not None, "a sequential search must always have something to run"
        values, fold = config["variant"]["overrides"], config["fold"]
        rows = results(values, fold, epochs, seed)
        for row in rows:
            searcher.on_trial_result(trial_id, row)
            if on_result:
                on_result(config["variant"]["config_id"], row)
        searcher.on_trial_complete(trial_id, rows[-1])
