"""A run's tables on disk — epochs.parquet, summary.parquet, Table 1, status.json — kept by the
driver as trials report, and rebuilt from the record each fold keeps of its epochs when one is
lost or short (by `--resume`, `raycity.report` and `raycity.evaluate` alike, without Ray)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raycity.config import fold_trials
from raycity.constants import CLASS_KEYS, CONFUSION
from raycity.data.layout import first_label_size
from raycity.errors import brief
from raycity.foldfiles import STATE_DIR
from raycity.foldstates import FoldCheckpoints
from raycity.results import (
    EPOCH_COLUMNS,
    IOU_FULL,
    IOU_LOW,
    REPEAT,
    atomic_write_parquet,
    atomic_write_text,
    epochs_frame,
    mean_std,
    summarize,
    table1_markdown,
)
from raycity.run import RunDir, RunState

# a trial's folder, as the driver names it: `<config>_fold<k>_<trial id>` (a trial id may hold
# '_': `c05b1_00000`)
TRIAL_DIR = re.compile(r"^(.+?)_fold(\d+)_(.+)$")


def trial_dirname(config_id: str, fold: int, trial_id: str) -> str:
    return f"{config_id}_fold{fold}_{trial_id}"


def hp_column(name: str) -> str:
    """The column of a tuned value: `lr` is the rate in effect at that epoch, `hp_lr` the one a
    configuration started with."""
    return f"hp_{name}"


def tuned(state: RunState, overrides: dict[str, Any]) -> dict[str, Any]:
    """The `hp_*` columns of a row: the configuration's values, the run's for the rest."""
    return {hp_column(h): overrides.get(h, getattr(state.config, h)) for h in state.hparams}


def epoch_row(state: RunState, result: dict[str, Any], config_id: str, fold: int,
              overrides: dict[str, Any]) -> dict[str, Any]:
    """A row of epochs.parquet from what a fold reported (the driver) or recorded (its journal,
    when a table is rebuilt): the epoch's columns, its configuration and fold, the tuned values."""
    return {**{k: result[k] for k in EPOCH_COLUMNS if k in result}, "config_id": config_id,
            "fold": fold, **tuned(state, overrides)}


def load_epochs(run_dir: Path, state: RunState, echo: Callable[[str], None], *,
                complete: bool = False) -> pd.DataFrame:
    """epochs.parquet, or — if it is missing or damaged — the same rows rebuilt from the record
    every fold keeps of its epochs in its trial directory, so that a resume never summarises
    fewer epochs than were trained. (Tune's own result.json starts over in each session.)
    `complete` (on --resume) also adds the epochs the folds recorded and the table lacks: a
    driver killed between a fold's record and its table write, or an older copy of the table."""
    path = RunDir(run_dir).epochs
    try:
        table = pd.read_parquet(path)
        if not complete:
            return table
        reason = None
    except FileNotFoundError:
        table, reason = None, "missing"
    except (OSError, ValueError) as err:
        table, reason = None, f"unreadable ({brief(err)})"
    rows = trial_records(state.experiment_path(run_dir), state)
    if table is not None:
        known = set(zip(table["config_id"], table["fold"].astype(int), table["epoch"].astype(int)))
        extra = [r for r in rows if (r["config_id"], int(r["fold"]), int(r["epoch"])) not in known]
        if not extra:
            return table
        echo(f"{path}: added {len(extra)} epoch row(s) the trials recorded and it lacked")
        return epochs_frame(table.to_dict("records") + extra)
    if rows or reason != "missing":
        echo(f"{path}: {reason}; rebuilt {len(rows)} epoch row(s) from the trials' records")
    return epochs_frame(rows)


def load_status(run_dir: Path) -> dict[tuple[str, int], str]:
    """status.json: the folds that failed, as the last driver left them."""
    path = RunDir(run_dir).status
    if not path.is_file():
        return {}
    return {(c, int(f)): s for c, f, s in json.loads(path.read_text())}


def snapshot_trials(fs: Any, root: str) -> set[str] | None:
    """The ids of the trials in Tune's newest experiment snapshot (None: it saved none yet).
    A trial started after that snapshot is not restored — its configuration is proposed again,
    possibly with other values — so its folder's records are not the run's."""
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    snapshots = sorted(i.path for i in infos if i.base_name.startswith("experiment_state-")
                       and i.base_name.endswith(".json"))
    if not snapshots:
        return None
    with fs.open_input_stream(snapshots[-1]) as stream:
        data = json.loads(stream.read())
    return {json.loads(trial)["trial_id"] for trial, _ in data["trial_data"]}


