"""Runs variants × folds as Ray Tune trials and keeps `results/<name>/` current as they report.

Shared by `raycity.cv` (one variant) and `raycity.sweep` (many). Ray stays here and in
`trainable.py`; everything below `run_fold` is plain PyTorch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from raycity.checkpoint import load_checkpoint, save_checkpoint
from raycity.config import Config, RunOptions, config_json
from raycity.data import find_samples, synthetic_root
from raycity.engine import LossFn, cross_entropy
from raycity.folds import FoldSplit, load_folds, make_folds, save_folds
from raycity.results import (
    EPOCH_COLUMNS,
    atomic_write_parquet,
    atomic_write_text,
    epochs_frame,
    summarize,
    table1_markdown,
)

EXPERIMENT_NAME = "tune"  # Tune's experiment folder inside the run dir (local storage)


class RunError(RuntimeError):
    """A run that cannot start or resume as asked; the message says what to do."""


@dataclass(frozen=True)
class Variant:
    """One configuration of hyperparameters; it is trained on every fold."""

    config_id: str
    overrides: dict[str, Any] = field(default_factory=dict)


def data_root_for(cfg: Config) -> tuple[str, bool]:
    """(root, synthetic?) — the user's data, `$CITYSCAPES_DATASET`, or generated scenes."""
    if cfg.data_root:
        return os.path.abspath(cfg.data_root), False
    root = synthetic_root({"train": cfg.synthetic_train, "val": cfg.synthetic_val},
                          cfg.synthetic_size, seed=cfg.seed)
    return str(root), True


@dataclass
class RunState:
    """What `run.json` records so that `--resume` can find and check everything again."""

    kind: str
    config: Config
    variants: list[Variant]
    data_root: str
    synthetic: bool
    storage_path: str
    experiment_name: str
    hparams: list[str]
    metric: str = "miou_full"

    def to_json(self) -> str:
        return json.dumps({
            "kind": self.kind, "variants": [v.__dict__ for v in self.variants],
            "data_root": self.data_root, "synthetic": self.synthetic,
            "storage_path": self.storage_path, "experiment_name": self.experiment_name,
            "hparams": self.hparams, "metric": self.metric}, indent=1)

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        try:
            raw = json.loads((run_dir / "run.json").read_text())
            config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
        except (OSError, ValueError) as err:
            raise RunError(f"{run_dir}: not a raycity run that can be resumed ({err})") from err
        return cls(raw["kind"], config, [Variant(**v) for v in raw["variants"]],
                   raw["data_root"], raw["synthetic"], raw["storage_path"],
                   raw["experiment_name"], raw["hparams"], raw.get("metric", "miou_full"))

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.experiment_name}"


def check_run_dir(opts: RunOptions) -> Path:
    """A new run must not silently merge into an old one; `--resume` needs one that exists."""
    run_dir = Path(opts.run_dir)
    if opts.resume:
        if not (run_dir / "run.json").is_file():
            raise RunError(f"--resume {run_dir}: no such run (no run.json there)")
    elif run_dir.exists() and any(run_dir.iterdir()) and not opts.overwrite:
        raise RunError(f"{run_dir} already exists; pass --resume {run_dir} to continue it, "
                       f"--overwrite to replace it, or --name to start another")
    return run_dir


def create_run_dir(run_dir: Path) -> None:
    """Called once Ray is up, so that a run that cannot start leaves nothing behind."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # --overwrite, checked by check_run_dir
    run_dir.mkdir(parents=True)


def check_resume_flags(saved: Config, explicit: dict[str, Any]) -> None:
    """On --resume, a flag that contradicts the saved config is an error, never a silent change."""
    clashes = {k: (v, getattr(saved, k)) for k, v in explicit.items() if getattr(saved, k) != v}
    if clashes:
        detail = ", ".join(f"{k}={new!r} (saved {old!r})" for k, (new, old) in clashes.items())
        raise RunError(f"--resume continues the saved config; these flags contradict it: {detail}")


def trial_key(trial: Any) -> tuple[str, int]:
    return trial.config["variant"]["config_id"], int(trial.config["fold"])


def short_error(text: str) -> str:
    """The line of a trial's traceback that says what went wrong."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line
    return lines[-1] if lines else "unknown error"


