"""`raycity.sweep` end to end through real Ray Tune, on generated data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from raycity import evaluate, predict, sweep


def test_sweep_ranks_configurations_by_fold_mean(sweep_run):
    code, run_dir = sweep_run
    assert code == 0
    board = pd.read_parquet(run_dir / "leaderboard.parquet")
    assert len(board) == 2 and board["rank"].tolist() == [1, 2]
    assert board["miou_full_mean"].is_monotonic_decreasing
    assert (board["folds"] == 2).all()
    summary = pd.read_parquet(run_dir / "summary.parquet")
    for row in board.itertuples():
        folds = summary[summary["config_id"] == row.config_id]
        assert row.miou_full_mean == pytest.approx(folds["miou_full"].mean())
        assert row.miou_full_std == pytest.approx(folds["miou_full"].std(ddof=0))
    md = (run_dir / "leaderboard.md").read_text()
    assert "| rank | config | lr | dropout |" in md
    best = board.iloc[0]["config_id"]
    assert f"Best configuration: {best}" in (run_dir / "summary.md").read_text()


def test_every_fold_of_a_configuration_shares_its_hyperparameters(sweep_run):
    _, run_dir = sweep_run
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert {"config_id", "lr", "hp_lr", "hp_dropout"} <= set(epochs.columns)
    per_config = epochs.groupby("config_id")[["hp_lr", "hp_dropout"]].nunique()
    assert (per_config == 1).all().all()
    assert sorted(epochs.groupby("config_id")["fold"].nunique()) == [2, 2]
    assert sorted(epochs.groupby("config_id")["hp_dropout"].first()) == [0.0, 0.3]
    assert epochs.groupby("config_id")["hp_lr"].first().nunique() == 2  # own draw per config
    # what each trial actually trained with: the optimizer's lr it reported at epoch 1
    first = epochs[epochs["epoch"] == 1]
    assert (first["lr"] == first["hp_lr"]).all()
    for params in (run_dir / "tune").glob("*/params.json"):
        p = json.loads(params.read_text())
        rows = first[(first["config_id"] == p["variant"]["config_id"])
                     & (first["fold"] == p["fold"])]
        assert p["variant"]["overrides"]["lr"] == rows["lr"].item()


def test_bad_space_launches_nothing(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("params:\n  lr: {uniform: [0.1, 0.01]}\n")
    assert sweep.main(["--space", str(space), "--preset", "smoke", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(space) in err and "params.lr.uniform" in err
    assert not any(tmp_path.glob("smoke-*"))
    assert sweep.main(["--space", "nope.yaml", "--preset", "smoke"]) == 2
    assert "available: dropout.yaml, lr.yaml, lr_dropout.yaml" in capsys.readouterr().err
    assert sweep.main(["--space", "lr.yaml", "--preset", "smoke", "--lr", "0.1"]) == 2
    assert "tuned by the space and also fixed by a flag" in capsys.readouterr().err


def test_early_stopping_from_the_space_file_stops_whole_configurations(sweep_run):
    """`stopped_early` says a configuration's folds ended before the last epoch — checked here
    against epochs.parquet, and every stopped configuration stopped on all folds at once."""
    _, run_dir = sweep_run
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    last = epochs.groupby(["config_id", "fold"])["epoch"].max().unstack()
    board = pd.read_parquet(run_dir / "leaderboard.parquet").set_index("config_id")
    for config_id, folds in last.iterrows():
        assert folds.nunique() == 1  # all folds of a configuration end at the same epoch
        assert board.loc[config_id, "stopped_early"] == (folds.iloc[0] < 2)
        assert board.loc[config_id, "folds_completed"] == (2 if folds.iloc[0] == 2 else 0)
    # one configuration at a time: c1 reaches the rung (epoch 1) alone and goes on; c2 is cut
    # iff its fold mean there is below c1's (ASHA's cutoff at reduction factor 2: the median of
    # the two). On a smoke model both are noise, so which way it goes is read off the table.
    at_rung = epochs[epochs["epoch"] == 1].groupby("config_id")["miou_full"].mean()
    stopped = set(board.index[board["stopped_early"]])
    assert stopped == ({"c2"} if at_rung["c2"] < at_rung["c1"] else set())
    assert ("| yes |" in (run_dir / "leaderboard.md").read_text()) == bool(stopped)
    # the searcher heard every configuration once — the stopped one too, with its fold mean
    # (each fold at its best epoch, by miou_low, of those it ran)
    told = json.loads((run_dir / "searcher.json").read_text())
    assert sorted(t["config_id"] for t in told) == sorted(board.index)
    best = epochs.loc[epochs.groupby(["config_id", "fold"])["miou_low"].idxmax()]
    for t in told:
        assert not t["error"]
        assert t["mean"] == pytest.approx(best[best["config_id"] == t["config_id"]]
                                          ["miou_full"].mean(), abs=1e-12)


def test_evaluate_and_predict_on_a_sweep_use_the_best_configuration(sweep_run, tmp_path):
    _, run_dir = sweep_run
    best = pd.read_parquet(run_dir / "leaderboard.parquet").iloc[0]["config_id"]
    assert evaluate.main(["--run", str(run_dir), "--split", "folds"]) == 0
    rows = pd.read_parquet(run_dir / "val.parquet").set_index("model")
    everything = pd.read_parquet(run_dir / "summary.parquet").set_index(["config_id", "fold"])
    other = next(c for c in everything.index.get_level_values(0) if c != best)
    for fold in (1, 2):
        assert abs(rows.loc[f"fold{fold}", "miou_full"] - everything.loc[(best, fold), "miou_full"]) \
            <= 1e-6
    # (the other configuration scores otherwise, so scoring it instead would show)
    assert any(abs(everything.loc[(other, f), "miou_full"] - everything.loc[(best, f), "miou_full"])
               > 1e-4 for f in (1, 2))
    assert predict.main(["--run", str(run_dir), "--fold", "2", "--out", str(tmp_path / "p")]) == 0
    root = json.loads((run_dir / "run.json").read_text())["data_root"]
    assert predict.main(["--checkpoint", str(run_dir / "checkpoints" / f"{best}_fold2.pt"),
                         "--data-root", root, "--out", str(tmp_path / "q")]) == 0
    written = sorted((tmp_path / "p" / "labelIds").rglob("*_pred_labelIds.png"))
    assert len(written) == 2
    for path in written:  # the best configuration's fold-2 model made them
        twin = tmp_path / "q" / path.relative_to(tmp_path / "p")
        assert path.read_bytes() == twin.read_bytes()
    assert (run_dir / "figures" / "sweep.png").is_file()
    assert "![the search](figures/sweep.png)" in (run_dir / "report.md").read_text()
