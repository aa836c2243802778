"""Early stopping that respects cross-validation: ASHA over configurations, not over trials.

Plain ASHA judges each trial alone, so one fold of a configuration can be stopped while its
siblings go on, and a configuration can be cut on the strength of one lucky or unlucky fold. Here
the unit is a configuration's K folds: a fold that reaches a rung pauses (Tune keeps its last
checkpoint and frees its resources) until its siblings get there; then the fold mean is judged
against the other configurations' fold means at that rung, and all K folds resume or stop
together.

Its state (pending rungs, rung records, stopped configurations, paused folds) survives a driver
restart through `get_state` / `set_state` (Tune restores searchers and callbacks, not
schedulers; `recorder.SchedulerState` carries it).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def config_of(trial: Any) -> tuple[str, int]:
    return trial.config["variant"]["config_id"], int(trial.config["fold"])


class FoldMeanASHA(FIFOScheduler):
    """Successive halving on fold means, asynchronous across configurations, synchronous within.

    Rungs lie at `grace_period × reduction_factor^i` epochs below `max_t`. When the K-th fold of a
    configuration reports a rung, the fold mean joins the rung's record and the configuration goes
    on if the mean is within the top 1/reduction_factor of that record (ASHA's cutoff).
    """

    def __init__(self, metric: str, mode: str = "max", *, folds: int, max_t: int,
                 grace_period: int = 1, reduction_factor: float = 3, time_attr: str = "epoch"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self._metric, self._mode = metric, mode
        self.folds, self.time_attr, self.rf = folds, time_attr, reduction_factor
        self.rungs: list[int] = []
        t = grace_period
        while t < max_t:
            self.rungs.append(int(t))
            t = int(round(t * reduction_factor))
        self.pending: dict[int, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        self.record: dict[int, dict[str, float]] = defaultdict(dict)
        self.stopped: dict[str, int] = {}  # config_id → rung at which it was stopped
        self.waiting: dict[str, tuple[str, int]] = {}  # paused trial_id → (config_id, rung)
        self.failed: dict[str, str] = {}  # trial_id → config_id of folds that failed for good

    def get_state(self) -> dict[str, Any]:
        return {"pending": {r: {c: dict(f) for c, f in cs.items()} for r, cs in self.pending.items()},
                "record": {r: dict(cs) for r, cs in self.record.items()},
                "stopped": dict(self.stopped), "waiting": dict(self.waiting),
                "failed": dict(self.failed)}

    def set_state(self, state: dict[str, Any]) -> None:
        for rung, configs in state["pending"].items():
            for config_id, folds in configs.items():
                self.pending[int(rung)][config_id].update(folds)
        for rung, configs in state["record"].items():
            self.record[int(rung)].update(configs)
        self.stopped.update(state["stopped"])
        self.waiting.update({t: (c, int(r)) for t, (c, r) in state["waiting"].items()})
        self.failed.update(state["failed"])

    def broken(self, config_id: str) -> bool:
        """A configuration with a fold that failed for good can never complete a rung."""
        return config_id in self.failed.values()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        config_id, fold = config_of(trial)
        if config_id in self.stopped:
            return TrialScheduler.STOP
        if self._metric not in result or self.time_attr not in result:
            return TrialScheduler.CONTINUE
        rung = int(result[self.time_attr])
        if rung not in self.rungs or config_id in self.record[rung]:
            return TrialScheduler.CONTINUE  # e.g. a retried fold reporting a decided rung again
        self.pending[rung][config_id][fold] = float(result[self._metric])
        if self.broken(config_id):
            # it cannot complete the rung now; kept for a --resume that reruns the failed fold
            return TrialScheduler.CONTINUE
        if len(self.pending[rung][config_id]) < self.folds:
            self.waiting[trial.trial_id] = (config_id, rung)
            return TrialScheduler.PAUSE  # wait for the siblings: never judged on fewer folds
        self._decide(rung, config_id)
        if config_id in self.stopped:
            self._stop_siblings(tune_controller, trial, config_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _decide(self, rung: int, config_id: str) -> None:
        mean = float(np.mean(list(self.pending[rung][config_id].values())))
        score = mean if self._mode == "max" else -mean
        self.record[rung][config_id] = score
        cutoff = np.nanpercentile(list(self.record[rung].values()), (1 - 1 / self.rf) * 100)
        if score < cutoff:
            self.stopped[config_id] = rung

    def _stop_siblings(self, tune_controller: Any, trial: Any, config_id: str) -> None:
        for other in tune_controller.get_trials():
            if other is not trial and config_of(other)[0] == config_id and \
                    other.status in (Trial.PAUSED, Trial.PENDING, Trial.RUNNING):
                self.waiting.pop(other.trial_id, None)
                tune_controller.stop_trial(other)

    def _released(self, trial: Any) -> bool:
        wait = self.waiting.get(trial.trial_id)
        if wait is None:
            return True
        config_id, rung = wait
        return self.broken(config_id) or config_id in self.record[rung]

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        # After a resume, Tune brings paused folds back as PENDING — and starts every PENDING
        # trial: those still waiting for their siblings are paused again, and folds of a
        # configuration stopped meanwhile are stopped now.
        for trial in list(tune_controller.get_trials()):
            if trial.status in (Trial.PENDING, Trial.PAUSED) and \
                    config_of(trial)[0] in self.stopped:
                self.waiting.pop(trial.trial_id, None)
                tune_controller.stop_trial(trial)
            elif trial.status == Trial.PENDING and not self._released(trial):
                tune_controller._set_trial_status(trial, Trial.PAUSED)
        for status in (Trial.PENDING, Trial.PAUSED):
            for trial in tune_controller.get_trials():
                if trial.status == status and self._released(trial):
                    self.waiting.pop(trial.trial_id, None)
                    return trial
        return None

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        # Tune calls this for a failure it will retry too; `on_trial_add` follows at once then.
        self.failed[trial.trial_id] = config_of(trial)[0]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.failed.pop(trial.trial_id, None)  # requeued for a retry: it may still finish

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.waiting.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return f"FoldMeanASHA: rungs {self.rungs}, stopped {self.stopped}"
