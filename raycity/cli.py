"""Flags shared by `raycity.cv` and `raycity.sweep`: they build the one `Config` and `RunOptions`."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raycity.config import PRESETS, Config, ConfigError, RunOptions, preset
from raycity.errors import Interrupted, UserError, find_storage_error
from raycity.mlflowsetup import INSTALL
from raycity.run import RunDir
from raycity.speed import SWITCH

if TYPE_CHECKING:
    from raycity.tracking import Tracker


def image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 512x1024") from err
    return h, w


def channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected five comma-separated widths, e.g. 2048,1024,512,256,64") from err


# flag → Config field, for every recipe flag; None default = "not given, keep the preset's"
RECIPE_FLAGS: dict[str, tuple[str, Any, str]] = {
    "epochs": ("--epochs", int, "epochs per fold"),
    "image_size": ("--image-size", image_size, "training size HEIGHTxWIDTH (seed: 512x1024)"),
    "batch_size": ("--batch-size", int, "images per step (seed: 2)"),
    "lr": ("--lr", float, "Adam learning rate (seed: 1e-4)"),
    "weight_decay": ("--weight-decay", float, "Adam weight decay"),
    "dropout": ("--dropout", float, "Dropout2d probability in the bottleneck"),
    "decoder_channels": ("--decoder-channels", channels,
                         "widths of the bottleneck and the 4 decoder stages "
                         "(seed: 2048,1024,512,256,64; smoke: 256,128,64,32,16)"),
    "folds": ("--folds", int, "K of K-fold cross-validation (seed: 3)"),
    "repeats": ("--repeats", int, "repeated K-fold: R independent splits, R × K fold trials "
                                  "(default: 1)"),
    "seed": ("--seed", int, "seed of the fold split and of training"),
    "pretrained": ("--pretrained", str, "encoder weights: imagenet | none | PATH"),
    "plateau_metric": ("--plateau-metric", str, "ReduceLROnPlateau watches val_loss or miou_low"),
    "num_workers": ("--num-workers", int, "DataLoader workers (default: from --cpus-per-trial)"),
    "synthetic_train": ("--synthetic-train", int, "synthetic train images (demo data only)"),
    "max_pixels": ("--max-pixels", int, "refuse images or labels with more pixels than this, "
                                        "from their PNG headers (default: 64000000)"),
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
    speed = parser.add_argument_group(
        "speed", "auto: on for CUDA, off on the CPU; on: on the CPU too (bf16 autocast and "
                 "channels-last run there, faster on CPUs with AMX)")
    speed.add_argument("--amp", choices=SWITCH, default=None,
                       help="autocast: bf16, or fp16 with loss scaling on GPUs without native "
                            "bf16 (default: auto)")
    speed.add_argument("--no-amp", dest="amp", action="store_const", const="off",
                       help="same as --amp off: train in fp32")
    speed.add_argument("--channels-last", choices=SWITCH, default=None,
                       help="NHWC layout of the model and its inputs (default: auto)")
    speed.add_argument("--no-channels-last", dest="channels_last", action="store_const",
                       const="off", help="same as --channels-last off")
    speed.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_const",
                       const=False, default=None)
    speed.add_argument("--compile", action="store_const", const=True, default=None,
                       help="torch.compile the model (inductor; on the CPU too)")
    run = parser.add_argument_group("run")
    run.add_argument("--name", help="run name (default: <preset>-<date>-<time>)")
    run.add_argument("--output", default="results", help="folder holding runs (default: results)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run, e.g. results/demo-20261124-101500")
    run.add_argument("--overwrite", action="store_true", help="replace a run of the same name")
    run.add_argument("--gpus-per-trial", type=float, default=None,
                     help="GPUs per fold: 0, 1, or a fraction that packs folds on a GPU "
                          "(default: 1 when the Ray cluster has GPUs, else 0)")
    run.add_argument("--cpus-per-trial", type=float, default=None,
                     help="CPUs per fold: its torch threads on CPU, its loader workers + 1 on "
                          "CUDA (default: a share of the CPUs among the folds that can run at "
                          "once)")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    run.add_argument("--max-failures", type=int, default=2,
                     help="restarts of a crashed fold from its last checkpoint (default: 2)")
    run.add_argument("--ray-logs", action="store_true",
                     help="show Ray's own log lines on the console (they always go to "
                          "results/<name>/ray.log)")
    run.add_argument("--keep-trial-checkpoints", action="store_true",
                     help="keep Tune's per-epoch checkpoints after a run that finished cleanly "
                          "(default: only each fold's best model is kept, in checkpoints/)")
    track = parser.add_argument_group("tracking")
    track.add_argument("--mlflow", action="store_true",
                       help="log the run to MLflow: a parent run with a child per fold "
                            f"(needs {INSTALL})")
    track.add_argument("--mlflow-uri", metavar="URI",
                       help="tracking URI (implies --mlflow; default: $MLFLOW_TRACKING_URI, "
                            "else sqlite:///<output>/mlflow.db, shared by the runs there)")
    track.add_argument("--mlflow-experiment", metavar="NAME", default="raycity",
                       help="MLflow experiment (default: raycity)")
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


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_writable(path: Path, flag: str) -> None:
    """The folder, or the nearest part of it that exists, must take new files: tried with a real
    file, since permission bits say nothing for root or on a read-only mount."""
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write in {existing} ({err.strerror}); choose "
                          f"another folder") from err


def build_options(args: argparse.Namespace, preset_name: str) -> RunOptions:
    if args.resume:
        run_dir = Path(args.resume)
        name, output = run_dir.name, str(run_dir.parent)
        check_writable(run_dir, "--resume")
    else:
        name = args.name or f"{preset_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not NAME.match(name) or ".." in name:
            raise ConfigError(f"--name {name!r}: expected a plain folder name (letters, digits, "
                              f"'.', '_', '+', '-'; no path separators or '..'); runs go inside "
                              f"--output")
        output = args.output
        check_writable(Path(output), "--output")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures {args.max_failures}: expected a number ≥ 0 (restarts "
                          f"of a crashed fold; Ray would retry a negative number forever)")
    gpus = args.gpus_per_trial
    if gpus is not None and not (0 <= gpus <= 1):
        raise ConfigError(f"--gpus-per-trial {gpus:g}: expected 0 (CPU), 1 (a whole GPU per fold) "
                          f"or a fraction to pack folds on one GPU (0.5, 0.33); one fold trains "
                          f"on one device")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial {args.cpus_per_trial:g}: expected a number > 0")
    return RunOptions(name=name, output=output, address=args.address,
                      storage_path=args.storage_path, cpus_per_trial=args.cpus_per_trial,
                      gpus_per_trial=gpus, num_cpus=args.num_cpus, dashboard=args.dashboard,
                      dashboard_host=args.dashboard_host, max_failures=args.max_failures,
                      keep_trial_checkpoints=args.keep_trial_checkpoints, ray_logs=args.ray_logs,
                      resume=bool(args.resume), overwrite=args.overwrite,
                      mlflow=args.mlflow or bool(args.mlflow_uri), mlflow_uri=args.mlflow_uri,
                      mlflow_experiment=args.mlflow_experiment)


def tracker_for(opts: RunOptions, echo: Callable[[str], None] = print) -> Tracker | None:
    """A tracker when --mlflow asks for one, or when the run being resumed was tracked (it
    continues in its own store); checked before anything launches."""
    from raycity.mlflowsetup import check_installed, tracking_uri
    from raycity.tracking import Tracker

    if not (opts.mlflow or (opts.resume and RunDir(opts.run_dir).tracking.is_file())):
        return None
    check_installed()
    return Tracker(tracking_uri(opts.output, opts.mlflow_uri), opts.mlflow_experiment, echo)


def guarded(args: argparse.Namespace, command: str,
            run: Callable[[Config, dict[str, Any], RunOptions], int]) -> int:
    """An entry point's run: the user's mistakes end in one line (exit 2), a signal in the line
    that says how to continue (exit 128 + its number), whatever raised them."""
    opts = None
    try:
        cfg, explicit, preset_name = build_config(args)
        opts = build_options(args, preset_name)
        return run(cfg, explicit, opts)
    except user_errors() as err:
        return fail(err)
    except Exception as err:
        if (full := find_storage_error(err)) is None:
            raise
        return fail(full)  # the disk filled under a table, a figure or Tune's own files
    except Interrupted as stopped:
        return interrupted(opts, stopped.signum, command)
    except KeyboardInterrupt:  # before the run's own signal handling was in place
        return interrupted(opts, command=command)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one line, never as a traceback."""
    return (UserError, FileNotFoundError)


def keep_token_auth_quietly() -> None:
    """Ray's token authentication stays on; saying so explicitly (RAY_AUTH_MODE=token) also
    keeps Ray from announcing it on the console. Ray reads the mode when it is imported, so
    this only happens before that — set later, driver and cluster would disagree."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def fail(message: object) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def interrupted(opts: RunOptions | None, signum: int = signal.SIGINT,
                command: str = "python -m raycity.cv") -> int:
    """One line for a stopped run, and the shell's exit code for it."""
    name = signal.Signals(signum).name
    run_dir = Path(opts.run_dir) if opts is not None else None
    if run_dir is not None and RunDir(run_dir).is_run():
        print(f"\ninterrupted ({name}): the tables in {run_dir} are consistent up to the last "
              f"epoch; continue with: {command} --resume {run_dir}", file=sys.stderr)
    else:
        print(f"\ninterrupted ({name}) before the run started; nothing was written",
              file=sys.stderr)
    return 128 + signum
