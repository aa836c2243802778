"""Faults and bad input: killed workers and drivers, NaN losses, corrupt files, a real cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from raycity.config import preset
from raycity.data import DataError, find_samples, write_synthetic_cityscapes
from raycity.data.layout import IMAGE_SUFFIX
from raycity.folds import make_folds
from raycity.training import run_fold
from raycity.tune.experiment import Variant
from tests.conftest import FORCED_LAYOUT, SMOKE_EPOCHS

METRICS = ["train_loss", "val_loss", "miou_low", "miou_full"]


def cv_process(out: Path, *extra: str, env: dict | None = None,
               epochs: int = SMOKE_EPOCHS) -> subprocess.Popen:
    """`python -m raycity.cv` as a user starts it, in its own process (group)."""
    args = [sys.executable, "-m", "raycity.cv", "--preset", "smoke", "--epochs", str(epochs),
            "--output", str(out), "--cpus-per-trial", "0.6", "--num-cpus", "2",
            *(FORCED_LAYOUT if "--resume" not in extra else []), *extra]
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


def trial_workers(ancestor: int) -> list[int]:
    """The trial workers of the Ray that process `ancestor` started (another test's Ray may
    run beside it, on the other xdist worker)."""
    out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if descends_from(int(p), ancestor)]


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid, after "(name) state"
    return False


def test_resume_refuses_contradicting_flags(local_run, capsys):
    from raycity import cv

    assert cv.main(["--resume", str(local_run), "--lr", "0.5"]) == 2
    assert "lr=0.5 (saved 0.001)" in capsys.readouterr().err


def test_a_diverging_fold_ends_in_one_line_that_says_where(tiny_cityscapes):
    """A NaN loss ends its fold with the fold, epoch and lr to look at, as the user's error
    (Tune does not retry it: a retry diverges again). Through Ray, a diverging fold fails alone
    and the run goes on to its tables and exit code: tests/test_sweep_resume.py (configuration
    c2's fold 2); Table 1 with a failed fold: tests/test_results.py."""
    from raycity.engine import NonFiniteLossError
    from raycity.errors import UserError

    def nan_loss(logits, target):  # test-only hook, not a flag users can trip
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
        return loss * float("nan")

    cfg = preset("smoke", data_root=str(tiny_cityscapes), epochs=1, folds=2)
    split = make_folds([s.key for s in find_samples(tiny_cityscapes, "train")], 2)[1]
    threads = torch.get_num_threads()
    try:
        with pytest.raises(NonFiniteLossError, match="fold 2, epoch 1, lr 0.001") as err:
            run_fold(cfg, split, str(tiny_cityscapes), lambda m, s: None, loss_fn=nan_loss)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(err.value, UserError)


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
    with pytest.raises(DataError, match="not visible on this node") as err:
        run_fold(cfg, fold, str(tmp_path / "gone"), lambda m, s: None)
    assert f"({os.uname().nodename})" in str(err.value)  # which node, as the README promises


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
    experiment state on a shared storage path, and the tables still land in results/<name>.
    (The cluster has Ray's token authentication, as raycity's driver does: conftest.py.) The
    CLI with the stand-in fold: what is placed and stored is the trial and its checkpoints, the
    same for any fold recipe; the model's own trials run in the other end-to-end tests."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=2)
    try:
        storage = tmp_path / "shared-storage"
        proc = subprocess.run(
            [sys.executable, "-m", "tests.standin_cli", "cv", "--preset", "smoke", "--epochs",
             "1", "--folds", "2", "--data-root", str(tiny_cityscapes), "--address", cluster.address,
             "--storage-path", str(storage), "--output", str(tmp_path / "results"),
             "--name", "clustered", "--cpus-per-trial", "0.6"],
            capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        cluster.shutdown()
    run_dir = tmp_path / "results" / "clustered"
    df = rows(run_dir)
    assert sorted(df["fold"]) == [1, 2]
    assert set(df["node_id"]) == {worker.node_id}  # placed on the worker node
    assert (storage / "clustered" / "tuner.pkl").is_file()  # Tune state on the shared storage
    assert not (run_dir / "tune").exists()
    assert (run_dir / "summary.md").is_file() and (run_dir / "checkpoints" / "fold1.pt").is_file()


UNREACHABLE = """
import os, sys
from raycity import cv
codes = [cv.main(["--preset", "smoke", "--address", "127.0.0.1:1", "--output", sys.argv[1]])]
print("--- RAY_ADDRESS", file=sys.stderr, flush=True)
os.environ["RAY_ADDRESS"] = "127.0.0.1:1"
codes.append(cv.main(["--preset", "smoke", "--output", sys.argv[1]]))
print(codes)
"""


def test_unreachable_cluster_is_one_clear_error(tmp_path):
    """--address, and Ray's own variable, which is a request to join too (it used to reach
    ray.init beside --num-cpus: a ValueError traceback). Both in one fresh process (no Ray
    of the tests' own in it), one after the other."""
    proc = subprocess.run([sys.executable, "-c", UNREACHABLE, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "[2, 2]", proc.stdout + proc.stderr
    flag, env = proc.stderr.split("--- RAY_ADDRESS\n")
    for said, named in ((flag, "--address 127.0.0.1:1"), (env, "RAY_ADDRESS=127.0.0.1:1")):
        assert said.startswith(f"error: {named}: cannot connect to a Ray cluster"), said
        assert len(said.strip().splitlines()) == 1, said
    assert not any(tmp_path.iterdir())  # nothing was written


def test_requests_no_node_can_hold_are_refused_in_seconds(ray_session, tmp_path,
                                                          tiny_cityscapes, capsys):
    """On the live Ray (2 CPUs, no GPU): a fold asking for a GPU, or for 64 CPUs, could never
    start — Ray alone would wait forever. The run is refused within seconds, in one line naming
    the flag, before anything is written."""
    from raycity import cv
    from raycity.tune.resources import cluster_nodes

    (node,) = cluster_nodes()
    assert (node.cpus, node.gpus) == (2, 0)
    for flag, value in (("--gpus-per-trial", "1"), ("--cpus-per-trial", "64")):
        start = time.time()
        code = cv.main(["--preset", "smoke", "--data-root", str(tiny_cityscapes), flag, value,
                        "--output", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and f"{flag} {value}:" in err, err
        assert time.time() - start < 30 and not any(tmp_path.iterdir())


def test_a_users_mistake_inside_a_trial_fails_each_fold_once_in_one_line(
        ray_session, tmp_path, tiny_cityscapes, capsys):
    """A label holding trainIds instead of labelIds passes the header checks; only decoding it,
    inside the trials, finds it — here in a DataLoader worker (as on CUDA, where the loader has
    workers), which hands the error back with its whole traceback as the message. Each fold
    fails once — a retry would only repeat it, so `--max-failures 2` does not apply — with one
    line naming the file, and the exit code says so. The same run shows --overwrite replacing
    what was there."""
    import json

    import numpy as np
    from PIL import Image

    from raycity import cv
    from raycity.data import to_train_ids
    from raycity.data.layout import LABEL_SUFFIX

    root = tmp_path / "cs"
    shutil.copytree(tiny_cityscapes, root)
    label = sorted((root / "gtFine" / "train").glob(f"*/*{LABEL_SUFFIX}"))[0]
    Image.fromarray(to_train_ids(np.array(Image.open(label)))).save(label)
    run_dir = tmp_path / "out" / "trainids"
    run_dir.mkdir(parents=True)
    (run_dir / "junk.txt").write_text("an old run")
    code = cv.main(["--preset", "smoke", "--epochs", "1", "--folds", "2", "--data-root",
                    str(root), "--output", str(tmp_path / "out"), "--name", "trainids", "--overwrite",
                    "--max-failures", "2", "--cpus-per-trial", "0.6", "--num-workers", "1"])
    out = capsys.readouterr()
    assert code == 1
    failed = [line for line in out.out.splitlines() if "FAILED" in line]
    # the error is said once; the other folds say they failed the same way
    assert len(failed) == 2 and sum(label.name in line and "[255]" in line
                                    for line in failed) == 1, failed
    assert sum("the same error as fold" in line for line in failed) == 1, failed
    assert out.out.count("[255]") == 2  # and once more, in Table 1's note: "all 2 folds …"
    assert "Traceback" not in out.out + out.err and "worker process" not in out.out + out.err
    state = json.loads(max((run_dir / "tune").glob("experiment_state-*.json")).read_text())
    failures = [json.loads(meta)["num_failures"] for _, meta in state["trial_data"]]
    assert failures == [1, 1]  # never retried
    assert not (run_dir / "junk.txt").exists() and (run_dir / "run.json").is_file()
    table = (run_dir / "summary.md").read_text()
    assert "| 1 (failed) |" in table and "all 2 folds failed: DataError" in table
    assert all(line.startswith("|") for line in table.split("\n\n")[1].splitlines()), table


def test_a_copy_of_a_run_on_shared_storage_refuses_to_resume_a_moved_one_does_not(tmp_path):
    """On shared storage the experiment lives outside the run directory; a copy would train
    into — and clean up — the original's trials."""
    from raycity.run import RunError, RunState, claim_storage

    state = RunState("cv", preset("smoke"), [Variant("cv")], str(tmp_path / "data"), False,
                     str(tmp_path / "shared"), "r", [])
    original, copy, moved = tmp_path / "r", tmp_path / "r2", tmp_path / "r3"
    original.mkdir()
    (original / "run.json").write_text(state.to_json())
    claim_storage(state, original)
    shutil.copytree(original, copy)
    with pytest.raises(RunError, match=f"this is a copy of {original}.*Resume {original} instead"):
        claim_storage(state, copy)
    claim_storage(state, original)  # the original itself resumes
    original.rename(moved)
    claim_storage(state, moved)  # moved: the original is gone, the run now lives here
