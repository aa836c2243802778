"""The seed's recipe for one fold, epoch after epoch, resumable; the caller decides where
metrics and state go (Ray Tune in `trainable.py`, a plain loop in benchmarks and tests)."""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from raycity.checkpoint import ARCH
from raycity.config import Config
from raycity.constants import CLASS_KEYS, CONFUSION, NUM_CLASSES
from raycity.data import SegmentationDataset, collate, find_samples, train_transform, val_transform
from raycity.data.cache import cached_reader
from raycity.data.dataset import SeededSampler
from raycity.data.layout import DataError, Sample, read_sample
from raycity.engine import (
    EvalStats,
    LossFn,
    NonFiniteLossError,
    TrainStats,
    cross_entropy,
    pick_device,
    rng_state,
    set_rng_state,
    train_one_epoch,
    validate,
)
from raycity.errors import UserError
from raycity.folds import FoldSplit
from raycity.foldsession import NOTICE, FoldSession
from raycity.foldstates import FoldCheckpoints
from raycity.metrics import iou_per_class, mean_iou
from raycity.model import UNetResNet50, empty_model
from raycity.seeds import derive_seed
from raycity.speed import Speed, check_device, match_layouts, resolve_speed

Report = Callable[[dict[str, Any], "str | None"], None]
CUDA_PREFETCH = 4  # batches each loader worker keeps ready for a GPU


class FoldOutOfMemoryError(UserError, torch.OutOfMemoryError):
    """The recipe does not fit the device: the same batch fails the same way on a retry."""


@dataclass(frozen=True)
class FoldSteps:
    """What one epoch runs: the engine's training and validation passes. Benchmarks replace
    them with stand-ins of a given length to measure everything around them for real."""

    train: Callable[..., TrainStats] = train_one_epoch
    validate: Callable[..., EvalStats] = validate


def cpu_split(cpus: float, device: torch.device, num_workers: int | None) -> tuple[int, int]:
    """(torch threads, DataLoader workers) from the CPUs a fold may use.

    On CUDA the model runs on the GPU and the CPUs decode and augment: one for the training loop,
    the rest as loader workers. On the CPU they compute: all of them as torch threads, decoding
    in the main process.
    """
    whole = max(1, int(cpus))
    if num_workers is not None:
        return max(1, whole - num_workers), num_workers
    if device.type == "cuda":
        return 1, whole - 1
    return whole, 0


def fold_speed(cfg: Config, device: torch.device) -> Speed:
    return resolve_speed(cfg.amp, cfg.channels_last, cfg.compile, device)


def build_model(cfg: Config, speed: Speed, *, empty: bool = False) -> torch.nn.Module:
    """The seed model on the device, in its layout; `empty` for one whose state is loaded next
    (no init)."""
    if empty:
        model = empty_model(NUM_CLASSES, dropout=cfg.dropout, device=speed.device,
                            decoder_channels=cfg.decoder_channels)
    else:
        model = UNetResNet50(NUM_CLASSES, dropout=cfg.dropout, pretrained=cfg.pretrained,
                             decoder_channels=cfg.decoder_channels)
        model = model.to(speed.device)
    return speed.layout(model)


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    # fused Adam: one kernel over all 147 M parameters (on CPU ×14 faster than the for-loop)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer):
    mode = "min" if cfg.plateau_metric == "val_loss" else "max"
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience)


