"""Runs variants × folds as Ray Tune trials and keeps `results/<name>/` current as they report.

Shared by `raycity.cv` (one variant) and `raycity.sweep` (many). Everything below `run_fold`
is plain PyTorch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from raycity.config import Config, RunOptions, heaviest
from raycity.data import find_samples
from raycity.data.cache import cache_problem
from raycity.data.layout import check_pairs
from raycity.data.synthetic import dataset_root
from raycity.errors import Interrupted, failure_message
from raycity.folds import FoldSplit
from raycity.model import check_pretrained
from raycity.run import (
    EXPERIMENT_NAME,
    RunDir,
    RunError,
    RunState,
    Variant,
    check_resume_flags,
    check_run_dir,
    claim_storage,
    create_run_dir,
    new_folds,
)
from raycity.runlock import RunLock
from raycity.runtables import TRIAL_DIR, load_epochs, load_status, trial_dirname, write_tables
from raycity.tracking import Tracker
from raycity.training import run_fold
from raycity.tune.driver import RayLogs, StopSignals, connect_ray, probe_storage
from raycity.tune.recorder import RunRecorder, SchedulerState, recording, trial_key
from raycity.tune.resources import (
    TrialPlan,
    check_placeable,
    cluster_nodes,
    default_gpus_per_trial,
    fold_plan,
)
from raycity.tune.searcher import SearchPlan, fan_out
from raycity.tune.trainable import train_fold
from raycity.tune.trialfiles import drop_trial_checkpoints, export_best

__all__ = ["Variant", "run_experiment"]


def run_experiment(kind: str, cfg: Config, opts: RunOptions, variants: Sequence[Variant], *,
                   hparams: Sequence[str] = (), metric: str = "miou_full", scheduler: Any = None,
                   search: SearchPlan | None = None, explicit: dict[str, Any] | None = None,
                   fold_fn: Callable[..., None] = run_fold,
                   echo: Callable[[str], None] | None = None,
                   tracker: Tracker | None = None) -> tuple[Path, pd.DataFrame | None]:
    """Train every variant on every fold (or, with `search`, every configuration it proposes);
    returns the run dir and the final summary.

    `fold_fn` is `run_fold`; tests and benchmarks pass stand-ins with its signature (a loss that
    turns NaN, an epoch of a given length). The CLIs never set it. Raises `Interrupted` after a
    SIGINT / SIGTERM once everything is saved for `--resume`. With `tracker`, every epoch goes
    to MLflow too; the caller `finish`es it once the report exists.
    """
    # Tune's own console blocks point at its temp folders; raycity prints one line per epoch
    # and where the results are. (Setting RAY_AIR_NEW_OUTPUT=1 brings Tune's back.)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every epoch is the point; Tune's warnings about it are noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")
    # A fold that fails for the user's reason reports one last result without the searcher's
    # metric (then raises); Tune's strict check would end the whole sweep on it.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    echo = echo or (lambda line: print(line, flush=True))
    stop, logs = StopSignals(), RayLogs(console=opts.ray_logs)
    stop.install()
    lock = RunLock(Path(opts.run_dir), echo)
    try:
        lock.acquire()  # before the directory is checked, made or resumed
        return _run(kind, cfg, opts, variants, hparams, metric, scheduler, search,
                    explicit or {}, fold_fn, echo, stop, logs, tracker)
    except BaseException as err:
        if tracker is not None:  # a --resume sets them running again
            tracker.stop("KILLED" if isinstance(err, (Interrupted, KeyboardInterrupt))
                         else "FAILED")
        raise
    finally:
        lock.release()
        stop.restore()
        logs.close()


def _run(kind: str, cfg: Config, opts: RunOptions, variants: Sequence[Variant],
         hparams: Sequence[str], metric: str, scheduler: Any, search: SearchPlan | None,
         explicit: dict[str, Any],
         fold_fn: Callable[..., None], echo: Callable[[str], None], stop: StopSignals,
         logs: RayLogs, tracker: Tracker | None) -> tuple[Path, pd.DataFrame | None]:
    from ray import tune

    run_dir = check_run_dir(opts)
    if opts.resume:
        state = RunState.load(run_dir)
        check_resume_flags(state.config, explicit)
        folds = RunDir(run_dir).folds()
        if state.synthetic:  # generated again where the run now lies, if need be
            state.data_root = dataset_root(state.config)[0]
        if state.finished:
            echo(f"{run_dir}: this run has finished; rebuilding any missing tables and figures")
            if tracker is not None:
                tracker.bind(run_dir, state)
            return run_dir, write_tables(run_dir, state,
                                         load_epochs(run_dir, state, echo, complete=True),
                                         load_status(run_dir))
    else:
        # Everything that can be wrong with the data or the weights is found before anything
        # is written or launched.
        root, synthetic = dataset_root(cfg)
        samples = find_samples(root, "train")
        bad = check_pairs(samples, skip_bad=cfg.skip_bad_samples, max_pixels=cfg.max_pixels)
        if bad:
            echo(f"--skip-bad-samples: {len(bad)} unreadable pair(s) will be skipped and "
                 f"counted, e.g. {bad[0]}")
        check_pretrained(cfg.pretrained)
        if (problem := cache_problem(root, cfg.image_size, cfg.scale_jitter)) is not None:
            echo(f"warning: {problem}")
        folds = new_folds(cfg, samples)
        storage = opts.storage_path or None
        state = RunState(kind, cfg, list(variants), root, synthetic, storage,
                         opts.name if storage else EXPERIMENT_NAME, list(hparams), metric)
        state.sync_epochs = list(getattr(scheduler, "rungs", ()))
        if search is not None:
            state.search = {"method": search.method, "configurations": search.configurations,
                            "max_concurrent": search.max_concurrent, "seed": search.seed,
                            "log_scaled": search.log_scaled, "space": search.space,
                            "num_samples": search.num_samples}
    cfg = state.config
    configurations = state.search.get("configurations", len(state.variants))
    if state.synthetic:
        echo(banner(state.data_root))

    if state.storage:
        probe_storage(state.storage)  # in seconds, before Ray and any trial start
    started = connect_ray(opts)
    stop.install()  # ray.init sets a SIGTERM handler of its own …
    logs.apply()  # … and resets the "ray" logger
    try:
        # at most --max-concurrent configurations are in flight: their folds share the CPUs
        in_flight = min(configurations, (search and search.max_concurrent) or configurations)
        plan = resource_plan(heaviest(cfg, tuned_limits(state)), opts, in_flight * len(folds))
        check_workers(cfg, plan)
        echo(f"{configurations * len(folds)} trial(s), {plan.concurrent} at a time; each "
             f"{plan.cpus:g} CPU(s), {plan.gpus:g} GPU(s), {plan.memory / 2**30:.1f} GiB")
        if search is not None and search.max_concurrent is None:  # keep every trial slot busy
            search.max_concurrent = state.search["max_concurrent"] = \
                -(-plan.concurrent // len(folds))
        if not opts.resume:
            create_run_dir(run_dir)
            RunDir(run_dir).write_new(state, folds)
        logs.to_file(run_dir)
        claim_storage(state, run_dir)
        if tracker is not None:
            tracker.bind(run_dir, state)
        if opts.resume:
            write_tables(run_dir, state, load_epochs(run_dir, state, echo, complete=True),
                         load_status(run_dir))
        trainable = tune.with_resources(
            tune.with_parameters(train_fold, cfg=cfg, folds={f.fold: f for f in folds},
                                 data_root=state.data_root, fold_fn=fold_fn,
                                 sync_epochs=tuple(state.sync_epochs),
                                 keep_states=opts.keep_trial_checkpoints),
            {"cpu": plan.cpus, "gpu": plan.gpus, "memory": plan.memory})
        t0 = time.time()
        with recording(run_dir, state, echo, stop, opts.keep_trial_checkpoints, tracker), \
                stop.tune_loop():
            path = state.experiment_path(run_dir)
            if opts.resume and tune.Tuner.can_restore(path):
                tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                           resume_errored=True)
            else:
                tuner = build_tuner(trainable, state, run_dir, folds, opts, scheduler, search)
            grid = tuner.fit()
        echo(f"{len(grid)} trial(s) ended in {time.time() - t0:.0f} s")
        status = {}
        for result in grid:
            key = result_key(result)
            if result.error is not None:
                status[key] = f"failed: {failure_message(result.error)}"
            else:
                export_best(run_dir, state, key, result)
        if not status:
            state.finished = True
            RunDir(run_dir).save(state)
        if not opts.keep_trial_checkpoints:
            # every fold that did not fail is done for good (finished, or stopped early) and
            # exported: its states are only disk; a failed fold keeps its own for --resume
            for result in grid:
                if result.error is None:
                    drop_trial_checkpoints(result)
    finally:
        if started:
            import ray

            ray.shutdown()
    return run_dir, write_tables(run_dir, state, load_epochs(run_dir, state, echo), status)


def check_workers(cfg: Config, plan: TrialPlan) -> None:
    """More loader workers than a fold has CPUs only slow it (5× measured at 100 on 2 cores)
    and take memory; refused before anything launches."""
    most = max(1, int(plan.cpus))
    if cfg.num_workers is not None and cfg.num_workers > most:
        raise RunError(f"--num-workers {cfg.num_workers}: each fold gets {plan.cpus:g} CPU(s) "
                       f"here; use at most {most} (or --cpus-per-trial more), or omit the flag "
                       f"to follow the CPUs")


def tuned_limits(state: RunState) -> list[dict[str, Any]]:
    """The values a sweep's configurations may take: each one listed up front, or (a searcher
    proposing as it goes) every value at the limits of its domain."""
    limits = [v.overrides for v in state.variants]
    if state.search.get("space"):
        from raycity.tune.space import parse_space

        limits += parse_space(state.search["space"], "the run's search").extremes()
    return limits


def resource_plan(cfg: Config, opts: RunOptions, trials: int) -> TrialPlan:
    """What each fold asks Ray for, from what the cluster has; refused here, in seconds, if no
    node could ever hold one (Ray would wait for it forever)."""
    nodes = cluster_nodes()
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else \
        default_gpus_per_trial(nodes)
    plan = fold_plan(cfg, nodes, trials, gpus, opts.cpus_per_trial)
    check_placeable(nodes, plan.cpus, gpus, plan.memory)
    return plan


def result_key(result: Any) -> tuple[str, int]:
    """A trial's (configuration, fold). Tune's Result knows the config only from a reported
    result; for a trial that never reported one (its worker died first), its folder says."""
    if result.config is not None:
        return result.config["variant"]["config_id"], int(result.config["fold"])
    named = TRIAL_DIR.match(Path(result.path).name)
    return named[1], int(named[2])


def build_tuner(trainable: Any, state: RunState, run_dir: Path, folds: Sequence[FoldSplit],
                opts: RunOptions, scheduler: Any, search: SearchPlan | None):
    from ray import tune

    def name(trial: Any) -> str:
        return trial_dirname(*trial_key(trial), trial.trial_id)

    callbacks = [RunRecorder()] + ([SchedulerState(scheduler)] if scheduler is not None else [])
    if search is None:  # every variant × every fold, as Tune's grid
        space = {"variant": tune.grid_search([v.__dict__ for v in state.variants]),
                 "fold": tune.grid_search([f.fold for f in folds])}
        searching: dict[str, Any] = {}
    else:  # one proposal at a time, fanned out to the folds
        space = {}
        searching = {"search_alg": fan_out(search, [f.fold for f in folds], state.metric),
                     "num_samples": search.configurations * len(folds)}
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(scheduler=scheduler, trial_name_creator=name,
                                    trial_dirname_creator=name, reuse_actors=False, **searching),
        run_config=tune.RunConfig(
            name=state.experiment_name, storage_path=state.storage_path(run_dir),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            # Tune's checkpoints only point at raycity's state files (a few bytes each).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks, verbose=0),
    )


def banner(root: str) -> str:
    bar = "=" * 78
    return (f"{bar}\nDEMO on synthetic street scenes (generated in {root}).\n"
            f"No Cityscapes data was given. For the real study:\n"
            f"  python -m raycity.cv --data-root /path/to/cityscapes --preset seed\n"
            f"(or set $CITYSCAPES_DATASET). The folder must hold leftImg8bit/ and gtFine/.\n{bar}")

