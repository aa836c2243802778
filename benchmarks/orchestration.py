"""What Ray Tune costs: 3 smoke folds as Tune trials, one at a time with all CPUs, against the same
3 folds run in-process one after another (also checkpointing every epoch), in one run; repeated
for longer epochs to show how the overhead shrinks with epoch length.

    python benchmarks/orchestration.py [--scales 1 4] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

from raycity.checkpoint import save_checkpoint  # noqa: E402
from raycity.config import RunOptions, preset  # noqa: E402
from raycity.data import find_samples, synthetic_root  # noqa: E402
from raycity.experiment import Variant, run_experiment  # noqa: E402
from raycity.folds import make_folds  # noqa: E402
from raycity.training import run_fold  # noqa: E402


def in_process(cfg, root: str, work: Path, threads: int) -> tuple[float, float]:
    """(wall seconds, seconds inside epochs) for the plain sequential baseline."""
    samples = find_samples(root, "train")
    folds = make_folds([s.key for s in samples], cfg.folds, cfg.seed)
    epoch_s = 0.0

    def report(metrics, state):
        nonlocal epoch_s
        epoch_s += metrics["epoch_seconds"]
        save_checkpoint(work / "checkpoint.pt", state)  # a plain loop checkpoints too

    start = time.perf_counter()
    for fold in folds:
        run_fold(cfg, fold, root, report, threads=threads)
    return time.perf_counter() - start, epoch_s


def through_tune(cfg, work: Path, cpus: int) -> tuple[float, float]:
    opts = RunOptions(name="bench", output=str(work), cpus_per_trial=float(cpus), num_cpus=cpus,
                      max_failures=0)
    start = time.perf_counter()
    run_dir, _ = run_experiment("cv", cfg, opts, [Variant("cv")], echo=lambda line: None)
    wall = time.perf_counter() - start
    import pandas as pd

    return wall, float(pd.read_parquet(run_dir / "epochs.parquet")["epoch_seconds"].sum())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4],
                   help="multiples of the smoke preset's 6 training images (longer epochs)")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    rows = []
    for scale in args.scales:
        cfg = preset("smoke", epochs=args.epochs, synthetic_train=6 * scale)
        root = str(synthetic_root({"train": cfg.synthetic_train, "val": cfg.synthetic_val},
                                  cfg.synthetic_size, cfg.seed))
        with tempfile.TemporaryDirectory() as tmp:
            plain_wall, plain_epochs = in_process(cfg, root, Path(tmp), cpus)
        with tempfile.TemporaryDirectory() as tmp:
            tune_wall, tune_epochs = through_tune(cfg, Path(tmp), cpus)
        rows.append([f"{6 * scale} images", f"{plain_epochs / (3 * args.epochs):.1f} s",
                     f"{plain_wall:.1f}", f"{tune_wall:.1f}",
                     f"{100 * (tune_wall / plain_wall - 1):+.1f} %"])
    print(f"## Orchestration (3 folds × {args.epochs} epochs, smoke preset, one trial at a time "
          f"with {cpus} CPUs)\n")
    print(table(["train split", "epoch length", "in-process s", "Ray Tune s", "overhead"], rows))
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
