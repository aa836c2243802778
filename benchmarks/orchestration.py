"""What Ray Tune and checkpointing cost per epoch, at GPU-speed epoch lengths, on a CPU box.

The fold's compute is replaced by a stand-in of a given length per epoch (default 13 s — the
projected seed epoch on an H100 — then 30 s and 60 s): each epoch takes one real Adam step on
the real 147 M-parameter model (so weights and Adam moments are real, 1.77 GB) and sleeps for
the rest, with a validation score that improves every epoch (the worst case for best-weights
writes). Everything else is real: `run_fold`, raycity's checkpoints, Ray Tune, the recorder.

It prints, per epoch length, the same fold run in-process without checkpoints against 3 folds
through Ray Tune with checkpoints (the three writing at once, as on a 3-GPU box): the per-epoch
overhead in steady state (epochs after the first, from Tune's `time_this_iter_s`), the whole
run's wall-clock overhead (with Ray's start-up and the end-of-fold exports), and the checkpoint
bytes written per fold-epoch.

    python benchmarks/orchestration.py [--stand-in 13 30 60] [--epochs 4]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

from raycity.config import SEED_DECODER, RunOptions, preset  # noqa: E402
from raycity.constants import NUM_CLASSES  # noqa: E402
from raycity.data import find_samples, synthetic_root  # noqa: E402
from raycity.engine import EvalStats, TrainStats  # noqa: E402
from raycity.folds import make_folds  # noqa: E402
from raycity.training import FoldSteps, run_fold  # noqa: E402

TRAIN_SHARE = 0.8  # of a stand-in epoch; the rest is evaluation


class StandIn:
    """`FoldSteps` whose epoch lasts `seconds`: one real optimizer step, then sleep."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.epoch = 0

    def train(self, model, loader, optimizer, speed, **kwargs) -> TrainStats:
        start = time.perf_counter()
        self.epoch += 1
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-3)
        optimizer.step()  # real Adam moments, real weight updates
        optimizer.zero_grad(set_to_none=True)
        time.sleep(max(0.0, TRAIN_SHARE * self.seconds - (time.perf_counter() - start)))
        return TrainStats(1.0 / self.epoch, 1, time.perf_counter() - start, 0)

    def validate(self, model, loader, speed, **kwargs) -> EvalStats:
        start = time.perf_counter()
        cm = torch.eye(NUM_CLASSES, dtype=torch.int64) * (100 * self.epoch)
        cm += 100  # a score that rises every epoch: every epoch is a new best
        time.sleep(max(0.0, (1 - TRAIN_SHARE) * self.seconds))
        return EvalStats(1.0 / self.epoch, cm, cm, 1, time.perf_counter() - start, 0)


def stand_in_fold(cfg, split, root, report, *, seconds: float, **kwargs) -> None:
    """`run_fold` with the stand-in compute, for Ray Tune's trainable (same signature)."""
    standin = StandIn(seconds)
    run_fold(cfg, split, root, report, steps=FoldSteps(standin.train, standin.validate), **kwargs)


def in_process(cfg, root: str, seconds: float) -> float:
    """Wall seconds of one fold, in-process, no checkpoints: the stand-in and nothing else."""
    fold = make_folds([s.key for s in find_samples(root, "train")], cfg.folds, cfg.seed)[0]
    start = time.perf_counter()
    stand_in_fold(cfg, fold, root, lambda metrics, saved: None, seconds=seconds)
    return time.perf_counter() - start


def through_tune(cfg, seconds: float, work: Path) -> tuple[float, pd.DataFrame]:
    from raycity.tune.experiment import Variant, run_experiment

    opts = RunOptions(name="bench", output=str(work), max_failures=0, num_cpus=2)
    start = time.perf_counter()
    run_dir, _ = run_experiment("cv", cfg, opts, [Variant("cv")], echo=lambda line: None,
                                fold_fn=functools.partial(stand_in_fold, seconds=seconds))
    wall = time.perf_counter() - start
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    # Tune's wall time between two reports of a trial: the epoch plus everything around it
    iters = []
    for result in (run_dir / "tune").glob("*/result.json"):
        for line in result.read_text().splitlines():
            row = json.loads(line)
            if "epoch" in row:
                iters.append({"fold": row["fold"], "epoch": row["epoch"],
                              "iter_s": row["time_this_iter_s"]})
    return wall, epochs.merge(pd.DataFrame(iters), on=["fold", "epoch"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stand-in", type=float, nargs="+", default=[13.0, 30.0, 60.0],
                   help="seconds per stand-in epoch")
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    rows = []
    for seconds in args.stand_in:
        cfg = preset("smoke", decoder_channels=SEED_DECODER, epochs=args.epochs, num_workers=0)
        root = str(synthetic_root({"train": cfg.synthetic_train, "val": cfg.synthetic_val},
                                  cfg.synthetic_size, cfg.seed))
        plain = in_process(cfg, root, seconds)
        with tempfile.TemporaryDirectory() as tmp:
            wall, epochs = through_tune(cfg, seconds, Path(tmp))
        steady = epochs[epochs["epoch"] > 1]
        per_epoch = steady["iter_s"].mean()
        rows.append([f"{seconds:.0f} s", f"{plain:.1f}", f"{wall:.1f}",
                     f"{100 * (wall / plain - 1):+.1f} %", f"{per_epoch:.2f} s",
                     f"{100 * (per_epoch / seconds - 1):+.1f} %",
                     f"{steady['checkpoint_seconds'].mean():.2f} s",
                     f"{epochs['checkpoint_bytes'].sum() / len(epochs) / 1e9:.2f} GB",
                     f"{int((epochs['checkpoint_bytes'] > 1.5e9).sum())}/{len(epochs)}"])
        print(rows[-1], flush=True)
    print(f"\n## Orchestration by simulation (stand-in epochs, 3 folds × {args.epochs} epochs "
          f"through Ray Tune vs 1 fold in-process)\n")
    print(table(["stand-in epoch", "in-process s", "Ray Tune s", "whole run", "Tune epoch",
                 "per-epoch overhead", "checkpoint in loop", "written / fold-epoch",
                 "full states written"], rows))
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