def resolve_samples(root: str, split: str, keys: tuple[str, ...]) -> list[Sample]:
    """The fold's samples by key; a key missing on this node names what is missing."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: data root not visible on this node ({os.uname().nodename}); "
                        f"on a cluster the dataset must be at the same path on every worker")
    present = {s.key: s for s in find_samples(root, split)}
    missing = [k for k in keys if k not in present]
    if missing:
        raise DataError(f"{root}: {len(missing)} sample(s) of folds.json are missing, e.g. "
                        f"{missing[0]} (was the dataset changed after the split was made?)")
    return [present[k] for k in keys]


def build_loaders(cfg: Config, root: str, split: FoldSplit, device: torch.device,
                  workers: int = 0) -> tuple[DataLoader, DataLoader]:
    """Training loader (seeded order and augmentations) and the fold's validation loader."""
    readers: dict[str, Any] = {"train": {}, "val": {}}
    if cfg.use_cache:
        for part in readers:
            reader = cached_reader(root, cfg.image_size, cfg.scale_jitter, split=part)
            if reader is not None:
                readers[part] = {"reader": reader}
    png = functools.partial(read_sample, max_pixels=cfg.max_pixels)
    train_ds = SegmentationDataset(
        resolve_samples(root, "train", split.train),
        train_transform(cfg.image_size, cfg.scale_jitter, cfg.color_jitter, cfg.hflip),
        skip_bad=cfg.skip_bad_samples, **{"reader": png, **readers["train"]})
    val_ds = SegmentationDataset(resolve_samples(root, "train", split.val),
                                 val_transform(cfg.image_size), full_mask=True,
                                 skip_bad=cfg.skip_bad_samples, **{"reader": png, **readers["val"]})
    cuda = device.type == "cuda"
    common: dict[str, Any] = dict(num_workers=workers, collate_fn=collate, pin_memory=cuda,
                                  persistent_workers=workers > 0, worker_init_fn=_worker_init)
    if workers > 0:
        common["prefetch_factor"] = CUDA_PREFETCH if cuda else 2
    sampler = SeededSampler(len(train_ds), derive_seed(cfg.seed, split.fold))
    # Each new loader iterator draws its workers' base seed from `generator` — without one, from
    # the global RNG, which dropout on the CPU also draws from: every epoch with 0 workers, only
    # the first with persistent workers, so a resumed fold or another --num-workers would train
    # with other dropout masks. Samples take their seeds from the sampler, not from workers.
    return (DataLoader(train_ds, cfg.batch_size, sampler=sampler,
                       drop_last=len(train_ds) > cfg.batch_size,
                       generator=torch.Generator().manual_seed(sampler.seed), **common),
            DataLoader(val_ds, cfg.batch_size, shuffle=False,
                       generator=torch.Generator().manual_seed(sampler.seed), **common))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; the trial's threads belong to the model


def fold_metrics(split: FoldSplit, epoch: int, lr: float, train, val) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "fold": split.fold, "repeat": split.repeat, "epoch": epoch, "lr": lr,
        "train_loss": train.loss, "val_loss": val.loss,
        "miou_low": mean_iou(val.cm_low), "miou_full": mean_iou(val.cm_full),
        "train_seconds": train.seconds, "eval_seconds": val.seconds,
        "epoch_seconds": train.seconds + val.seconds,
        "train_images_per_s": train.images / max(train.seconds, 1e-9),
        "skipped_samples": train.skipped + val.skipped,
        CONFUSION: val.cm_full.flatten().tolist(),
    }
    for prefix, cm in (("iou_low", val.cm_low), ("iou_full", val.cm_full)):
        metrics.update({f"{prefix}_{k}": float(v) for k, v in zip(CLASS_KEYS, iou_per_class(cm))})
    return metrics