def make_recorder(run_dir: Path, state: RunState, echo: Callable[[str], None]):
    """A Tune callback (built lazily so that importing this module does not import Ray)."""
    from ray import tune

    class RunRecorder(tune.Callback):
        """Driver-side: rewrites epochs.parquet and Table 1 atomically on every result."""

        def __init__(self) -> None:
            self.rows: list[dict] = []
            self.status: dict[tuple[str, int], str] = {}
            self.writers: dict[str, Any] = {}

        def __getstate__(self) -> dict:
            return {**self.__dict__, "rows": [], "writers": {}}

        def setup(self, **info: Any) -> None:
            path = run_dir / "epochs.parquet"
            if path.is_file() and not self.rows:  # a resumed driver continues the table
                self.rows = pd.read_parquet(path).to_dict("records")
            status_file = run_dir / "status.json"
            if status_file.is_file():
                self.status = {(c, int(f)): s for c, f, s in json.loads(status_file.read_text())}

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            config_id, fold = trial_key(trial)
            overrides = trial.config["variant"]["overrides"]
            row = {k: result[k] for k in EPOCH_COLUMNS if k in result}
            row.update({"config_id": config_id, "fold": fold,
                        **{h: overrides.get(h, getattr(state.config, h)) for h in state.hparams}})
            self.rows.append(row)
            self.status.pop((config_id, fold), None)
            self.flush(fold)
            self.tensorboard(config_id, fold, row)
            echo(progress_line(state, config_id, fold, row))

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            key = trial_key(trial)
            error = trial.get_error()
            self.status[key] = f"failed: {short_error(error)}"
            echo(f"[{key[0]} fold {key[1]}] FAILED: {short_error(error)}")
            self.flush()

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.flush()

        def on_experiment_end(self, trials, **info) -> None:
            for writer in self.writers.values():
                writer.close()
            self.writers.clear()

        def tensorboard(self, config_id: str, fold: int, row: dict) -> None:
            from tensorboardX import SummaryWriter

            name = f"{config_id}_fold{fold}"
            if name not in self.writers:
                self.writers[name] = SummaryWriter(str(run_dir / "tensorboard" / name))
            w, step = self.writers[name], int(row["epoch"])
            for key in ("train_loss", "val_loss", "miou_low", "miou_full", "lr"):
                if key in row:
                    w.add_scalar(f"{key}", row[key], step)
            w.flush()

        def flush(self, fold: int | None = None) -> None:
            epochs = epochs_frame(self.rows)
            write_tables(run_dir, state, epochs, self.status)
            if fold is not None and state.kind == "cv":  # curves follow the run as it goes
                from raycity.figures import cv_history, fold_history

                fold_history(epochs, fold, run_dir / "figures" / f"fold{fold}_history.png")
                cv_history(epochs, run_dir / "figures" / "cv_history.png")

    return RunRecorder()


def progress_line(state: RunState, config_id: str, fold: int, row: dict) -> str:
    who = f"fold {fold}" if state.kind == "cv" else f"{config_id} fold {fold}"
    return (f"[{who}] epoch {row['epoch']}/{state.config.epochs}  "
            f"loss {row['train_loss']:.3f}/{row['val_loss']:.3f}  "
            f"mIoU low {row['miou_low']:.4f} full {row['miou_full']:.4f}  "
            f"lr {row['lr']:.2g}  {row['epoch_seconds']:.1f} s")


def write_tables(run_dir: Path, state: RunState, epochs: pd.DataFrame,
                 status: dict[tuple[str, int], str]) -> pd.DataFrame | None:
    atomic_write_parquet(epochs, run_dir / "epochs.parquet")
    atomic_write_text(run_dir / "status.json", json.dumps([[c, f, s] for (c, f), s in status.items()]))
    if epochs.empty and not status:
        return None
    summary = summarize(epochs, status)
    atomic_write_parquet(summary, run_dir / "summary.parquet")
    if state.kind == "cv":
        atomic_write_text(run_dir / "summary.md", table1_markdown(
            summary, state.config.image_size, full_label_size(state.data_root)))
    return summary


@functools.lru_cache(maxsize=8)
def full_label_size(data_root: str) -> tuple[int, int] | None:
    """(height, width) of the labels, for Table 1's caption; read once per data root."""
    try:
        from PIL import Image

        first = find_samples(data_root, "train")[0]
        with Image.open(first.label_path) as im:
            return im.height, im.width
    except Exception:  # only a caption; never fail a run over it
        return None


