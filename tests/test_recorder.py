"""The driver-side recorder: what lands in epochs.parquet for a result, and which failures it
lets Tune retry."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from raycity.config import preset
from raycity.run import RunState, Variant
from raycity.tune.recorder import RunRecorder, recording
from raycity.tune.trainable import USER_ERROR


def trial(config_id, fold, overrides, trial_id="t1"):
    return SimpleNamespace(config={"variant": {"config_id": config_id, "overrides": overrides},
                                   "fold": fold}, trial_id=trial_id, max_failures=2)


def result(epoch, lr):
    return {"epoch": epoch, "fold": 1, "lr": lr, "train_loss": 1.0, "val_loss": 1.0,
            "miou_low": 0.1, "miou_full": 0.1, "epoch_seconds": 1.0}


def test_lr_is_the_rate_in_effect_and_tuned_values_have_their_own_columns(tmp_path):
    """A configuration started at lr 1e-3; by epoch 3 ReduceLROnPlateau had halved it. The row
    says both: `lr` 5e-4 (in effect), `hp_lr` 1e-3 (configured)."""
    state = RunState("sweep", preset("smoke"), [Variant("c1", {"lr": 1e-3})], str(tmp_path),
                     True, None, "tune", ["lr", "dropout"])
    lines = []
    with recording(tmp_path, state, lines.append):
        recorder = RunRecorder()
        recorder.setup()
        t = trial("c1", 1, {"lr": 1e-3})
        recorder.on_trial_result(0, [t], t, result(1, 1e-3))
        recorder.on_trial_result(0, [t], t, result(3, 5e-4))
    epochs = pd.read_parquet(tmp_path / "epochs.parquet").set_index("epoch")
    assert epochs.loc[3, "lr"] == 5e-4 and epochs.loc[3, "hp_lr"] == 1e-3
    assert epochs.loc[1, "lr"] == 1e-3
    assert epochs.loc[3, "hp_dropout"] == preset("smoke").dropout  # untuned here: the config's
    assert len(lines) == 2 and "lr 0.0005" in lines[1]


def test_a_users_mistake_is_not_retried_a_crash_is(tmp_path):
    state = RunState("cv", preset("smoke"), [Variant("cv")], str(tmp_path), True, None, "tune",
                     [])
    with recording(tmp_path, state, lambda line: None):
        recorder = RunRecorder()
        recorder.setup()
        mistake, crash = trial("cv", 1, {}, "a"), trial("cv", 2, {}, "b")
        recorder.on_trial_result(0, [mistake], mistake, {USER_ERROR: "DataError: x.png: bad"})
        assert mistake.max_failures == 0  # its next error is final
        assert crash.max_failures == 2  # a trial that only crashed keeps its retries
        mistake.get_error = lambda: "raycity.data.layout.DataError: x.png: bad"
        recorder.on_trial_error(0, [mistake], mistake)
    assert mistake.max_failures == 2  # given back, for a later --resume
    assert recorder.status[("cv", 1)] == "failed: DataError: x.png: bad"


def test_a_replayed_result_adds_no_line_and_a_row_only_if_missing(tmp_path):
    from raycity.foldsession import REPLAYED

    state = RunState("cv", preset("smoke"), [Variant("cv")], str(tmp_path), True, None, "tune", [])
    lines = []
    with recording(tmp_path, state, lines.append):
        recorder = RunRecorder()
        recorder.setup()
        t = trial("cv", 1, {})
        recorder.on_trial_result(0, [t], t, result(1, 1e-3))
        recorder.on_trial_result(0, [t], t, {**result(1, 1e-3), REPLAYED: True})
        assert len(lines) == 1 and len(pd.read_parquet(tmp_path / "epochs.parquet")) == 1
        # one this driver never heard (a crash between the fold's record and its report)
        recorder.on_trial_result(0, [t], t, {**result(2, 1e-3), REPLAYED: True})
    assert len(lines) == 1
    assert pd.read_parquet(tmp_path / "epochs.parquet")["epoch"].tolist() == [1, 2]


def test_a_configuration_that_never_finished_an_epoch_keeps_its_leaderboard_row(tmp_path):
    """Every fold of c2 failed before its first epoch (say, out of memory at a swept batch
    size): its values come from what the searcher proposed, and the leaderboard still lists it."""
    from raycity.results import leaderboard, summarize
    from raycity.sweep import tuned_values

    state = RunState("sweep", preset("smoke"), [], str(tmp_path), True, None, "tune",
                     ["lr", "dropout"])
    epochs = pd.DataFrame([{**result(e, 1e-3), "fold": f, "config_id": "c1", "hp_lr": 1e-3,
                            "hp_dropout": 0.0} for f in (1, 2) for e in (1, 2)])
    told = [{"config_id": "c1", "values": {"lr": 1e-3}},
            {"config_id": "c2", "values": {"lr": 5e-2, "dropout": 0.3}}]
    failed = {("c2", f): "failed: FoldOutOfMemoryError: …" for f in (1, 2)}
    summary = summarize(epochs, failed, folds=2)
    values = tuned_values(state, epochs, told)
    assert values.loc["c2", "hp_lr"] == 5e-2 and values.loc["c2", "hp_dropout"] == 0.3
    board = leaderboard(summary, ["hp_lr", "hp_dropout"], values, epochs=2).set_index("config_id")
    assert board.loc["c1", "rank"] == 1 and board.loc["c2", "folds_failed"] == 2
    assert board.loc["c2", "hp_lr"] == 5e-2 and pd.isna(board.loc["c2", "miou_full_mean"])


def test_a_trial_started_after_tunes_last_snapshot_is_not_the_runs(tmp_path):
    """Tune does not restore it and its configuration is proposed again (possibly with other
    values), so a rebuilt or completed table must not take its epochs."""
    import json

    from raycity.foldstates import FoldCheckpoints
    from raycity.runtables import trial_records

    state = RunState("sweep", preset("smoke"), [], str(tmp_path), True, None, "tune", ["lr"])
    experiment = tmp_path / "tune"
    for trial_id, lr in (("a1b2c_00000", 1e-3), ("a1b2c_00001", 5e-2)):
        ck = FoldCheckpoints(str(experiment / f"c1_fold1_{trial_id}" / "raycity"),
                             labels={"config_id": "c1", "overrides": {"lr": lr}})
        ck.record({**result(1, lr), "fold": 1})
    rows = trial_records(str(experiment), state)
    assert sorted(r["hp_lr"] for r in rows) == [1e-3, 5e-2]  # no snapshot yet: every trial
    snapshot = {"trial_data": [[json.dumps({"trial_id": "a1b2c_00000"}), "{}"]]}
    (experiment / "experiment_state-2026-11-29_08-00-00.json").write_text(json.dumps(snapshot))
    assert [r["hp_lr"] for r in trial_records(str(experiment), state)] == [1e-3]


def test_a_fold_stopped_by_early_stopping_drops_its_states_at_once(tmp_path):
    """Stopped at a rung it will never resume: its states go when Tune says it is complete;
    a finished fold (done.json) and a run stopped by a signal keep theirs."""
    from types import SimpleNamespace

    import pyarrow.fs

    from raycity.foldfiles import STATE_DIR
    from raycity.tune.recorder import Recording, RunRecorder

    def trial(name):
        folder = tmp_path / name / STATE_DIR
        folder.mkdir(parents=True)
        for f in ("state-000001.pt", "state-000002.pt", "best-000001.pt", "best-000002.pt"):
            (folder / f).write_bytes(b"x" * 100)
        storage = SimpleNamespace(trial_fs_path=str(tmp_path / name),
                                  storage_filesystem=pyarrow.fs.LocalFileSystem())
        return SimpleNamespace(storage=storage), folder

    recorder = RunRecorder()
    recorder.run = Recording(tmp_path, None, print)
    stopped, folder = trial("stopped")
    recorder.drop_if_stopped(stopped)
    assert sorted(p.name for p in folder.iterdir()) == ["best-000002.pt"]
    finished, folder = trial("finished")
    (folder / "done.json").write_text("{}")
    recorder.drop_if_stopped(finished)
    assert len(list(folder.iterdir())) == 5
    recorder.run = Recording(tmp_path, None, print, stop=SimpleNamespace(signum=15))
    interrupted, folder = trial("interrupted")
    recorder.drop_if_stopped(interrupted)
    assert len(list(folder.iterdir())) == 4


def test_a_cv_runs_curves_follow_it_at_most_every_interval_and_are_complete_when_it_stops(
        tmp_path, monkeypatch):
    """Each redraw costs the driver CPU its trials need: the curves are drawn LIVE_FIGURES_S
    after the driver starts, then at most every LIVE_FIGURES_S; a run stopped part-way (no
    report to follow) draws what was left at its end, a finished one leaves that to its report."""
    from raycity.run import RunDir
    from raycity.tune import recorder as module

    now = [1000.0]
    monkeypatch.setattr(module, "monotonic", lambda: now[0])
    state = RunState("cv", preset("smoke"), [Variant("cv")], str(tmp_path), True, None, "tune", [])
    files = RunDir(tmp_path)
    drawn = lambda: {p.name: p.read_bytes() for p in files.figures.glob("*.png")}  # noqa: E731
    wait = module.LIVE_FIGURES_S
    with recording(tmp_path, state, lambda line: None):
        recorder = RunRecorder()
        recorder.setup()
        one, two = trial("cv", 1, {}, "a"), trial("cv", 2, {}, "b")
        recorder.on_trial_result(0, [one, two], one, result(1, 1e-3))
        now[0] += wait - 1
        recorder.on_trial_result(0, [one, two], two, {**result(1, 1e-3), "fold": 2})
        assert drawn() == {}  # too soon after the start: the tables only
        assert len(pd.read_parquet(files.epochs)) == 2
        now[0] += 1
        recorder.on_trial_result(0, [one, two], one, result(2, 1e-3))
        first = drawn()  # every fold that had new epochs, and the mean
        assert set(first) == {"fold1_history.png", "fold2_history.png", "cv_history.png"}
        now[0] += wait - 1
        recorder.on_trial_result(0, [one, two], two, {**result(2, 1e-3), "fold": 2})
        assert drawn() == first  # too soon after the last drawing
        now[0] += 1
        recorder.on_trial_result(0, [one, two], one, result(3, 1e-3))
        second = drawn()
        assert all(second[name] != first[name] for name in first)  # fold 2's epoch 2 too
        recorder.on_trial_result(0, [one, two], one, result(4, 1e-3))
        assert drawn() == second
        one.status, two.status = "TERMINATED", "TERMINATED"
        recorder.on_experiment_end([one, two])  # finished: its report draws them
        assert drawn() == second
        one.status = "RUNNING"
        recorder.on_experiment_end([one, two])  # stopped part-way: drawn now, with epoch 4
        assert drawn()["fold1_history.png"] != second["fold1_history.png"]
        assert drawn()["fold2_history.png"] == second["fold2_history.png"]


def test_a_trial_that_never_reported_is_known_by_its_folder():
    """Tune's Result has no config for a trial whose worker died before its first result; the
    driver's table of outcomes still needs its (configuration, fold) — it used to end the run
    in a TypeError traceback."""
    from raycity.runtables import trial_dirname
    from raycity.tune.experiment import result_key

    reported = SimpleNamespace(config={"variant": {"config_id": "c_2"}, "fold": 3}, path="x")
    assert result_key(reported) == ("c_2", 3)
    silent = SimpleNamespace(config=None, path=f"/runs/tune/{trial_dirname('c_2', 3, '1e76e_00001')}")
    assert result_key(silent) == ("c_2", 3)
