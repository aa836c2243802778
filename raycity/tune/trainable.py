"""The Ray Tune function trainable for one fold: the only place that calls `tune.report`."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from raycity.config import Config
from raycity.errors import UserError, short_error
from raycity.foldfiles import STATE_DIR
from raycity.folds import FoldSplit
from raycity.foldstates import FoldCheckpoints

POINTER = "state.json"  # what Tune's own (tiny) checkpoint holds: the name of a state file
USER_ERROR = "user_error"  # a result key: this trial is about to fail for a reason a retry repeats


def device_for(gpu_ids: Sequence[int | str], visible: str | None) -> torch.device:
    """The torch device for the GPUs Ray granted a trial, and only those.

    Ray hides other GPUs by setting CUDA_VISIBLE_DEVICES to the granted ids, so the first one
    is `cuda:<its position in that list>`; none granted means the CPU, even on a GPU node.
    """
    if not gpu_ids:
        return torch.device("cpu")
    first = str(gpu_ids[0])
    order = [v.strip() for v in visible.split(",")] if visible else []
    return torch.device("cuda", order.index(first) if first in order else int(first))


def trial_device() -> torch.device:
    return device_for(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def train_fold(params: dict[str, Any], *, cfg: Config, folds: dict[int, FoldSplit],
               data_root: str, fold_fn: Callable[..., None] | None = None,
               sync_epochs: Collection[int] = (), keep_states: bool = False) -> None:
    """`params` = {"variant": {"config_id", "overrides"}, "fold"}; fixed inputs come through
    `tune.with_parameters`, so every fold of a variant trains with identical hyperparameters.

    `fold_fn` is `run_fold` (None: the same, imported here); tests and benchmarks pass
    stand-ins with its signature, and a trial process that runs one never loads the model, the
    data pipeline or torchvision (≈ 2 s of CPU per trial).
    """
    if fold_fn is None:
        from raycity.training import run_fold as fold_fn
    variant = params["variant"]
    fold = folds[int(params["fold"])]
    context = tune.get_context()
    cpus = context.get_trial_resources().required_resources.get("CPU", 1)
    device = trial_device()
    extra = {"config_id": variant["config_id"], "node_id": ray.get_runtime_context().get_node_id(),
             "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids())}
    storage = context.get_storage()
    checkpoints = FoldCheckpoints(f"{storage.trial_fs_path}/{STATE_DIR}",
                                  storage.storage_filesystem,
                                  labels={"config_id": variant["config_id"],
                                          "overrides": variant["overrides"]},
                                  keep_states=keep_states)

    def report(metrics: dict[str, Any], saved: str | None) -> None:
        if saved is None:
            tune.report({**metrics, **extra})
            return
        with tempfile.TemporaryDirectory(prefix="raycity-pointer-") as directory:
            (Path(directory) / POINTER).write_text(json.dumps({"state": saved}))
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(directory))

    try:
        cfg = cfg.replace(**variant["overrides"])
        fold_fn(cfg, fold, data_root, report, checkpoints=checkpoints, sync_epochs=sync_epochs,
                cpus=cpus, device=device)
    except UserError as err:
        # The driver's recorder reads this and lets the error end the trial without a retry.
        tune.report({USER_ERROR: short_error(f"{type(err).__name__}: {err}"), **extra})
        raise
