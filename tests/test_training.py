"""The fold recipe without Ray: exact resume with loader workers, the same inputs with and
without the cache, and the learning-rate schedule it promises."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from raycity.config import Config, preset
from raycity.constants import NUM_CLASSES
from raycity.data import SegmentationDataset, find_samples, train_transform, val_transform
from raycity.data.cache import build_cache, cached_reader
from raycity.engine import EvalStats, TrainStats
from raycity.folds import load_folds, make_folds
from raycity.foldsession import REPLAYED
from raycity.foldstates import FoldCheckpoints
from raycity.training import FoldSteps, build_loaders, run_fold

METRICS = ["train_loss", "val_loss", "miou_low", "miou_full"]


def test_resume_with_two_workers_equals_an_uninterrupted_fold(smoke_run, tmp_path):
    """Shuffling and every augmentation derive from (seed, fold, epoch, index), and the state
    holds the RNGs: fold 1 of the smoke run, stopped after epoch 1 and resumed here in-process
    with 2 DataLoader workers, trains epoch 2 to the very numbers the uninterrupted run (through
    Ray Tune, loading in its main process, on one thread like this) reported."""
    _, run_dir = smoke_run
    reference = pd.read_parquet(run_dir / "epochs.parquet")
    reference = reference[reference["fold"] == 1].set_index("epoch")
    cfg = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    cfg = cfg.replace(num_workers=2)
    root = json.loads((run_dir / "run.json").read_text())["data_root"]
    fold = load_folds(run_dir / "folds.json")[0][0]

    class Stop(Exception):
        pass

    def stop_after_epoch_1(metrics, saved):
        raise Stop

    with pytest.raises(Stop):
        run_fold(cfg, fold, root, stop_after_epoch_1, sync_epochs={1},
                 checkpoints=FoldCheckpoints(str(tmp_path)), cpus=1)
    resumed = []
    run_fold(cfg, fold, root, lambda m, s: resumed.append(m), sync_epochs={1},
             checkpoints=FoldCheckpoints(str(tmp_path)), cpus=1)
    # epoch 1 was a synchronous epoch (a rung): said again first, for a scheduler that may
    # have missed it, then epoch 2 is trained
    assert [(m["epoch"], m.get(REPLAYED, False)) for m in resumed] == [(1, True), (2, False)]
    for key in METRICS:
        assert resumed[1][key] == pytest.approx(reference.loc[2, key], rel=1e-6), key


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_leave_the_global_rng_to_dropout(tree, workers):
    """Dropout on the CPU draws from the global RNG, which the state saves and a resume restores;
    the loaders must not draw from it (0 workers: each epoch; persistent workers: only the first),
    or a resumed fold, or one with another --num-workers, trains with other dropout masks."""
    cfg = preset("smoke").replace(num_workers=workers)
    split = make_folds([s.key for s in find_samples(tree, "train")], 3, cfg.seed)[0]
    train, val = build_loaders(cfg, str(tree), split, torch.device("cpu"), workers)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for epoch in (1, 2, 3):
        train.sampler.set_epoch(epoch)
        assert sum(len(b["image"]) for b in train) > 0 and sum(len(b["image"]) for b in val) > 0
        assert torch.equal(torch.get_rng_state(), before), epoch


def test_each_fold_draws_its_own_order_and_augmentations(tree):
    """The same images as fold 1 and as fold 2 are shuffled and augmented differently (folds
    are independent experiments), and identically for the same fold and epoch."""
    from raycity.folds import FoldSplit

    cfg = preset("smoke")
    split = make_folds([s.key for s in find_samples(tree, "train")], 3, cfg.seed)[0]

    def draws(fold: int, epoch: int) -> list:
        train, _ = build_loaders(cfg, str(tree), FoldSplit(fold, split.train, split.val),
                                 torch.device("cpu"), 0)
        train.sampler.set_epoch(epoch)
        return list(train.sampler)

    assert draws(1, 1) == draws(1, 1)
    assert draws(1, 1) != draws(2, 1) and draws(1, 1) != draws(1, 2)


def test_validation_inputs_are_identical_with_and_without_the_cache(tree):
    samples = find_samples(tree, "train")
    plain = SegmentationDataset(samples, val_transform((32, 64)), full_mask=True)
    build_cache(tree, (32, 64), 0.2, progress=False)
    cached = SegmentationDataset(samples, val_transform((32, 64)), full_mask=True,
                                 reader=cached_reader(tree, (32, 64), 0.2, split="val"))
    for i in range(len(samples)):
        a, b = plain[i], cached[i]
        for key in ("image", "mask", "full_mask"):
            assert torch.equal(a[key], b[key]), (i, key)


def test_training_draws_the_same_augmentations_with_and_without_the_cache(tree):
    """Same seeds, same crops and flips: the labels (cached at full size) come out identical;
    the images differ only by the cache's resampling."""
    samples = find_samples(tree, "train")
    transform = train_transform((32, 64), 0.2, 0.2, hflip=True)
    plain = SegmentationDataset(samples, transform)
    build_cache(tree, (32, 64), 0.2, progress=False)
    cached = SegmentationDataset(samples, transform, reader=cached_reader(tree, (32, 64), 0.2))
    for i in range(len(samples)):
        for seed in (1, 2, 3):
            a, b = plain[(i, seed)], cached[(i, seed)]
            assert torch.equal(a["mask"], b["mask"]), (i, seed)
            assert (a["image"] - b["image"]).abs().mean() < 0.25  # normalised units
    assert not torch.equal(plain[(0, 1)]["mask"], plain[(0, 2)]["mask"])  # seeds matter


