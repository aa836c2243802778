"""The driver-side recorder: what lands in epochs.parquet for a result, and which failures it
lets Tune retry."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from raycity.config import preset
from raycity.tune.recorder import RunRecorder, recording
from raycity.tune.rundir import RunState, Variant
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


def test_a_replayed_rung_adds_no_row_and_no_line(tmp_path):
    from raycity.training import REPLAYED

    state = RunState("cv", preset("smoke"), [Variant("cv")], str(tmp_path), True, None, "tune", [])
    lines = []
    with recording(tmp_path, state, lines.append):
        recorder = RunRecorder()
        recorder.setup()
        t = trial("cv", 1, {})
        recorder.on_trial_result(0, [t], t, result(1, 1e-3))
        recorder.on_trial_result(0, [t], t, {**result(1, 1e-3), REPLAYED: True})
    assert len(lines) == 1 and len(pd.read_parquet(tmp_path / "epochs.parquet")) == 1


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
