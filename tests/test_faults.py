"""Faults and bad input: killed workers and drivers, NaN losses, corrupt files, a real cluster."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from raycity.config import RunOptions, preset
from raycity.data import DataError, find_samples, write_synthetic_cityscapes
from raycity.data.layout import IMAGE_SUFFIX
from raycity.folds import make_folds
from raycity.training import run_fold
from raycity.tune.experiment import Variant, run_experiment
from tests.conftest import SMOKE_EPOCHS

METRICS = ["train_loss", "val_loss", "miou_low", "miou_full"]


def cv_process(out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m raycity.cv` as a user starts it, in its own process (group)."""
    args = [sys.executable, "-m", "raycity.cv", "--preset", "smoke", "--epochs",
            str(SMOKE_EPOCHS), "--output", str(out), "--cpus-per-trial", "0.6", "--num-cpus", "2",
            *extra]
    return subprocess.Popen(args, env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rows(run_dir: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(run_dir / "epochs.parquet")
    except (OSError, ValueError):
        return pd.DataFrame(columns=["fold", "epoch"])


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
        time.sleep(0.5)
    raise AssertionError("timed out")


def trial_workers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_killed_worker_and_killed_driver_then_resume(smoke_run, tmp_path):
    """SIGKILL a trial's worker (Tune retries it from its checkpoint), then SIGKILL the driver
    and --resume: the table ends complete, each (fold, epoch) once, equal to an uninterrupted
    run of the same config."""
    _, reference_dir = smoke_run
    env = {"RAYCITY_CACHE": os.environ["RAYCITY_CACHE"]}
    run_dir = tmp_path / "faulty"
    proc = cv_process(tmp_path, "--name", "faulty", env=env)
    wait_for(lambda: len(rows(run_dir)) >= 1, proc)
    workers = trial_workers()
    assert workers, "no trial worker to kill"
    os.kill(workers[0], signal.SIGKILL)  # a fold dies mid-run
    wait_for(lambda: len(rows(run_dir)) >= 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies (and its local Ray with it)
    proc.wait()
    before = rows(run_dir)
    assert len(before) < 3 * SMOKE_EPOCHS  # it really was interrupted

    resumed = cv_process(tmp_path, "--resume", str(run_dir), env=env)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    after = rows(run_dir)
    assert len(after) == 3 * SMOKE_EPOCHS and not after.duplicated(["fold", "epoch"]).any()
    reference = rows(reference_dir).set_index(["fold", "epoch"])[METRICS]
    pd.testing.assert_frame_equal(after.set_index(["fold", "epoch"])[METRICS], reference,
                                  rtol=1e-5, atol=1e-6)
    assert (run_dir / "summary.md").is_file() and (run_dir / "checkpoints" / "fold3.pt").is_file()


def test_resume_refuses_contradicting_flags(smoke_run, capsys):
    from raycity import cv

    _, run_dir = smoke_run
    assert cv.main(["--resume", str(run_dir), "--lr", "0.5"]) == 2
    assert "lr=0.5 (saved 0.001)" in capsys.readouterr().err


def test_non_finite_loss_fails_its_fold_only(ray_session, tiny_cityscapes, tmp_path):
    def nan_on_fold_2(logits, target):  # test-only hook, not a flag users can trip
        from ray import tune

        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
        return loss * float("nan") if "fold2" in tune.get_context().get_trial_name() else loss

    cfg = preset("smoke", data_root=str(tiny_cityscapes), epochs=1)
    opts = RunOptions(name="nan", output=str(tmp_path), cpus_per_trial=0.6, max_failures=0)
    run_dir, summary = run_experiment("cv", cfg, opts, [Variant("cv")],
                                      fold_fn=functools.partial(run_fold, loss_fn=nan_on_fold_2),
                                      echo=lambda line: None)
    status = summary.set_index("fold")["status"]
    assert status[1] == "ok" and status[3] == "ok"
    assert "NonFiniteLossError" in status[2] and "fold 2, epoch 1, lr 0.001" in status[2]
    assert sorted(rows(run_dir)["fold"].unique()) == [1, 3]
    md = (run_dir / "summary.md").read_text()
    assert "| 2 (failed: " in md and "leave out 1 failed fold" in md


def corrupt_one(root: Path) -> Path:
    image = sorted((root / "leftImg8bit" / "train").glob(f"*/*{IMAGE_SUFFIX}"))[0]
    image.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return image


def test_corrupt_image_mid_training_names_the_file(tmp_path):
    root = write_synthetic_cityscapes(tmp_path / "cs", {"train": 6}, (64, 128), seed=1)
    bad = corrupt_one(root)
    cfg = preset("smoke", data_root=str(root), epochs=1)
    samples = find_samples(root, "train")
    fold = next(f for f in make_folds([s.key for s in samples], 3) if any(
        bad.name.startswith(k.split("/")[-1]) for k in f.train))
    with pytest.raises(DataError, match=bad.name):
        run_fold(cfg, fold, str(root), lambda m, s: None)
    reports = []
    run_fold(cfg.replace(skip_bad_samples=True), fold, str(root), lambda m, s: reports.append(m))
    assert reports[0]["skipped_samples"] == 1


def test_data_root_missing_on_a_worker(tmp_path):
    cfg = preset("smoke", data_root=str(tmp_path / "gone"))
    fold = make_folds(["train/a/a_000000_000019", "train/a/a_000001_000019",
                       "train/a/a_000002_000019"], 3)[0]
    with pytest.raises(DataError, match="not visible on this node"):
        run_fold(cfg, fold, str(tmp_path / "gone"), lambda m, s: None)


def test_out_of_memory_names_the_flags(tiny_cityscapes):
    from raycity.errors import UserError
    from raycity.training import FoldSteps

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    cfg = preset("smoke", data_root=str(tiny_cityscapes))
    samples = find_samples(tiny_cityscapes, "train")
    fold = make_folds([s.key for s in samples], 3)[0]
    with pytest.raises(torch.OutOfMemoryError, match="--batch-size.*--image-size") as err:
        run_fold(cfg, fold, str(tiny_cityscapes), lambda m, s: None, steps=FoldSteps(train=oom))
    assert isinstance(err.value, UserError)  # the same batch fails the same way: no retry


def test_multi_node_cluster_with_shared_storage(tmp_path, tiny_cityscapes):
    """A head with no CPUs and one worker node: every fold must run on the worker, with
    experiment state on a shared storage path, and the tables still land in results/<name>."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=2)
    try:
        storage = tmp_path / "shared-storage"
        proc = subprocess.run(
            [sys.executable, "-m", "raycity.cv", "--preset", "smoke", "--epochs", "1",
             "--data-root", str(tiny_cityscapes), "--address", cluster.address,
             "--storage-path", str(storage), "--output", str(tmp_path / "results"),
             "--name", "clustered", "--cpus-per-trial", "0.6"],
            capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        cluster.shutdown()
    run_dir = tmp_path / "results" / "clustered"
    df = rows(run_dir)
    assert sorted(df["fold"]) == [1, 2, 3]
    assert set(df["node_id"]) == {worker.node_id}  # placed on the worker node
    assert (storage / "clustered" / "tuner.pkl").is_file()  # Tune state on the shared storage
    assert not (run_dir / "tune").exists()
    assert (run_dir / "summary.md").is_file() and (run_dir / "checkpoints" / "fold1.pt").is_file()


def test_unreachable_cluster_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "raycity.cv", "--preset", "smoke", "--address", "127.0.0.1:1",
         "--output", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--address 127.0.0.1:1: cannot connect to a Ray cluster" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was written


def test_trials_never_outnumber_the_memory(ray_session):
    """Nine smoke trials on 2 CPUs: no more start together than Ray's memory holds (the CPU share
    is spread over those), and a trial no node can hold is refused up front."""
    import ray

    from raycity.tune.resources import (
        check_placeable,
        cluster_nodes,
        plan_trials,
        trial_memory_bytes,
    )
    from raycity.tune.rundir import RunError

    per_trial = trial_memory_bytes(preset("smoke"), on_gpu=False)
    fit = min(9, int(ray.cluster_resources()["memory"] // per_trial))
    plan = plan_trials(cluster_nodes(), 9, 0, per_trial)
    share = plan.cpus
    assert share * fit <= ray.cluster_resources()["CPU"] + 1e-9
    assert share >= ray.cluster_resources()["CPU"] / fit - 0.001
    assert trial_memory_bytes(preset("seed"), on_gpu=False) > per_trial  # activations on CPU
    with pytest.raises(RunError, match="GiB of host memory"):
        check_placeable(cluster_nodes(), 1, 0, int(2 * ray.cluster_resources()["memory"]))