def test_cache_serves_the_loaders(tree):
    cfg = preset("smoke", data_root=str(tree))
    split = make_folds([s.key for s in find_samples(tree, "train")], 3)[0]
    build_cache(tree, (32, 64), 0.2, progress=False)
    train, val = build_loaders(cfg, str(tree), split, torch.device("cpu"))
    assert train.dataset.reader.images_file == "images.npy"
    assert val.dataset.reader.images_file == "val_images.npy"


def scripted_steps(val_losses: list[float], mious: list[float]) -> FoldSteps:
    """Epochs that take no time and report the given validation loss and mIoU."""
    epoch = {"n": 0}

    def train(model, loader, optimizer, speed, **kwargs):
        epoch["n"] += 1
        return TrainStats(1.0, 2, 0.01, 0)

    def validate(model, loader, speed, **kwargs):
        k = epoch["n"] - 1
        right = int(1000 * mious[k])  # a confusion matrix whose mIoU rises with mious[k]
        cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
        cm[0, 0], cm[0, 1] = right, 1000 - right
        return EvalStats(val_losses[k], cm, cm, 2, 0.01, 0)

    return FoldSteps(train, validate)


@pytest.mark.parametrize("metric, losses, mious, halved_at", [
    # val loss stops improving after epoch 2; with patience 2 the third bad epoch (5) halves
    # the lr, so epoch 6 trains at half (the `lr` column is the rate in effect at each epoch)
    ("val_loss", [3.0, 2.0, 2.5, 2.4, 2.3, 2.2], [0.1] * 6, 6),
    # miou_low is maximised: best at epoch 1, bad epochs 2-4, halved from epoch 5
    ("miou_low", [1.0] * 6, [0.5, 0.4, 0.45, 0.3, 0.3, 0.3], 5),
])
def test_plateau_halves_the_lr_after_patience_bad_epochs(tree, metric, losses, mious, halved_at):
    from raycity import cv
    from raycity.cli import build_config

    # the recipe as the CLI builds it from `--plateau-metric`
    cfg, _, _ = build_config(cv.parser().parse_args(
        ["--preset", "smoke", "--data-root", str(tree), "--epochs", "6", "--lr", "1e-3",
         "--plateau-metric", metric]))
    assert (cfg.plateau_metric, cfg.plateau_patience, cfg.plateau_factor) == (metric, 2, 0.5)
    fold = make_folds([s.key for s in find_samples(tree, "train")], 3)[0]
    lrs = []
    run_fold(cfg, fold, str(tree), lambda m, s: lrs.append(m["lr"]),
             steps=scripted_steps(losses, mious))
    expected = [1e-3 if epoch < halved_at else 5e-4 for epoch in range(1, 7)]
    np.testing.assert_allclose(lrs, expected)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # built, never iterated
def test_a_folds_cpus_become_threads_on_the_cpu_and_loader_workers_on_cuda(tree):
    """On CUDA one CPU runs the training loop and the rest decode (pinned, persistent, four
    batches ahead); on the CPU every CPU computes; --num-workers takes its workers from them."""
    from raycity.training import cpu_split

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert cpu_split(16, cuda, None) == (1, 15)
    assert cpu_split(5, cuda, None) == (1, 4)
    assert cpu_split(8, cpu, None) == (8, 0)
    assert cpu_split(0.666, cpu, None) == (1, 0)  # a share of one CPU: one thread
    assert cpu_split(4, cpu, 2) == (2, 2)
    cfg = preset("smoke")
    split = make_folds([s.key for s in find_samples(tree, "train")], 3, cfg.seed)[0]
    threads, workers = cpu_split(5, cuda, None)
    train, val = build_loaders(cfg, str(tree), split, cuda, workers)
    for loader in (train, val):
        assert (loader.num_workers, loader.pin_memory, loader.persistent_workers,
                loader.prefetch_factor) == (4, True, True, 4)
    train, _ = build_loaders(cfg, str(tree), split, cpu, 0)
    assert (train.num_workers, train.pin_memory, train.persistent_workers) == (0, False, False)


def test_the_state_carries_the_cuda_rng(monkeypatch):
    """A fold's state holds its GPU's RNG and a resume puts it back on that GPU (torch.cuda
    stood in for: no GPU here)."""
    from raycity.engine import rng_state, set_rng_state

    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device: torch.tensor([device.index, 7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.update(state=state, device=device))
    gpu = torch.device("cuda", 1)
    state = rng_state(gpu)
    assert torch.equal(state["cuda"], torch.tensor([1, 7], dtype=torch.uint8))
    set_rng_state(state, gpu)
    assert torch.equal(restored["state"], state["cuda"]) and restored["device"] == gpu
    assert "cuda" not in rng_state(torch.device("cpu"))


def test_a_fold_restarted_after_it_finished_says_its_last_epoch_again_and_trains_nothing(
        tmp_path, tree):
    """Its end reached the fold's own record but not Tune's snapshot: the restarted trial
    repeats the last result (marked replayed, so no second row or line) and stops."""
    done = FoldCheckpoints(str(tmp_path), labels={"config_id": "c1"})
    done.mark_done({"fold": 1, "epoch": 2, "miou_low": 0.4})
    fold = make_folds([s.key for s in find_samples(tree, "train")], 3)[0]
    said = []

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold trained again")

    run_fold(preset("smoke", data_root=str(tree)), fold, str(tree),
             lambda m, s: said.append((m, s)), checkpoints=done,
             steps=FoldSteps(no_training, no_training))
    assert said == [({"fold": 1, "epoch": 2, "miou_low": 0.4, REPLAYED: True}, None)]