def connect_ray(opts: RunOptions) -> bool:
    """Join `--address` or start a local Ray; True when this call started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if opts.address:
        check_reachable(opts.address)
        try:
            ray.init(address=opts.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise RunError(f"--address {opts.address}: cannot connect to a Ray cluster ({err}); "
                           f"start one with `ray start --head` or omit --address") from err
        return True
    context = ray.init(num_cpus=opts.num_cpus, include_dashboard=opts.dashboard,
                       dashboard_host=opts.dashboard_host, log_to_driver=False,
                       configure_logging=True, logging_level="WARNING")
    if opts.dashboard and context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
    return True


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable GCS for minutes; a TCP probe answers at once."""
    if address == "auto":
        return
    host_port = address.removeprefix("ray://").rsplit(":", 1)
    if len(host_port) != 2 or not host_port[1].isdigit():
        raise RunError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host_port[0], int(host_port[1])), timeout=timeout_s).close()
    except OSError as err:
        raise RunError(f"--address {address}: cannot connect to a Ray cluster ({err}); start one "
                       f"with `ray start --head` or omit --address") from err


GIB = 2**30


def trial_memory_bytes(cfg: Config, on_gpu: bool) -> int:
    """Host memory one trial needs, requested from Ray so that it never starts more trials than
    fit: weights, gradients, Adam state and a checkpoint being serialised (≈ 3 GiB for the
    147 M-parameter model), plus, when training on the CPU, the activations (4.86 GiB measured
    at 512×1024, batch 2, by benchmarks/memory.py), scaled by pixels × batch."""
    need = 3 * GIB
    if not on_gpu:
        h, w = cfg.image_size
        need += int(4.86 * GIB * h * w * cfg.batch_size / (512 * 1024 * 2))
    return need


