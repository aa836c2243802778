"""A deterministic stand-in for training: no model, each fold's score is a known smooth function
of `lr` and `dropout` plus fold-specific noise, reported per epoch.

`simulate` drives a searcher through Tune's Searcher API in-process (tests, benchmarks/search.py);
`standin_fold` has `run_fold`'s signature and runs inside real Ray Tune trials, with real
checkpoints of a tiny state, so that searches, resumes and placement are tested end to end in
seconds.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from raycity.checkpoint import ARCH
from raycity.constants import NUM_CLASSES
from raycity.foldsession import FoldSession
from raycity.seeds import derive_seed

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


def search_outcome(method: str, budget: int, seed: int, folds: int = 3) -> tuple[float, list]:
    """A whole search at `budget` configurations × `folds` folds, told through raycity's
    FoldFanOut one configuration at a time: the true score of the configuration it recommends
    (the best fold mean) and what the searcher was told."""
    from raycity.tune.searcher import FoldFanOut, plan_search
    from raycity.tune.space import parse_space

    plan, _ = plan_search(parse_space({**SPACE, "seed": seed}), method, budget, max_concurrent=1)
    fan = FoldFanOut(plan.inner, list(range(1, folds + 1)), metric="miou_full",
                     configurations=plan.configurations, max_concurrent=1)
    simulate(fan, epochs=3, seed=seed)
    best = max((t for t in fan.told if not t["error"]), key=lambda t: t["mean"])
    return true_score(best["values"]["lr"], best["values"]["dropout"]), fan.told


LOG = "RAYCITY_STANDIN_LOG"  # if set: a file where every executed epoch is appended
FAIL = "RAYCITY_STANDIN_FAIL"  # "c2:2": that configuration's fold 2 diverges (a user error)
EPOCH_S = "RAYCITY_STANDIN_EPOCH_S"  # seconds each epoch takes (default 0.5)


def standin_fold(cfg, split, root, report, *, checkpoints=None, sync_epochs=(), cpus=1,
                 device=None, **kwargs) -> None:
    """`run_fold` for the stand-in: resumes from its checkpoints, writes one every epoch."""
    values = {"lr": cfg.lr, "dropout": cfg.dropout}
    session = FoldSession(checkpoints, cfg.epochs, sync_epochs)  # the protocol run_fold follows
    if (last := session.finished()) is not None:
        report(last, None)
        return
    state = session.resume()
    for metrics in session.replay(state):
        report(metrics, None)
    for epoch in range((state["epoch"] + 1) if state else 1, cfg.epochs + 1):
        time.sleep(float(os.environ.get(EPOCH_S, "0.5")))
        who = f"{(checkpoints.labels if checkpoints else {}).get('config_id')}:{split.fold}"
        if os.environ.get(FAIL) == who:
            from raycity.engine import NonFiniteLossError

            raise NonFiniteLossError(f"fold {split.fold}, epoch {epoch}: training loss is nan")
        score = fold_score(values, split.fold, epoch, cfg.epochs, cfg.seed)
        metrics = {"fold": split.fold, "repeat": split.repeat, "epoch": epoch, "lr": cfg.lr,
                   "train_loss": 1 - score,
                   "val_loss": 1 - score, "miou_low": score, "miou_full": score,
                   "epoch_seconds": 0.5, "device": str(device)}
        if os.environ.get(LOG):
            with open(os.environ[LOG], "a") as f:
                f.write(json.dumps({**values, "fold": split.fold, "epoch": epoch,
                                    "time": time.time()}) + "\n")
        meta = {"arch": ARCH, "num_classes": NUM_CLASSES, "fold": split.fold, "epoch": epoch,
                "config": cfg.to_dict(), "metrics": {"fold": split.fold, "epoch": epoch,
                                                     "miou_low": score, "miou_full": score}}
        weights = {"score": torch.tensor([score])}
        saved = session.end_epoch(epoch, metrics, weights.copy,
                                  {"model": weights, "epoch": epoch, "meta": meta}.copy, meta,
                                  sync=True)  # a tiny state: written before it is reported
        report(metrics, saved)