def trial_records(experiment_path: str, state: RunState) -> list[dict]:
    """Every epoch each trial of the experiment recorded (raycity/epoch-*.json in its trial
    directory, named `<config>_fold<k>_<trial id>`)."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path) if "://" in experiment_path \
        else (pyarrow.fs.LocalFileSystem(), experiment_path)
    restored = snapshot_trials(fs, root)
    rows = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if info.type != pyarrow.fs.FileType.Directory:
            continue
        named = TRIAL_DIR.match(info.base_name)
        if restored is not None and (named is None or named[3] not in restored):
            continue
        for record in FoldCheckpoints(f"{info.path}/{STATE_DIR}", fs).records():
            rows.append(epoch_row(state, record, record["config_id"], record["fold"],
                                  record.get("overrides", {})))
    return rows


def write_tables(run_dir: Path, state: RunState, epochs: pd.DataFrame,
                 status: dict[tuple[str, int], str]) -> pd.DataFrame | None:
    files = RunDir(run_dir)
    atomic_write_parquet(epochs, files.epochs)
    atomic_write_text(files.status, json.dumps([[c, f, s] for (c, f), s in status.items()]))
    if epochs.empty and not status:
        return None
    summary = summarize(epochs, status, folds=fold_trials(state.config),
                        repeats=state.config.repeats,
                        config_ids=[v.config_id for v in state.variants])
    atomic_write_parquet(summary, files.summary)
    atomic_write_parquet(per_class_frame(summary), files.per_class)
    atomic_write_parquet(confusion_frame(epochs, summary), files.confusion)
    if state.kind == "cv":
        atomic_write_text(files.summary_md, table1_markdown(
            summary, state.config.image_size, first_label_size(state.data_root)))
    return summary


def per_class_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """per_class.parquet: for each configuration and class, the IoU (low- and full-res) of every
    fold that finished at its best epoch, beside their mean ± std (ddof=0) over those folds."""
    rows = []
    for config_id, group in summary[summary["status"] == "ok"].groupby("config_id", sort=True):
        folds = [int(f) for f in group["fold"]]
        repeats = [int(r) for r in group[REPEAT]] if REPEAT in group else [1] * len(folds)
        for key, low, full in zip(CLASS_KEYS, IOU_LOW, IOU_FULL):
            if low not in group:
                continue
            (low_mean, low_std), (full_mean, full_std) = mean_std(group[low]), mean_std(group[full])
            stats = {"iou_low_mean": low_mean, "iou_low_std": low_std,
                     "iou_full_mean": full_mean, "iou_full_std": full_std}
            rows += [{"config_id": config_id, "class": key, "fold": fold, REPEAT: repeat,
                      "iou_low": a, "iou_full": b, **stats}
                     for fold, repeat, a, b in zip(folds, repeats, group[low], group[full])]
    return pd.DataFrame(rows, columns=["config_id", "class", "fold", REPEAT, "iou_low", "iou_full",
                                       "iou_low_mean", "iou_low_std", "iou_full_mean",
                                       "iou_full_std"])


def confusion_frame(epochs: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """confusion.parquet, long: the full-resolution pixels of every (true, predicted) class pair
    at the best epoch of each fold that finished — the matrix behind that fold's Table 1 value."""
    columns = ["config_id", "fold", REPEAT, "epoch", "true_class", "predicted_class", "pixels"]
    if CONFUSION not in epochs or epochs.empty:
        return pd.DataFrame(columns=columns)
    at = epochs.set_index(["config_id", "fold", "epoch"])[CONFUSION]
    n = len(CLASS_KEYS)
    frames = []
    for r in summary[summary["status"] == "ok"].itertuples():
        matrix = at.get((r.config_id, int(r.fold), int(r.best_epoch)))
        if matrix is None or not isinstance(matrix, (list, np.ndarray)) or len(matrix) != n * n:
            continue  # an epoch recorded before the tables kept matrices
        frames.append(pd.DataFrame({
            "config_id": r.config_id, "fold": int(r.fold), REPEAT: int(getattr(r, REPEAT, 1)),
            "epoch": int(r.best_epoch),
            "true_class": np.repeat(CLASS_KEYS, n), "predicted_class": np.tile(CLASS_KEYS, n),
            "pixels": np.asarray(matrix, dtype=np.int64)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
