"""Wall time of the smoke CV as the training set grows ×1, ×2, ×4 — is it linear?

    python benchmarks/scaling.py [--base 6] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

from raycity.config import SEED_DECODER, RunOptions, preset  # noqa: E402
from raycity.tune.experiment import Variant, run_experiment  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", type=int, default=6, help="training images at ×1")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    cpus = os.cpu_count() or 1
    rows, first = [], None
    for factor in (1, 2, 4):
        cfg = preset("smoke", decoder_channels=SEED_DECODER, epochs=args.epochs,
                     synthetic_train=args.base * factor)
        with tempfile.TemporaryDirectory() as tmp:
            opts = RunOptions(name="scale", output=tmp, num_cpus=cpus, max_failures=0,
                              cpus_per_trial=round(cpus / cfg.folds - 0.0005, 3))
            start = time.perf_counter()
            run_experiment("cv", cfg, opts, [Variant("cv")], echo=lambda line: None)
            wall = time.perf_counter() - start
        first = first or wall
        rows.append([f"×{factor}", args.base * factor, f"{wall:.1f}", f"{wall / first:.2f}"])
    print(f"## Scaling (smoke CV, 3 folds in parallel, {args.epochs} epochs)\n")
    print(table(["data", "train images", "wall s", "vs ×1"], rows))
    print("\nLinear would read 1.00 / 2.00 / 4.00 in the last column; the fixed part (Ray start, "
          "worker start-up, model build, checkpoints) makes small runs sub-linear.")
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