def run_fold(cfg: Config, split: FoldSplit, root: str, report: Report, *,
             checkpoints: FoldCheckpoints | None = None, sync_epochs: Collection[int] = (),
             cpus: float = 1, device: torch.device | None = None,
             loss_fn: LossFn = cross_entropy, steps: FoldSteps = FoldSteps()) -> None:
    """Train one fold for `cfg.epochs`, calling `report(metrics, saved)` after every epoch.

    With `checkpoints`, the fold continues from the newest state found there, keeps its state
    and best weights there as it goes (`saved` names a state that became complete), and ends
    with the best epoch's weights on disk; epochs in `sync_epochs` are written before they are
    reported. The same numbers come out whether a fold runs through or is resumed.
    """
    session = FoldSession(checkpoints, cfg.epochs, sync_epochs)
    if (last := session.finished()) is not None:  # said again, nothing trained
        report(last, None)
        return
    device = device or pick_device()
    check_device(device)
    threads, workers = cpu_split(cpus, device, cfg.num_workers)
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    torch.manual_seed(cfg.seed * 1000 + split.fold)
    random.seed(cfg.seed * 1000 + split.fold)
    speed = fold_speed(cfg, device)
    # on the CPU: RNG states must stay CPU tensors, and load_state_dict copies to the device
    resume = session.resume(map_location="cpu")
    model = build_model(cfg, speed, empty=resume is not None)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = speed.grad_scaler()
    first_epoch, best = 1, {"best_epoch": 0, "best_miou_low": float("-inf"),
                            "best_miou_full": float("nan")}
    replay: list[dict[str, Any]] = []
    if resume is not None:
        model.load_state_dict(resume["model"], strict=True)
        optimizer.load_state_dict(resume["optimizer"])
        match_layouts(optimizer)
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"], device)
        first_epoch = resume["epoch"] + 1
        best = resume.get("best_metrics", best)
        replay = session.replay(resume)
        del resume
    for metrics in replay:
        report(metrics, None)
    notice = session.notice
    if cfg.compile:  # one process training several folds compiles each afresh, as a trial does
        torch._dynamo.reset()
    forward = torch.compile(model) if cfg.compile else model
    train_loader, val_loader = build_loaders(cfg, root, split, device, workers)
    for epoch in range(first_epoch, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train_loader.sampler.set_epoch(epoch)
        try:
            train = steps.train(forward, train_loader, optimizer, speed, scaler=scaler,
                                loss_fn=loss_fn)
            val = steps.validate(forward, val_loader, speed, loss_fn=loss_fn)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"fold {split.fold}, epoch {epoch}, lr {lr:.3g}: {err}; "
                                     f"lower --lr") from err
        except torch.OutOfMemoryError as err:
            raise FoldOutOfMemoryError(
                f"fold {split.fold}, epoch {epoch}: out of GPU memory at "
                f"batch_size={cfg.batch_size}, image_size={cfg.image_size}; lower --batch-size "
                f"or --image-size, keep autocast on (drop --amp off), or give each trial a "
                f"whole GPU (--gpus-per-trial 1)") from err
        metrics = fold_metrics(split, epoch, lr, train, val)
        if metrics["miou_low"] > best["best_miou_low"]:  # the seed's choice of best epoch
            best = {"best_epoch": epoch, "best_miou_low": metrics["miou_low"],
                    "best_miou_full": metrics["miou_full"]}
        # the fold's best so far travels with every result: whoever missed an epoch (a
        # searcher restored after a crash) still hears the fold's best
        metrics.update(best, device=str(device), torch_threads=threads, loader_workers=workers,
                       precision=speed.precision, channels_last=speed.channels_last,
                       compiled=speed.compiled)
        scheduler.step(metrics[cfg.plateau_metric])
        meta = {"arch": ARCH, "num_classes": NUM_CLASSES, "fold": split.fold, "epoch": epoch,
                "config": cfg.to_dict(), "created": time.time(), "threads": threads,
                "device": device.type,
                "metrics": {k: float(v) for k, v in metrics.items()
                            if isinstance(v, (int, float)) and np.isfinite(v)}}
        saved = session.end_epoch(
            epoch, metrics, model.state_dict,
            lambda epoch=epoch, meta=meta, best=best: {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "rng": rng_state(device), "meta": meta, "best_metrics": best},
            meta)
        if notice is not None:  # said once, with the first epoch trained after the resume
            report({**metrics, NOTICE: notice}, saved)
            notice = None
        else:
            report(metrics, saved)
