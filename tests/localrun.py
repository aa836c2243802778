"""A CV run directory written without Ray, for the tests that read what a run leaves behind
(inference, evaluate, predict, TTA, the ensemble, the report): each fold trained in-process by the
real fold recipe into the same trial folders, journals and best weights a Tune trial keeps; the
tables rebuilt from those journals as `--resume` rebuilds them; the best weights exported and the
report written by the code a real run calls. Seconds, where a Ray run costs half a minute."""

from __future__ import annotations

import types
from pathlib import Path

import pyarrow.fs

from raycity.config import Config
from raycity.data import find_samples
from raycity.foldfiles import STATE_DIR
from raycity.folds import make_repeated_folds
from raycity.foldstates import FoldCheckpoints
from raycity.report import write_report
from raycity.run import EXPERIMENT_NAME, RunDir, RunState, Variant, create_run_dir
from raycity.runtables import load_epochs, write_tables
from raycity.training import run_fold
from raycity.tune.trialfiles import export_best


def write_local_run(cfg: Config, run_dir: Path, *, cpus: float = 1) -> Path:
    """`cfg` (with its data root) cross-validated fold after fold in this process."""
    root = cfg.data_root
    folds = make_repeated_folds([s.key for s in find_samples(root, "train")], cfg.folds,
                                cfg.seed, repeats=cfg.repeats)
    state = RunState("cv", cfg, [Variant("cv")], root, False, None, EXPERIMENT_NAME, [])
    create_run_dir(run_dir)
    files = RunDir(run_dir)
    files.write_new(state, folds)
    for split in folds:
        trial = Path(state.experiment_path(run_dir)) / f"cv_fold{split.fold}_local{split.fold}"
        checkpoints = FoldCheckpoints(str(trial / STATE_DIR),
                                      labels={"config_id": "cv", "overrides": {}})
        run_fold(cfg, split, root, lambda metrics, saved: None, checkpoints=checkpoints,
                 cpus=cpus)
        # what the driver does with a finished trial's result
        result = types.SimpleNamespace(filesystem=pyarrow.fs.LocalFileSystem(), path=str(trial))
        export_best(run_dir, state, ("cv", split.fold), result)
    # no epochs.parquet yet: rebuilt from the folds' journals, as a resume would
    write_tables(run_dir, state, load_epochs(run_dir, state, echo=lambda line: None), {})
    state.finished = True
    files.save(state)
    write_report(run_dir)
    return run_dir
