"""MLflow, written by the driver from what it already records: a CV is one parent run with a
child per fold; a sweep is one umbrella run, a parent per configuration, its folds beneath.

Trials never talk to MLflow (on a cluster only the driver must reach the tracking server). The
run ids live in the run directory (`mlflow.json`), so `--resume` continues the same runs and
never logs a step twice. Tracking can never fail the training: every call is retried a few
times within seconds; after that one warning line, nothing more is sent this session, and the
run's own Parquet tables stay the record. Ray-free.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from raycity.errors import brief
from raycity.mlflowsetup import (
    HTTP_LIMITS,
    local_uri,
    moved_store,
    run_params,
    run_tags,
)
from raycity.results import IOU_FULL, IOU_LOW, atomic_write_text, fold_stats
from raycity.run import RunDir, RunState

EPOCH_METRICS = ["train_loss", "val_loss", "miou_low", "miou_full", "lr", *IOU_LOW, *IOU_FULL]
ATTEMPTS = 3  # per call, with a short pause between: seconds in all, never minutes


class Tracker:
    """One CLI invocation's MLflow runs. `bind` once the run directory exists; then `epoch` per
    fold and epoch, `fold_ended`, and `finish` (or `stop`) at the end."""

    def __init__(self, uri: str, experiment: str, echo: Callable[[str], None] = print) -> None:
        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)
        import mlflow  # noqa: F401  (its loggers exist once it is imported)

        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..."
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri, self.experiment, self.echo = uri, experiment, echo
        self.client: Any = None  # made in `bind`, for the store the run really uses
        self.files: RunDir | None = None
        self.state: RunState | None = None
        self.ids: dict[str, Any] = {}
        self.broken: str | None = None  # the first error: nothing more is sent
        self.unlogged = 0

    # -- plumbing ---------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.broken is not None:
            self.unlogged += 1
            return None
        for attempt in range(ATTEMPTS):
            try:
                result = fn(*args, **kwargs)
                break
            except Exception as err:  # any failure of the tracker: never the run's
                if attempt + 1 == ATTEMPTS:
                    self.broken = brief(err, 160)
                    self.unlogged += 1
                    self.echo(f"warning: MLflow at {self.uri}: {what} failed ({self.broken}); "
                              f"the run goes on without MLflow (its tables keep everything)")
                    return None
                time.sleep(0.5 * (attempt + 1))
        return result

    def _save(self) -> None:
        if self.files is not None:
            atomic_write_text(self.files.tracking, json.dumps(self.ids, indent=1))

    # -- the runs ---------------------------------------------------------------------------------
    def bind(self, run_dir: Path, state: RunState) -> None:
        """The run's top MLflow run, created — or, on --resume, found again and set RUNNING."""
        from mlflow.tracking import MlflowClient

        self.files, self.state = RunDir(run_dir), state
        saved = self.files.tracking
        ids = json.loads(saved.read_text()) if saved.is_file() else {}
        if ids.get("top"):  # a first start that could not reach MLflow starts it now
            self.ids = ids
            self.uri = self.ids.get("uri", self.uri)
            self.experiment = self.ids.get("experiment", self.experiment)
            if self.ids.get("local"):  # the whole output folder may have moved, store and all
                self.uri = self.ids["uri"] = moved_store(self.uri, run_dir)
            self.client = MlflowClient(tracking_uri=self.uri)
            for run_id in self._open_runs():
                self._call("resuming a run", self.client.update_run, run_id, status="RUNNING")
            # the store, not only this folder's record, says which steps exist: a copy of the
            # run may have logged some since (both continue the same MLflow runs)
            for key, run_id in self.ids["children"].items():
                history = self._call("reading a fold's steps", self.client.get_metric_history,
                                     run_id, "miou_low") or []
                self.ids["steps"][key] = sorted({*self.ids["steps"].get(key, []),
                                                 *(m.step for m in history)})
            self._save()
            return
        self.client = MlflowClient(tracking_uri=self.uri)
        self.ids = {"uri": self.uri, "experiment": self.experiment, "top": None,
                    "local": self.uri == local_uri(run_dir.parent),
                    "parents": {}, "children": {}, "steps": {}, "ended": []}
        experiment_id = self._call("opening the experiment", self._experiment_id)
        if experiment_id is None:
            return
        self.ids["experiment_id"] = experiment_id
        top = self._run(run_dir.name, run_tags(run_dir, state), run_params(state))
        self.ids["top"] = top
        if state.kind == "cv" and top is not None:
            self.ids["parents"]["cv"] = top
        self._save()

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:///"):  # a local store keeps artifacts beside it
            artifacts = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=artifacts)

    def _run(self, name: str, tags: Mapping[str, str], params: Mapping[str, str],
             parent: str | None = None) -> str | None:
        from mlflow.entities import Param

        tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
        run = self._call(f"creating run {name}", self.client.create_run,
                         self.ids["experiment_id"], run_name=name, tags=tags)
        if run is None:
            return None
        run_id = run.info.run_id
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a call
            self._call(f"logging {name}'s parameters", self.client.log_batch, run_id,
                       params=items[start:start + 100])
        return run_id

    def _parent(self, config_id: str, values: Mapping[str, Any]) -> str | None:
        if config_id in self.ids["parents"] or self.ids.get("top") is None:
            return self.ids["parents"].get(config_id)
        run_id = self._run(config_id, {"raycity.config_id": config_id},
                           {k: str(v) for k, v in values.items()}, parent=self.ids["top"])
        if run_id is not None:
            self.ids["parents"][config_id] = run_id
            self._save()
        return run_id

    def _child(self, config_id: str, fold: int, row: Mapping[str, Any]) -> str | None:
        key = f"{config_id}/{fold}"
        if key in self.ids["children"]:
            run_id = self.ids["children"][key]
            if run_id in self.ids["ended"]:  # a failed fold that --resume trains again
                self._call(f"reopening fold {fold}", self.client.update_run, run_id,
                           status="RUNNING")
                self.ids["ended"].remove(run_id)
                self._save()
            return run_id
        values = {k.removeprefix("hp_"): v for k, v in row.items() if k.startswith("hp_")}
        parent = self._parent(config_id, values)
        if parent is None:
            return None
        tags = {"raycity.fold": str(fold), "raycity.config_id": config_id,
                "raycity.node": str(row.get("node_id", "")),
                "raycity.device": str(row.get("device", ""))}
        if "repeat" in row:
            tags["raycity.repeat"] = str(row["repeat"])
        name = f"fold{fold}" if config_id == "cv" else f"{config_id}_fold{fold}"
        run_id = self._run(name, tags, {}, parent=parent)
        if run_id is not None:
            self.ids["children"][key] = run_id
            self._save()
        return run_id

    def epoch(self, config_id: str, fold: int, *rows: Mapping[str, Any]) -> None:
        """One batched call per fold and epoch (or per fold, for epochs the table holds and
        MLflow lacks); an epoch already logged (a resumed fold says its last epochs again) is
        not logged twice."""
        if self.broken is not None or not self.ids.get("top"):
            self.unlogged += self.broken is not None
            return
        key = f"{config_id}/{fold}"
        logged = set(self.ids["steps"].get(key, []))
        rows = [r for r in rows if int(r["epoch"]) not in logged]
        if not rows or (run_id := self._child(config_id, fold, rows[0])) is None:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(r[k]), stamp, int(r["epoch"])) for r in rows
                   for k in EPOCH_METRICS
                   if k in r and r[k] is not None and math.isfinite(float(r[k]))]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 a call
            self._call(f"logging fold {fold} epoch {rows[0]['epoch']}", self.client.log_batch,
                       run_id, metrics=metrics[start:start + 1000])
        if self.broken is None:  # logged: a resume will not log these steps again
            self.ids["steps"][key] = sorted(logged | {int(r["epoch"]) for r in rows})
            self._save()

    def forget(self, keys: Iterable[tuple[str, int]]) -> None:
        """Folds that start over from epoch 1 (trials Tune had not saved when its driver died):
        their MLflow runs are deleted, so the new epochs are logged once, to new runs (and in a
        sweep, a configuration left with no fold loses its run too: it may come back with
        other values)."""
        if not self.ids.get("top"):
            return
        for config_id, fold in keys:
            key = f"{config_id}/{fold}"
            self.ids["steps"].pop(key, None)
            if (run_id := self.ids["children"].pop(key, None)) is not None:
                self._call(f"retiring fold {fold}'s run", self.client.delete_run, run_id)
        alive = {key.split("/")[0] for key in self.ids["children"]}
        for config_id in [c for c in self.ids["parents"] if c not in alive]:
            if self.ids["parents"][config_id] != self.ids["top"]:
                self._call(f"retiring {config_id}'s run", self.client.delete_run,
                           self.ids["parents"].pop(config_id))
        self._save()

    def fold_ended(self, config_id: str, fold: int, status: str) -> None:
        """FINISHED (finished, or stopped early by the scheduler) or FAILED."""
        run_id = self.ids.get("children", {}).get(f"{config_id}/{fold}")
        if run_id is None:
            return
        self._call(f"ending fold {fold}", self.client.set_terminated, run_id, status)
        if run_id not in self.ids["ended"]:
            self.ids["ended"].append(run_id)
            self._save()

    def _open_runs(self) -> Iterable[str]:
        ended = set(self.ids.get("ended", []))
        runs = [*self.ids.get("children", {}).values(), *self.ids.get("parents", {}).values(),
                self.ids.get("top")]
        return [r for r in dict.fromkeys(runs) if r and r not in ended]

    def stop(self, status: str = "KILLED") -> None:
        """A run stopped by a signal (KILLED) or an error (FAILED): every open run ends so, and
        a --resume sets them RUNNING again."""
        for run_id in self._open_runs():
            self._call("ending a run", self.client.set_terminated, run_id, status)

    def finish(self, summary: Any, board: Any = None) -> None:
        """The fold mean ± std on each parent (and, in a sweep, its rank), Table 1, the report
        and the figures on the top run; every open run ends FINISHED."""
        import pandas as pd
        from mlflow.entities import Metric

        if not self.ids.get("top"):
            self._say_unlogged()
            return
        # epochs the table holds that no trial reported to this driver (rebuilt from the
        # folds' records after a driver was killed), or that a session could not log
        epochs = pd.read_parquet(self.files.epochs) if self.files.epochs.is_file() else None
        if epochs is not None and "config_id" in epochs:
            for (config_id, fold), group in epochs.groupby(["config_id", "fold"]):
                self.epoch(str(config_id), int(fold), *group.to_dict("records"))
        stamp = int(time.time() * 1000)
        ranks = {} if board is None else dict(zip(board["config_id"], board["rank"]))
        for config_id, group in summary.groupby("config_id"):
            run_id = self.ids["parents"].get(config_id)
            if run_id is None:
                continue
            metrics = []
            for column in ("miou_low", "miou_full"):
                mean, std = fold_stats(group, column)
                metrics += [Metric(f"{column}_mean", mean, stamp, 0),
                            Metric(f"{column}_std", std, stamp, 0)]
            rank = ranks.get(config_id)
            if rank is not None and not pd.isna(rank):  # unranked configurations have none
                metrics.append(Metric("rank", float(rank), stamp, 0))
            metrics = [m for m in metrics if math.isfinite(m.value)]
            self._call(f"logging {config_id}'s fold mean", self.client.log_batch, run_id,
                       metrics=metrics)
        files = self.files
        for path in (files.summary_md, files.report, files.leaderboard_md):
            if path.is_file():
                self._call(f"storing {path.name}", self.client.log_artifact, self.ids["top"],
                           str(path))
        if files.figures.is_dir():
            self._call("storing the figures", self.client.log_artifacts, self.ids["top"],
                       str(files.figures), "figures")
        failed = {f"{r.config_id}/{r.fold}" for r in summary.itertuples()
                  if r.status.startswith("failed")}
        for key, run_id in self.ids["children"].items():
            if run_id not in self.ids["ended"]:
                self.fold_ended(*key.split("/"), "FAILED" if key in failed else "FINISHED")
        self.stop("FINISHED")
        if self.broken is None:
            self.echo(f"MLflow: run {self.ids['top']} in experiment {self.experiment!r} at "
                      f"{self.uri}")
        self._say_unlogged()

    def _say_unlogged(self) -> None:
        if self.unlogged:
            self.echo(f"MLflow: {self.unlogged} call(s) of this session were not logged to "
                      f"{self.uri} ({self.broken}); the run's Parquet tables hold everything")
