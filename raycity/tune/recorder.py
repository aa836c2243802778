"""Driver-side: Tune callbacks that keep `results/<name>/` current as trials report.

A resumed experiment gets its callbacks back from Tune's pickle, made when the run started —
possibly in another directory, if the run was since moved or copied. So the recorder pickles
nothing and binds, when Tune sets it up, to the run this driver is recording now
(`recording(...)`), and every path it writes comes from that run. That binding is a context
variable, set for the span of the `with` and restored after it: with a local or HOST:PORT Ray,
Tune runs its callbacks and searcher in the thread that called `fit()`, inside that span.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any

from ray import tune

from raycity.errors import brief, failure_message
from raycity.foldfiles import STATE_DIR
from raycity.foldsession import NOTICE, REPLAYED
from raycity.foldstates import FoldCheckpoints
from raycity.results import (
    atomic_write_text,
    epochs_frame,
)
from raycity.run import RunDir, RunState
from raycity.runtables import epoch_row, hp_column, load_epochs, load_status, write_tables
from raycity.tracking import Tracker
from raycity.tune.driver import StopSignals
from raycity.tune.trainable import USER_ERROR

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Recording:
    run_dir: Path
    state: RunState
    echo: Callable[[str], None]
    stop: StopSignals | None = None
    keep_states: bool = False  # --keep-trial-checkpoints
    tracker: Tracker | None = None  # MLflow, when asked


# A CV run's curves follow it at most this often, the first time this long after the driver
# starts: a redraw costs the driver 0.5–1 s of CPU (matplotlib; measured on 2 cores), which every
# epoch of a short run took from its trials, and a run that ends sooner draws them in its report
# anyway (one stopped part-way, at its end). A real epoch takes minutes: it is drawn at once.
LIVE_FIGURES_S = 30.0

CURRENT: contextvars.ContextVar[Recording | None] = contextvars.ContextVar("recording",
                                                                          default=None)


@contextlib.contextmanager
def recording(run_dir: Path, state: RunState, echo: Callable[[str], None],
              stop: StopSignals | None = None, keep_states: bool = False,
              tracker: Tracker | None = None) -> Iterator[None]:
    """The run that recorders in this driver write to while Tune runs."""
    token = CURRENT.set(Recording(run_dir, state, echo, stop, keep_states, tracker))
    try:
        yield
    finally:
        CURRENT.reset(token)


def trial_key(trial: Any) -> tuple[str, int]:
    return trial.config["variant"]["config_id"], int(trial.config["fold"])


def write_told(told: list[dict], distributions: dict[str, Any] | None = None) -> None:
    """searcher.json: what a sweep's searcher was told, configuration by configuration, in order
    (the figure's best-so-far curve, and the check that it heard the fold means); for Optuna's
    search (`distributions`), the same as a study in optuna.journal, for its dashboard."""
    if (current := CURRENT.get()) is None:
        return
    files = RunDir(current.run_dir)
    atomic_write_text(files.searcher, json.dumps(told, indent=1))
    if distributions:
        from raycity.tune.study import write_study

        try:
            write_study(files.study, told, distributions, current.state.metric)
        except OSError as err:  # a view of searcher.json: never worth a run
            current.echo(f"{files.study}: not written ({brief(err)})")


class RunRecorder(tune.Callback):
    """Rewrites epochs.parquet and Table 1 atomically on every result; one line per epoch, one
    line per failed fold; lets a trial's own mistake (bad data, weights, a diverging loss) end it
    without the retries that would only repeat it."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.run: Recording | None = None
        self.rows: list[dict] = []
        self.status: dict[tuple[str, int], str] = {}
        self.user_errors: dict[tuple[str, int], str] = {}
        self.retries: dict[str, int] = {}  # trial id → max_failures before a user error
        self.writers: dict[str, Any] = {}
        self.resumed = False
        self.stale: set[int] = set()  # folds whose curves lack their latest epochs
        self.drawn_at: float | None = None  # when they were last drawn (time.monotonic)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._reset()

    def setup(self, **info: Any) -> None:
        if (current := CURRENT.get()) is None:
            raise RuntimeError("RunRecorder used outside `recording(...)`")
        self.run = current
        self.drawn_at = monotonic()  # the first curves after LIVE_FIGURES_S, not at once
        run_dir = self.run.run_dir
        if not self.rows:  # a resumed driver continues the table
            self.rows = load_epochs(run_dir, self.run.state, self.run.echo).to_dict("records")
            self.resumed = bool(self.rows)
        self.status = load_status(run_dir)

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.run.stop is not None:
            self.run.stop.forward_to_tune()
        if self.resumed:  # once, with the trials Tune restored: the rest will start over
            self.resumed = False
            restored = {trial_key(t) for t in trials}
            kept = [r for r in self.rows if (r["config_id"], int(r["fold"])) in restored]
            if len(kept) < len(self.rows):
                if self.run.tracker is not None:  # those folds start over, in new runs
                    self.run.tracker.forget({(r["config_id"], int(r["fold"])) for r in self.rows
                                             if (r["config_id"], int(r["fold"])) not in restored})
                self.rows = kept
                self.flush()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        key = trial_key(trial)
        if USER_ERROR in result:
            self.user_errors[key] = result[USER_ERROR]
            self.retries[trial.trial_id] = trial.max_failures
            trial.max_failures = 0  # the error it raises next is final: a retry repeats it
            return
        state = self.run.state
        overrides = trial.config["variant"]["overrides"]
        row = epoch_row(state, result, *key, overrides)
        if result.get(REPLAYED):
            # said again for the scheduler and searcher: usually its row is here already; if
            # this driver never heard it (a crash between the fold's record and its report),
            # the row is added, without a second progress line
            epoch = int(row["epoch"])
            if not any((r["config_id"], int(r["fold"]), int(r["epoch"])) == (*key, epoch)
                       for r in self.rows):
                self.rows.append(row)
                self.flush()
                self.track(key, row)
            return
        self.rows.append(row)
        self.status.pop(key, None)
        self.flush(key[1])
        self.tensorboard(key, row)
        self.track(key, row)
        if result.get(NOTICE):
            self.run.echo(f"[{who(state, key)}] {result[NOTICE]}")
        self.run.echo(progress_line(state, key, row))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        key = trial_key(trial)
        if trial.trial_id in self.retries:  # give a later --resume its usual retries back
            trial.max_failures = self.retries.pop(trial.trial_id)
        message = self.user_errors.get(key) or failure_message(trial.get_error(),
                                                                 trial.num_failures)
        before = [k for k, v in self.status.items() if v == f"failed: {message}" and k != key]
        self.status[key] = f"failed: {message}"
        said = f"the same error as {who(self.run.state, before[0])}" if before else message
        self.run.echo(f"[{who(self.run.state, key)}] FAILED: {said}")
        self.flush()
        if self.run.tracker is not None:
            self.run.tracker.fold_ended(*key, "FAILED")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """A crash (a killed worker, a lost node) that Tune retries: said, so that a fold
        retraining epochs it had already reported is not a mystery."""
        self.run.echo(f"[{who(self.run.state, trial_key(trial))}] its worker stopped; restarting "
                      f"it from its last state (restart {trial.num_failures} of "
                      f"{trial.max_failures}, --max-failures)")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.drop_if_stopped(trial)
        self.flush()
        if self.run.tracker is not None:  # finished, or stopped early by the scheduler
            self.run.tracker.fold_ended(*trial_key(trial), "FINISHED")

    def track(self, key: tuple[str, int], row: dict) -> None:
        if self.run.tracker is not None:
            self.run.tracker.epoch(*key, row)

    def drop_if_stopped(self, trial: Any) -> None:
        """A fold that ends without its own record of finishing was stopped by early stopping:
        it will never resume, so its states (1.8 GB each for the seed model) go now, not at the
        end of a sweep that may run for days; its best weights stay for the export."""
        if self.run.keep_states or (self.run.stop is not None and self.run.stop.signum):
            return  # a run being stopped by a signal ends trials that will resume
        storage = getattr(trial, "storage", None)
        if storage is None:
            return
        checkpoints = FoldCheckpoints(f"{storage.trial_fs_path}/{STATE_DIR}",
                                      storage.storage_filesystem)
        if checkpoints.done() is None:
            checkpoints.drop_states()

    def on_experiment_end(self, trials, **info) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
        if self.stale and any(t.status not in ("TERMINATED", "ERROR") for t in trials):
            self.draw_curves(epochs_frame(self.rows))  # stopped part-way: no report follows

    def tensorboard(self, key: tuple[str, int], row: dict) -> None:
        from tensorboardX import SummaryWriter

        name = f"{key[0]}_fold{key[1]}"
        if name not in self.writers:
            self.writers[name] = SummaryWriter(str(RunDir(self.run.run_dir).tensorboard / name))
        w, step = self.writers[name], int(row["epoch"])
        for metric in ("train_loss", "val_loss", "miou_low", "miou_full", "lr"):
            if metric in row:
                w.add_scalar(metric, row[metric], step)
        w.flush()

    def flush(self, fold: int | None = None) -> None:
        run_dir, state = self.run.run_dir, self.run.state
        epochs = epochs_frame(self.rows)
        write_tables(run_dir, state, epochs, self.status)
        if fold is not None and state.kind == "cv":  # curves follow the run as it goes
            self.stale.add(fold)
            if self.drawn_at is None or monotonic() - self.drawn_at >= LIVE_FIGURES_S:
                self.draw_curves(epochs)

    def draw_curves(self, epochs: pd.DataFrame) -> None:
        if not self.stale:
            return
        from raycity.figures import cv_history, fold_history

        files = RunDir(self.run.run_dir)
        for fold in sorted(self.stale):
            fold_history(epochs, fold, files.fold_figure(fold, "history"))
        cv_history(epochs, files.cv_figure)
        self.stale.clear()
        self.drawn_at = monotonic()


class SchedulerState(tune.Callback):
    """Carries a scheduler's state through Tune's experiment snapshots: Tune restores searchers
    and callbacks on resume, but not schedulers, and a fold paused at an early-stopping rung
    would otherwise wait forever for siblings whose results were forgotten."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict | None:
        return {"scheduler": self.scheduler.get_state()}

    def set_state(self, state: dict) -> None:
        self.scheduler.set_state(state["scheduler"])


def who(state: RunState, key: tuple[str, int]) -> str:
    return f"fold {key[1]}" if state.kind == "cv" else f"{key[0]} fold {key[1]}"


def progress_line(state: RunState, key: tuple[str, int], row: dict) -> str:
    length = row.get(hp_column("epochs"), state.config.epochs)  # a sweep may tune it
    return (f"[{who(state, key)}] epoch {row['epoch']}/{int(length)}  "
            f"loss {row['train_loss']:.3f}/{row['val_loss']:.3f}  "
            f"mIoU low {row['miou_low']:.4f} full {row['miou_full']:.4f}  "
            f"lr {row['lr']:.2g}  {row['epoch_seconds']:.1f} s")
