"""MLflow from the driver, read back with MLflow's own client: the run's shape (a parent per
configuration, a child per fold), histories equal to epochs.parquet, fold means equal to the
summary, resumes without duplicates, and a tracking server that is down costing one line."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from raycity.mlflowsetup import local_uri
from raycity.results import fold_stats


def runs_of(output) -> tuple[object, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=local_uri(output))
    experiment = client.get_experiment_by_name("raycity")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def children_of(runs: list, parent) -> list:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def history(client, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def check_folds_equal_the_table(client, children: list, epochs: pd.DataFrame) -> None:
    for child in children:
        fold = int(child.data.tags["raycity.fold"])
        rows = epochs[epochs["fold"] == fold].sort_values("epoch")
        for key in ("miou_low", "miou_full", "train_loss", "lr", "iou_full_road"):
            expected = [(int(e), pytest.approx(v, rel=1e-6)) for e, v in zip(rows["epoch"], rows[key])]
            assert history(client, child, key) == expected, (fold, key)
        assert child.info.status == "FINISHED"


def test_a_cv_is_one_parent_with_a_child_per_fold(smoke_run):
    code, run_dir = smoke_run
    assert code == 0
    client, runs = runs_of(run_dir.parent)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = children_of(runs, parent)
    assert len(runs) == 4 and sorted(c.data.tags["raycity.fold"] for c in children) == ["1", "2", "3"]
    assert parent.data.tags["raycity.run"] == run_dir.name and parent.info.status == "FINISHED"
    assert "raycity.version" in parent.data.tags and parent.data.params["epochs"] == "2"
    assert all(c.data.tags["raycity.device"] == "cpu" for c in children)
    check_folds_equal_the_table(client, children, pd.read_parquet(run_dir / "epochs.parquet"))
    summary = pd.read_parquet(run_dir / "summary.parquet")
    for column in ("miou_low", "miou_full"):
        mean, std = fold_stats(summary, column)
        assert parent.data.metrics[f"{column}_mean"] == pytest.approx(mean, rel=1e-9)
        assert parent.data.metrics[f"{column}_std"] == pytest.approx(std, rel=1e-9)
    stored = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.md", "report.md", "figures"} <= stored


def test_mlflow_missing_is_one_line(monkeypatch, capsys, tmp_path):
    from raycity import cv

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    assert cv.main(["--preset", "smoke", "--mlflow", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'raycity[mlflow]'" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # before anything was written or launched


def test_a_tracking_server_that_is_down_costs_one_line(tmp_path):
    """A closed port on 127.0.0.1, driven as a run's recorder drives the tracker (without
    Ray): one warning, nothing raised to the run, and at the end one line says what was not
    logged. (The recorder's calls into a live store: every --mlflow run of the suite.)"""
    import socket

    from raycity.config import preset
    from raycity.run import RunDir, RunState
    from raycity.tracking import Tracker

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "down"
    run_dir.mkdir()
    state = RunState("cv", preset("smoke", epochs=2, folds=2), [], "data", True, None, "tune", [])
    RunDir(run_dir).save(state)
    lines: list[str] = []
    tracker = Tracker(f"http://127.0.0.1:{port}", "raycity", lines.append)
    tracker.bind(run_dir, state)
    for fold in (1, 2):
        for epoch in (1, 2):
            tracker.epoch("cv", fold, {"epoch": epoch, "miou_low": 0.1, "miou_full": 0.1})
        tracker.fold_ended("cv", fold, "FINISHED")
    tracker.finish(pd.DataFrame([{"config_id": "cv", "fold": f, "miou_low": 0.1,
                                  "miou_full": 0.1, "status": "ok"} for f in (1, 2)]))
    warnings = [line for line in lines if "warning: MLflow" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0], lines
    assert sum("were not logged" in line for line in lines) == 1, lines


def test_a_sweep_is_an_umbrella_with_a_parent_per_configuration(sweep_run):
    code, run_dir = sweep_run
    client, runs = runs_of(run_dir.parent)
    (umbrella,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    parents = children_of(runs, umbrella)
    board = pd.read_parquet(run_dir / "leaderboard.parquet").set_index("config_id")
    assert sorted(p.data.tags["raycity.config_id"] for p in parents) == sorted(board.index)
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    for parent in parents:
        config_id = parent.data.tags["raycity.config_id"]
        assert float(parent.data.params["lr"]) == pytest.approx(board.loc[config_id, "hp_lr"])
        assert parent.data.metrics["miou_full_mean"] == pytest.approx(
            board.loc[config_id, "miou_full_mean"])
        assert parent.data.metrics["rank"] == board.loc[config_id, "rank"]
        folds = children_of(runs, parent)
        assert sorted(c.data.tags["raycity.fold"] for c in folds) == ["1", "2"]
        check_folds_equal_the_table(client, folds, epochs[epochs["config_id"] == config_id])
    assert umbrella.info.status == "FINISHED"


def test_a_resumed_tracker_continues_its_runs_and_logs_no_step_twice(tmp_path):
    """Without Ray: a sweep's tracker is stopped (KILLED) after some epochs, a second one on
    the same run directory continues the same runs; the epochs a resumed fold says again are
    not logged again; an unranked configuration gets no rank."""
    from raycity.config import preset
    from raycity.run import RunDir, RunState
    from raycity.tracking import Tracker

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state = RunState("sweep", preset("smoke"), [], "data", True, None, "tune", ["lr"])
    RunDir(run_dir).save(state)

    def row(epoch: int, score: float, lr: float) -> dict:
        return {"epoch": epoch, "miou_low": score, "miou_full": score, "train_loss": 1 - score,
                "val_loss": 1 - score, "lr": lr, "hp_lr": lr, "device": "cpu"}

    first = Tracker(local_uri(tmp_path), "raycity", print)
    first.bind(run_dir, state)
    for epoch in (1, 2):
        first.epoch("c1", 1, row(epoch, 0.1 * epoch, 1e-3))
    first.epoch("c2", 1, row(1, 0.05, 1e-2))
    first.fold_ended("c2", 1, "FAILED")
    first.stop("KILLED")
    client, runs = runs_of(tmp_path)
    assert {r.info.status for r in runs} == {"KILLED", "FAILED"}

    second = Tracker(local_uri(tmp_path / "elsewhere"), "other", print)  # the run's own wins
    second.bind(run_dir, state)
    for epoch in (2, 3):  # fold 1 of c1 resumed from its epoch-1 state: epoch 2 said again
        second.epoch("c1", 1, row(epoch, 0.1 * epoch, 1e-3))
    second.epoch("c2", 1, row(1, 0.05, 1e-2))  # the failed fold retrained, to the end
    second.epoch("c2", 1, row(2, 0.07, 1e-2))
    second.epoch("c3", 1, row(1, 0.02, 1e-1))  # fails now, and the summary says so
    summary = pd.DataFrame([{"config_id": c, "fold": 1, "miou_low": v, "miou_full": v,
                             "status": s} for c, v, s in (("c1", 0.3, "ok"), ("c2", 0.07, "ok"),
                                                          ("c3", 0.02, "failed: diverged"))])
    board = pd.DataFrame({"config_id": ["c1", "c2", "c3"],
                          "rank": pd.array([1, 2, None], dtype="Int64")})
    # the table also holds c1's epoch 4, which no trial reported to a driver (rebuilt from the
    # fold's record after the driver was killed): logged at the end
    table = [{"config_id": "c1", "fold": 1, **row(e, 0.1 * e, 1e-3)} for e in (1, 2, 3, 4)]
    pd.DataFrame(table).to_parquet(RunDir(run_dir).epochs)
    second.finish(summary, board)
    client, runs = runs_of(tmp_path)
    assert len(runs) == 1 + 3 + 3  # umbrella, a parent per configuration, a child per fold
    by_name = {r.info.run_name: r for r in runs}
    assert history(client, by_name["c1_fold1"], "miou_low") == [
        (e, pytest.approx(0.1 * e)) for e in (1, 2, 3, 4)]
    assert [s for s, _ in history(client, by_name["c2_fold1"], "miou_low")] == [1, 2]
    assert by_name["c2"].data.metrics["rank"] == 2 and "rank" not in by_name["c3"].data.metrics
    assert by_name["c1_fold1"].info.status == by_name["c2_fold1"].info.status == "FINISHED"
    assert by_name["c3_fold1"].info.status == "FAILED"
    assert by_name["run"].info.status == "FINISHED" and not (tmp_path / "elsewhere").exists()


def test_folds_that_start_over_get_new_runs_and_a_store_down_at_first_is_used_later(tmp_path):
    """A trial Tune had not saved starts over: its MLflow run is retired (deleted) and its
    epochs go to a new one, once. A first start that could not reach MLflow creates the runs
    on the next --resume."""
    from raycity.config import preset
    from raycity.run import RunDir, RunState
    from raycity.tracking import Tracker

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state = RunState("cv", preset("smoke"), [], "data", True, None, "tune", [])
    RunDir(run_dir).save(state)
    down = Tracker("http://127.0.0.1:9", "raycity", lambda line: None)  # nothing listens
    down.bind(run_dir, state)
    saved = RunDir(run_dir).tracking
    assert down.broken and (not saved.is_file() or json.loads(saved.read_text())["top"] is None)

    tracker = Tracker(local_uri(tmp_path), "raycity", print)
    tracker.bind(run_dir, state)  # the resume: created now, in the store asked for
    row = {"epoch": 1, "miou_low": 0.1, "miou_full": 0.1}
    tracker.epoch("cv", 1, row)
    tracker.forget({("cv", 1)})
    tracker.epoch("cv", 1, {**row, "miou_low": 0.3})
    client, runs = runs_of(tmp_path)  # deleted runs are not listed
    (fold,) = [r for r in runs if r.info.run_name == "fold1"]
    assert history(client, fold, "miou_low") == [(1, pytest.approx(0.3))] and len(runs) == 2


def test_a_moved_output_folder_keeps_using_its_own_store(tmp_path):
    from raycity.mlflowsetup import moved_store

    old, new = tmp_path / "old", tmp_path / "new"
    (new / "run").mkdir(parents=True)
    (new / "mlflow.db").write_bytes(b"")
    assert moved_store(local_uri(old), new / "run") == local_uri(new)  # moved, store and all
    old.mkdir()
    (old / "mlflow.db").write_bytes(b"")
    assert moved_store(local_uri(old), new / "run") == local_uri(old)  # the old one still there
