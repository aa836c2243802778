"""A model-based sweep killed mid-search and resumed, through real Ray Tune and the CLI, with the
stand-in fold (known scores, tiny real checkpoints) in place of the model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.standins import FAIL, LOG, SPACE
from tests.test_resume import one_line_with

EPOCHS, FOLDS, CONFIGS = 2, 2, 3


def sweep_process(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, LOG: str(log), "RAYCITY_STANDIN_EPOCH_S": "0.4", FAIL: "c2:2",
           "RAY_AUTH_MODE": "token"}  # what raycity's own entry points set before Ray loads
    return subprocess.Popen([sys.executable, "-m", "tests.standin_cli", "sweep", *args], env=env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def told(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "searcher.json").read_text())
    except (OSError, ValueError):
        return []


def executed(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_optuna_sweep_survives_a_kill_and_the_searcher_hears_fold_means(tmp_path):
    """Also: Ctrl-C before any trial reported (one line, exit 130); configuration c2's fold 2
    diverges (a user error): the sweep goes on, the searcher hears that c2 failed — once — and
    the exit code says a fold failed."""
    space = tmp_path / "space.yaml"
    # with fold-mean early stopping at epoch 1 of 2: the scheduler's state is restored too
    space.write_text(yaml.safe_dump({**SPACE, "search": "optuna", "seed": 3, "scheduler": {
        "asha": {"grace_period": 1, "reduction_factor": 2}}}))
    run_dir, log = tmp_path / "out" / "search", tmp_path / "executed.jsonl"
    args = ["--space", str(space), "--preset", "smoke", "--epochs", str(EPOCHS), "--folds",
            str(FOLDS), "--num-samples", str(CONFIGS), "--max-concurrent", "1", "--output",
            str(tmp_path / "out"), "--name", "search", "--mlflow"]
    # Ctrl-C as soon as the run exists, before any trial has reported: one line, exit 130
    proc = sweep_process(args, log)
    end = time.time() + 120
    while not (run_dir / "run.json").is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < end, "timed out"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert one_line_with(out, "interrupted (SIGINT)", f"--resume {run_dir}"), out
    assert "Traceback" not in out and "Error" not in out, out

    proc = sweep_process(["--resume", str(run_dir), "--mlflow"], log)
    end = time.time() + 300
    while len(told(run_dir)) < 2:  # two configurations finished: kill mid-search
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < end, "timed out"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at, before = time.time(), told(run_dir)
    assert len(before) < CONFIGS

    resumed = sweep_process(["--resume", str(run_dir), "--mlflow"], log)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 1, out  # c2 fold 2 failed
    # --max-concurrent 1: one configuration's folds at a time share the CPUs, not all trials'
    at_once = re.search(r"(\d+) trial\(s\), (\d+) at a time; each ([\d.]+) CPU", out)
    assert at_once and int(at_once[1]) == CONFIGS * FOLDS and int(at_once[2]) <= FOLDS, out
    assert "Traceback" not in out and out.count("[c2 fold 2] FAILED: NonFiniteLossError") <= 1

    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert not epochs.duplicated(["config_id", "fold", "epoch"]).any()
    last = epochs.groupby(["config_id", "fold"])["epoch"].max()
    assert len(last) == CONFIGS * FOLDS - 1  # every fold but the one that diverged
    assert len(epochs) == last.sum()  # each from epoch 1 to where it ended, once
    board = pd.read_parquet(run_dir / "leaderboard.parquet").set_index("config_id")
    for config_id, ends in last.groupby(level="config_id"):  # stopped as a whole, or not at all
        assert ends.nunique() == 1 and board.loc[config_id, "stopped_early"] == (ends.max() < EPOCHS)
    heard = told(run_dir)
    assert [t["config_id"] for t in heard] == [f"c{i}" for i in range(1, CONFIGS + 1)]
    assert heard[:len(before)] == before  # nothing told twice, nothing forgotten
    values = {(t["values"]["lr"], t["values"]["dropout"]) for t in heard}
    assert len(values) == CONFIGS  # no configuration proposed again
    # what the searcher heard is each configuration's fold mean, each fold at its best epoch
    best = epochs.loc[epochs.groupby(["config_id", "fold"])["miou_low"].idxmax()]
    means = best.groupby("config_id")["miou_full"].mean()
    for t in heard:
        if t["config_id"] == "c2":
            assert t["error"] and "mean" not in t  # told it failed, never a one-fold mean
        else:
            assert abs(t["mean"] - means[t["config_id"]]) < 1e-12 and not t["error"]
    # the study Optuna's dashboard reads holds each configuration once, as the searcher heard it
    from raycity.tune.study import load_study

    trials = load_study(run_dir / "optuna.journal").trials
    assert [t.user_attrs["config_id"] for t in trials] == [t["config_id"] for t in heard]
    for trial, t in zip(trials, heard):
        assert trial.params == t["values"]
        fold_values = {k[5:]: v for k, v in trial.user_attrs.items() if k.startswith("fold_")
                       and k[5:].isdigit()}
        assert fold_values == t["scores"]
        if t["error"]:
            assert trial.state.name == "FAIL" and trial.value is None
        else:
            assert trial.state.name == "COMPLETE" and trial.value == t["mean"]
            assert trial.user_attrs["fold_std"] == t["std"]
    # folds that had finished before the kill were not trained again
    runs = executed(log)
    finished = {(r["lr"], r["dropout"], r["fold"]) for r in runs
                if r["epoch"] == EPOCHS and r["time"] < killed_at}
    assert finished
    assert not [r for r in runs if r["time"] > killed_at
                and (r["lr"], r["dropout"], r["fold"]) in finished]
    # MLflow (--mlflow again on each resume: the first start was interrupted before its store
    # existed) through the SIGKILL of the driver: every fold's run holds its epochs once, equal
    # to the table (a fold Tune had not saved starts over, and its first run is retired)
    from tests.test_tracking import history, runs_of

    client, mlruns = runs_of(tmp_path / "out")
    fold_runs = {(r.data.tags["raycity.config_id"], int(r.data.tags["raycity.fold"])): r
                 for r in mlruns if "raycity.fold" in r.data.tags}
    assert len(fold_runs) == len([r for r in mlruns if "raycity.fold" in r.data.tags])
    assert set(fold_runs) == set(last.index)
    for (config_id, fold), run in fold_runs.items():
        table = epochs[(epochs["config_id"] == config_id)
                       & (epochs["fold"] == fold)].sort_values("epoch")
        assert history(client, run, "miou_low") == [
            (int(e), pytest.approx(v, rel=1e-9)) for e, v in zip(table["epoch"], table["miou_low"])]
    assert len(board) == CONFIGS and {"hp_lr", "hp_dropout"} <= set(board.columns)
    assert board.loc["c2", "folds_failed"] == 1
    assert (run_dir / "figures" / "sweep.png").is_file()
    # c2 has a failed fold: it is listed, unranked, after the configurations with all folds
    assert pd.isna(board.loc["c2", "rank"]) and board["rank"].notna().sum() == CONFIGS - 1
    assert "Best configuration: c2" not in (run_dir / "summary.md").read_text()

    # Disk after a sweep with early stops and a failed fold: every fold that finished or was
    # stopped dropped its states (only its few-byte epoch records and the exported best
    # weights stay); the failed fold (it failed before its first state) has none either.
    states = [p for p in (run_dir / "tune").rglob("*")
              if p.is_file() and (re.fullmatch(r"(state|best)-\d+\.pt", p.name)
                                  or any(q.name.startswith("checkpoint_") for q in p.parents))]
    assert sum(p.stat().st_size for p in states) == 0, states
    assert board["stopped_early"].any()  # the sweep did stop configurations
    records = list((run_dir / "tune").rglob("epoch-*.json"))
    assert len(records) == len(epochs)
    exported = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert exported == sorted(f"{c}_fold{f}.pt" for c, f in last.index)
