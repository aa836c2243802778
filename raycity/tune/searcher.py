"""Search over configurations judged on all folds: one suggestion, K fold trials, one answer.

`FoldFanOut` wraps any Tune searcher (Optuna's TPE, or a fixed list for random and grid search).
Each configuration the inner searcher proposes becomes K trials with identical values, one per
fold; the inner searcher hears back once per configuration — when all K folds have finished or
been stopped together — with the fold mean (and std), never one fold's score. Each fold counts
with its value at its best epoch (by val `miou_low`), the number the leaderboard ranks by.

Tune's `Repeater` does half of this: it reports the mean without the std, keeps its groups as
objects that do not survive a restore, and cannot bound configurations in flight. Here the
state is plain data (`get_state` / `set_state`, saved in Tune's experiment snapshots), so a
resumed sweep neither loses, repeats nor re-proposes a configuration.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from raycity.errors import brief
from raycity.results import BEST_BY, mean_std
from raycity.tune.recorder import write_told
from raycity.tune.trainable import USER_ERROR

TOLD = "fold_mean"  # the metric name the inner searcher optimises


@dataclass
class SearchPlan:
    """How a sweep proposes configurations: `inner` proposes values, `configurations` of them;
    `max_concurrent` configurations in flight (None: enough to keep every trial slot busy)."""

    method: str
    inner: Searcher
    configurations: int
    max_concurrent: int | None = None
    seed: int = 0
    log_scaled: list[str] = field(default_factory=list)  # fields sampled on a log scale
    # what rebuilds this plan on a resume that finds no Tune state (stopped before it had any)
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int | None = None


def config_name(number: int, total: int) -> str:
    """c1…cN, zero-padded to N's width, so that the names sort in proposal order."""
    return f"c{number:0{len(str(total))}d}"


