"""A CV run directory written without Ray, for the tests that read what a run leaves behind
(inference, evaluate, predict, TTA, the ensemble, the report, `--resume`'s checks): each fold
trained in-process by the real fold recipe into the same trial folders, journals and best weights
a Tune trial keeps; epochs.parquet made from the results the folds reported, as the driver's
recorder makes it (so a table rebuilt from the journals is compared with something else); the
best weights exported, the trials' states dropped and the report written by the code a real run
calls. Seconds, where a Ray run costs half a minute. Not exercised here: Tune's experiment
snapshot (which trials a resume restores) and a synthetic demo run's data root (test_cv evaluates
the session's demo run for that)."""

from __future__ import annotations

import types
from pathlib import Path

import pyarrow.fs
import torch

from raycity.config import Config
from raycity.data import find_samples
from raycity.foldfiles import STATE_DIR
from raycity.foldstates import FoldCheckpoints
from raycity.report import write_report
from raycity.results import epochs_frame
from raycity.run import EXPERIMENT_NAME, RunDir, RunState, Variant, create_run_dir, new_folds
from raycity.runtables import epoch_row, write_tables
from raycity.training import run_fold
from raycity.tune.trialfiles import drop_trial_checkpoints, export_best


def write_local_run(cfg: Config, run_dir: Path, *, cpus: float = 1, figures: bool = True) -> Path:
    """`cfg` (with its data root) cross-validated fold after fold in this process; `figures`
    False leaves the report's figures out (≈ 1.5 s of CPU a fold) for a test that reads none."""
    root = cfg.data_root
    folds = new_folds(cfg, find_samples(root, "train"))
    state = RunState("cv", cfg, [Variant("cv")], root, False, None, EXPERIMENT_NAME, [])
    create_run_dir(run_dir)
    files = RunDir(run_dir)
    files.write_new(state, folds)
    rows: list[dict] = []
    threads = torch.get_num_threads()
    for split in folds:
        trial = Path(state.experiment_path(run_dir)) / f"cv_fold{split.fold}_local{split.fold}"
        checkpoints = FoldCheckpoints(str(trial / STATE_DIR),
                                      labels={"config_id": "cv", "overrides": {}})

        def report(metrics: dict, saved: str | None, fold: int = split.fold) -> None:
            rows.append(epoch_row(state, metrics, "cv", fold, {}))  # as the driver's recorder

        run_fold(cfg, split, root, report, checkpoints=checkpoints, cpus=cpus,
                 device=torch.device("cpu"))
        # what the driver does with a finished trial's result
        result = types.SimpleNamespace(filesystem=pyarrow.fs.LocalFileSystem(), path=str(trial))
        export_best(run_dir, state, ("cv", split.fold), result)
        drop_trial_checkpoints(result)
    torch.set_num_threads(threads)  # run_fold set the trial's own
    write_tables(run_dir, state, epochs_frame(rows), {})
    state.finished = True
    files.save(state)
    write_report(run_dir, figures=figures)
    return run_dir