def default_cpus_per_trial(trials: int, memory_per_trial: int) -> float:
    """A fair share of the CPUs among the trials that fit in memory together: fractional shares
    (one torch thread each) when those outnumber the CPUs, else whole CPUs, at most 8."""
    import ray

    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 1)
    parallel = min(trials, max(1, int(resources.get("memory", 0) // memory_per_trial)))
    if parallel > cpus:
        return math.floor(1000 * cpus / parallel) / 1000  # rounding up would leave one out
    return float(max(1, min(8, int(cpus // parallel))))


def check_fits(memory_per_trial: int) -> None:
    """A trial that no node can hold would wait forever; say so instead."""
    import ray

    largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")),
                  default=0)
    if largest < memory_per_trial:
        raise RunError(f"one trial needs about {memory_per_trial / GIB:.1f} GiB of host memory "
                       f"and the largest Ray node offers {largest / GIB:.1f} GiB; lower "
                       f"--batch-size or --image-size, or train on a GPU")


def run_experiment(kind: str, cfg: Config, opts: RunOptions, variants: Sequence[Variant], *,
                   hparams: Sequence[str] = (), metric: str = "miou_full", scheduler: Any = None,
                   explicit: dict[str, Any] | None = None, loss_fn: LossFn = cross_entropy,
                   echo: Callable[[str], None] | None = None) -> tuple[Path, pd.DataFrame | None]:
    """Train every variant on every fold; returns the run dir and the final summary.

    `loss_fn` exists for tests (e.g. to inject a non-finite loss); the CLIs never set it.
    """
    # Tune's own console blocks point at its temp folders; raycity prints one line per epoch
    # and where the results are. (Setting RAY_AIR_NEW_OUTPUT=1 brings Tune's back.)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every epoch is the point; Tune's warnings about it are noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")
    from ray import tune

    echo = echo or (lambda line: print(line, flush=True))
    run_dir = check_run_dir(opts)
    if opts.resume:
        state = RunState.load(run_dir)
        check_resume_flags(state.config, explicit or {})
        folds, _ = load_folds(run_dir / "folds.json")
    else:
        # Everything that can be wrong with the data is found before anything is written.
        root, synthetic = data_root_for(cfg)
        samples = find_samples(root, "train")
        folds = make_folds([s.key for s in samples], cfg.folds, cfg.seed,
                           groups=[s.city for s in samples] if cfg.group_by == "city" else None)
        if opts.storage_path:
            storage, experiment = opts.storage_path, opts.name
        else:
            storage, experiment = str(run_dir), EXPERIMENT_NAME
        state = RunState(kind, cfg, list(variants), root, synthetic, storage, experiment,
                         list(hparams), metric)
    cfg = state.config
    if state.synthetic:
        echo(banner(state.data_root))

    started = connect_ray(opts)
    try:
        if not opts.resume:
            create_run_dir(run_dir)
            save_folds(run_dir / "folds.json", folds, {"k": cfg.folds, "seed": cfg.seed,
                                                       "group_by": cfg.group_by,
                                                       "data_root": state.data_root})
            atomic_write_text(run_dir / "config.json", config_json(cfg))
            atomic_write_text(run_dir / "run.json", state.to_json())
        n_trials = len(state.variants) * len(folds)
        memory = trial_memory_bytes(cfg, on_gpu=opts.gpus_per_trial > 0)
        check_fits(memory)
        cpus = opts.cpus_per_trial or default_cpus_per_trial(n_trials, memory)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable(), cfg=cfg, folds={f.fold: f for f in folds},
                                 data_root=state.data_root, loss_fn=loss_fn),
            {"cpu": cpus, "gpu": opts.gpus_per_trial, "memory": memory})
        t0 = time.time()
        if opts.resume and tune.Tuner.can_restore(state.experiment_path):
            tuner = tune.Tuner.restore(state.experiment_path, trainable,
                                       resume_unfinished=True, resume_errored=True)
        else:
            tuner = build_tuner(trainable, state, folds, opts, scheduler,
                                make_recorder(run_dir, state, echo))
        grid = tuner.fit()
        echo(f"{n_trials} trial(s) ended in {time.time() - t0:.0f} s")
        status = {}
        for result in grid:
            key = (result.config["variant"]["config_id"], int(result.config["fold"]))
            if result.error is not None:
                status[key] = f"failed: {short_error(result.error)}"
            else:
                export_best(run_dir, state, key, result)
        if not status and not opts.keep_trial_checkpoints:
            for result in grid:
                drop_trial_checkpoints(result)
    finally:
        if started:
            import ray

            ray.shutdown()
    epochs = pd.read_parquet(run_dir / "epochs.parquet") if (run_dir / "epochs.parquet").is_file() \
        else epochs_frame([])
    summary = write_tables(run_dir, state, epochs, status)
    return run_dir, summary


def _trainable():
    from raycity.trainable import train_fold

    return train_fold


def build_tuner(trainable: Any, state: RunState, folds: Sequence[FoldSplit], opts: RunOptions,
                scheduler: Any, recorder: Any):
    from ray import tune

    def name(trial: Any) -> str:
        config_id, fold = trial_key(trial)
        return f"{config_id}_fold{fold}"

    return tune.Tuner(
        trainable,
        param_space={"variant": tune.grid_search([v.__dict__ for v in state.variants]),
                     "fold": tune.grid_search([f.fold for f in folds])},
        tune_config=tune.TuneConfig(scheduler=scheduler, trial_name_creator=name,
                                    trial_dirname_creator=name, reuse_actors=False),
        run_config=tune.RunConfig(
            name=state.experiment_name, storage_path=state.storage_path,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="miou_low",
                checkpoint_score_order="max"),
            callbacks=[recorder], verbose=0),
    )


def export_best(run_dir: Path, state: RunState, key: tuple[str, int], result: Any) -> None:
    """The fold's best model (weights + metadata, no optimizer) as checkpoints/<id>fold<k>.pt."""
    best = result.get_best_checkpoint("miou_low", "max") or result.checkpoint
    if best is None:
        return
    with best.as_directory() as directory:
        ckpt = load_checkpoint(Path(directory))
    prefix = "" if state.kind == "cv" else f"{key[0]}_"
    save_checkpoint(run_dir / "checkpoints" / f"{prefix}fold{key[1]}.pt",
                    {"model": ckpt["model"], "meta": ckpt["meta"]})


def drop_trial_checkpoints(result: Any) -> None:
    """Tune's per-epoch checkpoints (1.8 GB each: weights + Adam state) exist to resume; once
    every fold has finished and its best model is exported, they are only disk to fill."""
    import pyarrow.fs

    fs = result.filesystem
    for info in fs.get_file_info(pyarrow.fs.FileSelector(result.path, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            fs.delete_dir(info.path)


def banner(root: str) -> str:
    bar = "=" * 78
    return (f"{bar}\nDEMO on synthetic street scenes (generated in {root}).\n"
            f"No Cityscapes data was given. For the real study:\n"
            f"  python -m raycity.cv --data-root /path/to/cityscapes --preset seed\n"
            f"(or set $CITYSCAPES_DATASET). The folder must hold leftImg8bit/ and gtFine/.\n{bar}")