def plan_search(space: Any, method: str | None = None, num_samples: int | None = None,
                max_concurrent: int | None = None) -> tuple[SearchPlan, list[dict[str, Any]]]:
    """A space → how it is searched, and (random, grid) the configurations up front.

    random: `num_samples` draws per grid point, made now with the space's seed; grid: listed
    values as they are, drawn domains cut into points (see `space.grid_configurations`); optuna:
    Optuna's TPE (seeded) proposes `num_samples` configurations one at a time, listed grids as
    categorical choices.
    """
    from raycity.tune.space import grid_configurations, optuna_space, sample_configurations

    method = method or space.method
    if method == "optuna":
        import optuna
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-study INFO, not the epochs

        configurations = num_samples or space.num_samples
        # TPE starts with random proposals (10 by default); a sweep of 8 would never get past
        # them. A third of the budget, at least 3 and at most 10, leaves room to learn.
        startup = min(10, max(3, configurations // 3))
        sampler = TPESampler(seed=space.seed, n_startup_trials=startup)
        inner = OptunaSearch(OptunaSearch.convert_search_space(optuna_space(space)), metric=TOLD,
                             mode="max", sampler=sampler)
        return SearchPlan(method, inner, configurations, max_concurrent, space.seed,
                          space.log_scaled, space.raw, num_samples), []
    drawn = grid_configurations(space, num_samples) if method == "grid" else \
        sample_configurations(space, num_samples)
    return SearchPlan(method, ListSearcher(drawn), len(drawn), max_concurrent, space.seed,
                      space.log_scaled, space.raw, num_samples), drawn


def fan_out(plan: SearchPlan, folds: Sequence[int], metric: str) -> FoldFanOut:
    return FoldFanOut(plan.inner, folds, metric=metric, configurations=plan.configurations,
                      max_concurrent=plan.max_concurrent or 1)


class ListSearcher(Searcher):
    """Proposes a fixed list of configurations in order (random draws made up front, or a grid)."""

    def __init__(self, configurations: Sequence[dict[str, Any]]) -> None:
        super().__init__(metric=TOLD, mode="max")
        self.configurations = list(configurations)
        self.next = 0

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.next >= len(self.configurations):
            return Searcher.FINISHED
        self.next += 1
        return dict(self.configurations[self.next - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"configurations": self.configurations, "next": self.next}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class FoldFanOut(Searcher):
    """K fold trials per configuration; the inner searcher is told each configuration's fold
    mean once all its folds are done."""

    def __init__(self, searcher: Searcher, folds: Sequence[int], *, metric: str,
                 configurations: int, max_concurrent: int) -> None:
        super().__init__(metric=metric, mode="max")
        self.searcher = searcher  # the name Tune looks for to save wrapper and base separately
        self.folds = list(folds)
        self.configurations = configurations
        self.max_concurrent = max(1, max_concurrent)
        self.groups: dict[str, dict[str, Any]] = {}  # config_id → values, folds issued, scores…
        self.trials: dict[str, tuple[str, int]] = {}  # trial_id → (config_id, fold)
        self.order: list[str] = []  # config ids, in the order they were proposed
        self.told: list[dict[str, Any]] = []  # what the inner searcher was told, in order

    # -- Tune's searcher API ----------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # metric, mode and space were given to the inner searcher when it was built

    def suggest(self, trial_id: str) -> dict | str | None:
        group = self._open_group()
        if group is None:
            if sum(not g["told"] for g in self.groups.values()) >= self.max_concurrent:
                return None  # enough configurations in flight; Tune asks again later
            if len(self.groups) >= self.configurations:
                return Searcher.FINISHED
            config_id = config_name(len(self.groups) + 1, self.configurations)
            values = self.searcher.suggest(config_id)
            if values is None or values == Searcher.FINISHED:
                return values
            group = self.groups[config_id] = {
                "config_id": config_id, "values": dict(values), "issued": [], "best": {},
                "done": {}, "told": False}
            self.order.append(config_id)
        fold = self.folds[len(group["issued"])]
        group["issued"].append(fold)
        self.trials[trial_id] = (group["config_id"], fold)
        return {"variant": {"config_id": group["config_id"], "overrides": group["values"]},
                "fold": fold}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        group = self._group(trial_id)
        if group is None or "epoch" not in result or USER_ERROR in result:
            return
        fold = int(result["fold"])
        if f"best_{BEST_BY}" in result and f"best_{self.metric}" in result:
            # the fold's own best so far, as its latest training has it: after a fold is
            # retrained, the epochs the leaderboard ranks by — not a better pre-crash epoch
            # whose model no longer exists
            low, score = result[f"best_{BEST_BY}"], result[f"best_{self.metric}"]
            if low is not None and np.isfinite(low):
                group["best"][fold] = (float(low), float(score))
            return
        low, score = result.get(BEST_BY), result.get(self.metric)
        best = group["best"].get(fold)
        if low is not None and np.isfinite(low) and (best is None or low > best[0]):
            group["best"][fold] = (float(low), float(score))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        group = self._group(trial_id)
        if group is None:
            return
        if result:
            self.on_trial_result(trial_id, result)
        fold = self.trials[trial_id][1]
        group["done"][fold] = bool(error or (result or {}).get(USER_ERROR))
        if len(group["done"]) == len(self.folds):
            self._tell(group)

    # -- bookkeeping ------------------------------------------------------------------------------
    def _open_group(self) -> dict[str, Any] | None:
        for config_id in self.order:
            group = self.groups[config_id]
            if len(group["issued"]) < len(self.folds):
                return group
        return None

    def _group(self, trial_id: str) -> dict[str, Any] | None:
        config_id, _ = self.trials.get(trial_id, (None, 0))
        return self.groups.get(config_id) if config_id else None

    def _tell(self, group: dict[str, Any]) -> None:
        """Once per configuration — and once more if it was told that a fold failed and a
        resumed run (which reruns failed folds) has since finished that fold."""
        by_fold = {f: group["best"][f][1] for f in self.folds if f in group["best"]}
        scores = list(by_fold.values())
        failed = any(group["done"].values()) or len(scores) < len(self.folds)
        record = {"config_id": group["config_id"], "values": group["values"],
                  "folds": len(scores), "error": failed,
                  "scores": {str(f): s for f, s in by_fold.items()}}
        if not failed:
            mean, std = mean_std(scores)
            record.update(mean=mean, std=std)
        if group["told"]:
            index = next(i for i, r in enumerate(self.told) if r["config_id"] == group["config_id"])
            if failed or not self.told[index]["error"]:
                return
            try:
                self.searcher.add_evaluated_point(group["values"], record["mean"])
                retold: bool | str = True
            except NotImplementedError:  # a fixed list learns nothing
                retold = True
            except Exception as err:  # best effort: the leaderboard has the mean either way
                retold = f"not accepted by the searcher: {brief(err)}"
            self.told[index] = {**record, "retold": retold}
        else:
            group["told"] = True
            if failed:
                self.searcher.on_trial_complete(group["config_id"], error=True)
            else:
                self.searcher.on_trial_complete(group["config_id"], result={
                    TOLD: record["mean"], f"{TOLD}_std": record["std"], "folds": len(scores)})
            self.told.append(record)
        # Optuna's own distributions (its search space), for the study its dashboard reads
        space = getattr(self.searcher, "_space", None)
        write_told(self.told, space if isinstance(space, dict) else None)

    def get_state(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["searcher"]
        return pickle.loads(pickle.dumps(state))  # plain data: dicts, lists, numbers

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
