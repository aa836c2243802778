"""The Ray Tune function trainable for one fold: the only place that calls `tune.report`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from raycity.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from raycity.config import Config
from raycity.engine import LossFn, cross_entropy
from raycity.folds import FoldSplit
from raycity.training import run_fold


def train_fold(params: dict[str, Any], *, cfg: Config, folds: dict[int, FoldSplit],
               data_root: str, loss_fn: LossFn = cross_entropy) -> None:
    """`params` = {"variant": {"config_id", "overrides"}, "fold"}; fixed inputs come through
    `tune.with_parameters`, so every fold of a variant trains with identical hyperparameters."""
    variant = params["variant"]
    cfg = cfg.replace(**variant["overrides"])
    fold = folds[int(params["fold"])]
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)

    node_id = ray.get_runtime_context().get_node_id()
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(Path(directory) / FILENAME)

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="raycity-ckpt-") as directory:
            save_checkpoint(Path(directory) / FILENAME, state)
            tune.report({**metrics, "config_id": variant["config_id"], "node_id": node_id},
                        checkpoint=tune.Checkpoint.from_directory(directory))

    run_fold(cfg, fold, data_root, report, resume=resume, threads=threads, loss_fn=loss_fn)
