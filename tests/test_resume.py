"""Stopping and resuming as users (and machines) do it, on one run: a worker killed, Ctrl-C, the
run copied and moved, SIGTERM to a resuming copy, the table lost — and it ends with every
(fold, epoch) once and the numbers of the same folds trained uninterrupted, in this process and
without Ray. (The driver killed outright, local Ray and all, and resumed:
tests/test_sweep_resume.py, through the same driver with stand-in folds; a resume of a finished
run, which starts no Ray: tests/test_report.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import pandas as pd
import torch

from raycity.run import RunDir
from raycity.training import run_fold
from tests.test_faults import METRICS, cv_process, rows, trial_workers, wait_for
from tests.test_tracking import check_folds_equal_the_table, children_of, runs_of

FOLDS, EPOCHS = 2, 4  # 8 fold-epochs: room to stop the run, then its copy, part-way
ALL = FOLDS * EPOCHS


def finish(proc, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def one_line_with(out: str, *parts: str) -> bool:
    """The stop is said in one line: what happened and how to continue."""
    return any(all(p in line for p in parts) for line in out.splitlines())


def files_and_times(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*")
            if p.is_file()}


def uninterrupted(config, splits, root: str) -> pd.DataFrame:
    """The folds trained through, in this process and without Ray, as a trial of
    --cpus-per-trial 0.6 trains them."""
    said, threads = [], torch.get_num_threads()
    try:
        for split in splits:
            run_fold(config, split, root, lambda m, s: said.append(m), cpus=0.6,
                     device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(said)


def same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.set_index(["fold", "epoch"])[METRICS],
                                  b.set_index(["fold", "epoch"])[METRICS], rtol=1e-5, atol=1e-6)


def test_kills_signals_moves_copies_and_a_lost_table_all_resume_to_the_same_numbers(tmp_path):
    env = {"RAYCITY_CACHE": os.environ["RAYCITY_CACHE"]}
    original = tmp_path / "run"

    # a trial's worker dies (Tune restarts it once, --max-failures 1); then Ctrl-C in the
    # terminal: SIGINT to the whole process group
    proc = cv_process(tmp_path, "--name", "run", "--folds", str(FOLDS), "--max-failures", "1",
                      "--mlflow", env=env, epochs=EPOCHS)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))
    reader.start()
    wait_for(lambda: len(rows(original)) >= 1, proc)
    workers = trial_workers(proc.pid)
    assert workers, "no trial worker to kill"
    os.kill(workers[0], signal.SIGKILL)
    # the killed fold is restarted, as --max-failures 1 allows, and the run says so
    restarted = "its worker stopped; restarting it from its last state (restart 1 of 1, "
    wait_for(lambda: any(restarted in line for line in lines), proc)
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=300)
    reader.join()
    out = "".join(lines)
    assert code == 130, out
    assert one_line_with(out, "interrupted (SIGINT)", f"--resume {original}")
    assert "Traceback" not in out and "Error" not in out, out
    assert out.count(restarted) == 1, out
    assert "(raylet)" not in out and "worker died" not in out, out  # said once, by raycity
    assert "(raylet) A worker died or was killed" in (original / "ray.log").read_text()  # there
    first = rows(original)
    # room left for the copy's resume to be stopped part-way
    assert len(first) <= ALL - 2 and not first.duplicated(["fold", "epoch"]).any()
    # what the run was started with (config, split, data), before any resume could rewrite it
    files = RunDir(original)
    started = files.config(), files.folds(), files.data_root()
    _, runs = runs_of(tmp_path)  # MLflow: the stopped run's runs end KILLED
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "KILLED"

    # the run is copied, and the original moved elsewhere
    copy, moved = tmp_path / "copy", tmp_path / "elsewhere" / "moved"
    shutil.copytree(original, copy, symlinks=True)
    moved.parent.mkdir()
    original.rename(moved)

    # SIGTERM (Slurm, Kubernetes, `timeout`) to the driver alone, while the copy resumes in its
    # own folder and touches nothing of the (moved) original's
    untouched = files_and_times(moved)
    proc = cv_process(tmp_path, "--resume", str(copy), env=env, epochs=EPOCHS)
    wait_for(lambda: len(rows(copy)) > len(first), proc)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 143, out
    assert one_line_with(out, "interrupted (SIGTERM)", f"--resume {copy}")
    assert "Traceback" not in out and "core dumped" not in out
    assert files_and_times(moved) == untouched

    # the moved run resumes where it lies, and its table is lost too: the resume rebuilds it
    # from the folds' records and finishes
    (moved / "epochs.parquet").unlink()
    code, out = finish(cv_process(tmp_path, "--resume", str(moved), env=env, epochs=EPOCHS))
    assert code == 0, out
    assert "rebuilt" in out and "from the trials' records" in out
    done = rows(moved)
    assert len(done) == ALL and not done.duplicated(["fold", "epoch"]).any()
    reference = uninterrupted(*started)
    same_numbers(done, reference)  # as if it had never been interrupted
    assert not original.exists()  # the move did not bring the old folder back
    assert f"| {FOLDS} | " in (moved / "summary.md").read_text()  # Table 1 over all folds
    # MLflow: the resumes (a copy's among them) continued the same runs, each step once
    client, runs = runs_of(tmp_path)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = children_of(runs, parent)
    assert len(runs) == 1 + FOLDS and len(children) == FOLDS and parent.info.status == "FINISHED"
    check_folds_equal_the_table(client, children, done)
