"""Flags shared by `raycity.cv` and `raycity.sweep`: they build the one `Config` and `RunOptions`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from raycity.config import PRESETS, Config, ConfigError, RunOptions, preset


def image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 512x1024") from err
    return h, w


# flag → Config field, for every recipe flag; None default = "not given, keep the preset's"
RECIPE_FLAGS: dict[str, tuple[str, Any, str]] = {
    "epochs": ("--epochs", int, "epochs per fold"),
    "image_size": ("--image-size", image_size, "training size HEIGHTxWIDTH (seed: 512x1024)"),
    "batch_size": ("--batch-size", int, "images per step (seed: 2)"),
    "lr": ("--lr", float, "Adam learning rate (seed: 1e-4)"),
    "weight_decay": ("--weight-decay", float, "Adam weight decay"),
    "dropout": ("--dropout", float, "Dropout2d probability in the bottleneck"),
    "folds": ("--folds", int, "K of K-fold cross-validation (seed: 3)"),
    "seed": ("--seed", int, "seed of the fold split and of training"),
    "pretrained": ("--pretrained", str, "encoder weights: imagenet | none | PATH"),
    "plateau_metric": ("--plateau-metric", str, "ReduceLROnPlateau watches val_loss or miou_low"),
    "num_workers": ("--num-workers", int, "DataLoader workers (default: from --cpus-per-trial)"),
    "synthetic_train": ("--synthetic-train", int, "synthetic train images (demo data only)"),
}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data and recipe")
    data.add_argument("--data-root", default=os.environ.get("CITYSCAPES_DATASET") or None,
                      help="Cityscapes folder with leftImg8bit/ and gtFine/ "
                           "(default: $CITYSCAPES_DATASET; none: synthetic demo scenes)")
    data.add_argument("--preset", choices=sorted(PRESETS),
                      help="named recipe: seed (the study), demo (CPU minutes), smoke (seconds); "
                           "default: seed with --data-root, demo without")
    for field, (flag, kind, text) in RECIPE_FLAGS.items():
        data.add_argument(flag, dest=field, type=kind, default=None, help=text)
    data.add_argument("--group-by", choices=["none", "city"], default=None,
                      help="keep each city inside one fold")
    data.add_argument("--skip-bad-samples", action="store_const", const=True, default=None,
                      help="skip (and count) unreadable samples instead of failing the fold")
    speed = parser.add_argument_group("speed (CUDA)")
    speed.add_argument("--no-amp", dest="amp", action="store_const", const=False, default=None,
                       help="train in fp32 instead of bf16 autocast")
    speed.add_argument("--no-channels-last", dest="channels_last", action="store_const",
                       const=False, default=None)
    speed.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_const",
                       const=False, default=None)
    speed.add_argument("--compile", action="store_const", const=True, default=None,
                       help="torch.compile the model")
    run = parser.add_argument_group("run")
    run.add_argument("--name", help="run name (default: <preset>-<date>-<time>)")
    run.add_argument("--output", default="results", help="folder holding runs (default: results)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run, e.g. results/demo-20261124-101500")
    run.add_argument("--overwrite", action="store_true", help="replace a run of the same name")
    run.add_argument("--gpus-per-trial", type=float, default=None,
                     help="GPUs per fold (default: 1 when CUDA is visible, else 0; 0.5 packs two)")
    run.add_argument("--cpus-per-trial", type=float, default=None,
                     help="CPUs per fold; also its torch threads (default: CPUs / trials, ≤ 8)")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    run.add_argument("--max-failures", type=int, default=2,
                     help="restarts of a crashed fold from its last checkpoint (default: 2)")
    run.add_argument("--keep-trial-checkpoints", action="store_true",
                     help="keep Tune's per-epoch checkpoints after a run that finished cleanly "
                          "(default: only each fold's best model is kept, in checkpoints/)")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--address", help="join a Ray cluster: auto | HOST:PORT | ray://HOST:PORT")
    cluster.add_argument("--storage-path",
                         help="shared experiment storage for multi-node runs (NFS path, s3://, gs://)")
    cluster.add_argument("--dashboard", action="store_true", help="start the Ray dashboard")
    cluster.add_argument("--dashboard-host", default="127.0.0.1",
                         help="dashboard listen address (default: 127.0.0.1, local only)")


def explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    fields = [*RECIPE_FLAGS, "skip_bad_samples", "amp", "channels_last", "cudnn_benchmark",
              "compile"]
    out = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if args.group_by is not None:
        out["group_by"] = None if args.group_by == "none" else args.group_by
    if args.data_root:
        out["data_root"] = args.data_root
    return out


def build_config(args: argparse.Namespace) -> tuple[Config, dict[str, Any], str]:
    explicit = explicit_overrides(args)
    name = args.preset or ("seed" if args.data_root else "demo")
    if name == "seed" and not args.data_root:
        raise ConfigError("--preset seed trains on real Cityscapes: pass --data-root DIR or set "
                          "$CITYSCAPES_DATASET (without data, use --preset demo)")
    return preset(name, **explicit), explicit, name


def build_options(args: argparse.Namespace, preset_name: str) -> RunOptions:
    if args.resume:
        run_dir = Path(args.resume)
        name, output = run_dir.name, str(run_dir.parent)
    else:
        name = args.name or f"{preset_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        output = args.output
    if args.gpus_per_trial is None:
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    else:
        gpus = args.gpus_per_trial
    if gpus < 0 or (args.cpus_per_trial is not None and args.cpus_per_trial <= 0):
        raise ConfigError("--gpus-per-trial must be ≥ 0 and --cpus-per-trial > 0")
    return RunOptions(name=name, output=output, address=args.address,
                      storage_path=args.storage_path, cpus_per_trial=args.cpus_per_trial or 0,
                      gpus_per_trial=gpus, num_cpus=args.num_cpus, dashboard=args.dashboard,
                      dashboard_host=args.dashboard_host, max_failures=args.max_failures,
                      keep_trial_checkpoints=args.keep_trial_checkpoints,
                      resume=bool(args.resume), overwrite=args.overwrite)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one line, never as a traceback."""
    from raycity.checkpoint import CheckpointError
    from raycity.data import DataError
    from raycity.experiment import RunError
    from raycity.folds import FoldsError
    from raycity.model import PretrainedWeightsError

    return (ConfigError, DataError, FoldsError, RunError, PretrainedWeightsError,
            CheckpointError, FileNotFoundError)


def fail(message: object) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def interrupted(opts: RunOptions | None) -> int:
    if opts is not None:
        print(f"\ninterrupted; the tables in {opts.run_dir} are consistent up to the last "
              f"epoch.\ncontinue with: --resume {opts.run_dir}", file=sys.stderr)
    return 130
