import numpy as np
import pandas as pd
import pytest

from raycity.results import (
    EPOCH_COLUMNS,
    atomic_write_parquet,
    epochs_frame,
    summarize,
    table1,
    table1_markdown,
)

SEED_TABLE = {1: (0.6905, 0.6719), 2: (0.6696, 0.6495), 3: (0.6717, 0.6444)}


def seed_epochs():
    """Three folds whose best epochs (by low-res mIoU) carry the seed study's Table 1."""
    rows = []
    for fold, (low, full) in SEED_TABLE.items():
        for epoch, scale in ((1, 0.5), (2, 1.0), (3, 0.9)):
            rows.append({"config_id": "cv", "fold": fold, "epoch": epoch,
                         "miou_low": low * scale, "miou_full": full * scale, "epoch_seconds": 10.0})
    return epochs_frame(rows)


def test_summarize_reproduces_the_seed_table():
    summary = summarize(seed_epochs())
    assert summary["best_epoch"].tolist() == [2, 2, 2]
    t = table1(summary).set_index("Fold")
    lows = [v[0] for v in SEED_TABLE.values()]
    fulls = [v[1] for v in SEED_TABLE.values()]
    # The seed reports Mean 0.6773 / 0.6552 and Std 0.0094 / 0.0120 (population std, ddof=0),
    # computed from unrounded fold values: agreement is to the 4-decimal rounding of its folds.
    seed_rows = {"Mean": (0.6773, 0.6552), "Std": (0.0094, 0.0120)}
    for row, (low, full) in seed_rows.items():
        assert t.loc[row, "Low-Res mIoU"] == pytest.approx(low, abs=1e-4)
        assert t.loc[row, "Full-Res mIoU"] == pytest.approx(full, abs=1e-4)
    assert t.loc["Mean", "Low-Res mIoU"] == pytest.approx(np.mean(lows))
    assert t.loc["Std", "Low-Res mIoU"] == pytest.approx(np.std(lows, ddof=0))
    assert t.loc["Std", "Full-Res mIoU"] == pytest.approx(pd.Series(fulls).std(ddof=0))


def test_failed_fold_is_marked_and_left_out_of_the_mean():
    summary = summarize(seed_epochs(), {("cv", 3): "failed: loss is nan"})
    assert summary.set_index("fold").loc[3, "status"].startswith("failed")
    t = table1(summary).set_index("Fold")
    assert t.loc["Mean", "Low-Res mIoU"] == pytest.approx((0.6905 + 0.6696) / 2)
    md = table1_markdown(summary)
    assert "| 3 (failed) |" in md and "leave out 1 failed fold" in md
    assert "fold 3 failed: loss is nan" in md
    every = summarize(seed_epochs(), {("cv", k): "failed: bad labels" for k in (1, 2, 3)})
    every = every.assign(status="failed: bad labels")
    md = table1_markdown(every)
    assert md.count("bad labels") == 1 and "all 3 folds failed: bad labels" in md


def test_epochs_frame_dedupes_retried_epochs_and_keeps_schema():
    rows = [{"config_id": "cv", "fold": 1, "epoch": 1, "miou_low": 0.1},
            {"config_id": "cv", "fold": 1, "epoch": 2, "miou_low": 0.2},
            {"config_id": "cv", "fold": 1, "epoch": 2, "miou_low": 0.25}]  # after a restart
    df = epochs_frame(rows)
    assert list(df.columns[: len(EPOCH_COLUMNS)]) == EPOCH_COLUMNS
    assert df["epoch"].tolist() == [1, 2] and df["miou_low"].tolist() == [0.1, 0.25]


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    atomic_write_parquet(pd.DataFrame({"a": [1]}), path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_parquet(pd.DataFrame({"a": [2]}), path)
    assert pd.read_parquet(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temp file left behind


def test_markdown_has_the_seed_layout():
    md = table1_markdown(summarize(seed_epochs()), (512, 1024), (1024, 2048))
    assert "Table 1: Cross-Validation mIoU (512×1024 / 1024×2048)" in md
    assert "| Fold | Low-Res mIoU | Full-Res mIoU |" in md
    t = table1(summarize(seed_epochs())).set_index("Fold")
    assert "| 1 | 0.6905 | 0.6719 |" in md
    for row in ("Mean", "Std"):
        low, full = t.loc[row, "Low-Res mIoU"], t.loc[row, "Full-Res mIoU"]
        assert f"| {row} | {low:.4f} | {full:.4f} |" in md


def test_a_tuned_epochs_decides_when_each_configurations_folds_are_complete():
    """A 3-epoch configuration in a 5-epoch base is complete after 3 epochs, not 'stopped
    early, 0/2 done'; and the longest configuration sets ASHA's last rung and the memory plan."""
    from raycity.config import heaviest, preset
    from raycity.results import leaderboard

    summary = pd.DataFrame([
        {"config_id": c, "fold": f, "epochs_done": n, "miou_low": 0.5, "miou_full": 0.4 + d,
         "status": "ok"}
        for c, n, d in (("c1", 3, 0.0), ("c2", 5, 0.1)) for f in (1, 2)])
    values = pd.DataFrame({"hp_epochs": [3, 5]}, index=["c1", "c2"])
    board = leaderboard(summary, ["hp_epochs"], values, {"c1": 3, "c2": 5}).set_index("config_id")
    assert board.loc["c1", "folds_completed"] == 2 and not board.loc["c1", "stopped_early"]
    assert board.loc["c2", "folds_completed"] == 2
    short = leaderboard(summary, ["hp_epochs"], values, 5).set_index("config_id")
    assert short.loc["c1", "stopped_early"]  # judged against the base's 5: what it fixes
    big = heaviest(preset("smoke"), [{"epochs": 7}, {"batch_size": 4, "lr": 1e-3}, {}])
    assert (big.epochs, big.batch_size) == (7, 4)


def board_summary(scores: dict[str, list[float | None]]) -> pd.DataFrame:
    """A sweep's summary: None marks a failed fold."""
    return pd.DataFrame([
        {"config_id": c, "fold": f, "epochs_done": 0 if s is None else 3,
         "miou_low": np.nan if s is None else s, "miou_full": np.nan if s is None else s,
         "status": "failed: worker killed" if s is None else "ok"}
        for c, folds in scores.items() for f, s in enumerate(folds, 1)])


def test_the_best_epoch_is_the_one_with_the_best_low_res_miou():
    """The seed picks each fold's best epoch by val miou_low, and reports miou_full there."""
    epochs = epochs_frame([
        {"config_id": "cv", "fold": 1, "epoch": 1, "miou_low": 0.50, "miou_full": 0.60},
        {"config_id": "cv", "fold": 1, "epoch": 2, "miou_low": 0.55, "miou_full": 0.40},
        {"config_id": "cv", "fold": 1, "epoch": 3, "miou_low": 0.52, "miou_full": 0.70}])
    row = summarize(epochs).iloc[0]
    assert (row["best_epoch"], row["miou_low"], row["miou_full"]) == (2, 0.55, 0.40)


def test_leaderboard_mean_and_std_are_over_the_folds_with_ddof_0():
    from raycity.results import leaderboard

    scores = {"c1": [0.60, 0.64, 0.71], "c2": [0.50, 0.52, 0.57]}
    board = leaderboard(board_summary(scores), [], pd.DataFrame(index=list(scores)), 3)
    board = board.set_index("config_id")
    for c, values in scores.items():
        assert board.loc[c, "miou_full_mean"] == pytest.approx(np.mean(values))
        assert board.loc[c, "miou_full_std"] == pytest.approx(np.std(values, ddof=0))
        assert board.loc[c, "miou_full_std"] != pytest.approx(np.std(values, ddof=1))


def test_a_configuration_missing_a_fold_is_never_ranked_above_a_complete_one():
    """The issue's sweep: c1 lost fold 3 (its worker killed too often) and its 2-fold mean
    (0.078) is above c2's 3-fold mean (0.070). A mean of fewer folds is another estimate: c2
    is the best configuration, c1 is listed after it, unranked, saying how to complete it."""
    from raycity.results import NothingRankedError, best_config, leaderboard, leaderboard_markdown

    summary = board_summary({"c1": [0.126, 0.030, None], "c2": [0.104, 0.036, 0.070],
                             "c3": [0.02, 0.03, 0.04]})
    board = leaderboard(summary, [], pd.DataFrame(index=["c1", "c2", "c3"]), 3)
    assert board["config_id"].tolist() == ["c2", "c3", "c1"]
    assert board["rank"].tolist()[:2] == [1, 2] and pd.isna(board["rank"].iloc[2])
    assert board.loc[2, "miou_full_mean"] == pytest.approx(0.078)  # still shown
    assert best_config(board) == "c2"
    md = leaderboard_markdown(board, [], "miou_full")
    assert "| — | c1 | 2/3 (1 failed: unranked; --resume can complete it) |" in md
    with pytest.raises(NothingRankedError, match="--resume"):
        best_config(leaderboard(board_summary({"c1": [0.1, None]}), [],
                                pd.DataFrame(index=["c1"]), 3))


def test_per_class_table_is_each_class_mean_and_std_over_the_finished_folds():
    from raycity.report import per_class_table
    from raycity.results import IOU_FULL, IOU_LOW

    rng = np.random.default_rng(0)
    summary = board_summary({"cv": [0.5, 0.6, 0.7, None]})
    for col in IOU_LOW + IOU_FULL:
        summary[col] = rng.uniform(0, 1, len(summary))
    summary.loc[1, "iou_low_road"] = np.nan  # road absent from fold 2's images
    lines = per_class_table(summary).splitlines()
    ok = summary.iloc[:3]  # fold 4 failed: left out
    road = [r for r in lines if r.startswith("| road |")][0]
    low = ok["iou_low_road"].dropna()
    assert road == (f"| road | {low.mean():.4f} ± {low.std(ddof=0):.4f} | "
                    f"{ok['iou_full_road'].mean():.4f} ± {ok['iou_full_road'].std(ddof=0):.4f} |")
    bike = ok["iou_low_bicycle"]
    assert f"| bicycle | {bike.mean():.4f} ± {bike.std(ddof=0):.4f} |" in per_class_table(summary)
    assert len(lines) == 2 + 19


def test_table1_with_repeats_lists_every_repeat_and_fold_and_the_std_of_repeat_means():
    """R = 2, K = 2: four rows numbered within their repeat; Mean and Std (ddof=0) over all four
    finished folds; the std of the two repeat means; a fold pending in repeat 2 is listed."""
    values = {1: 0.50, 2: 0.60, 3: 0.40, 4: 0.50}  # repeat means 0.55, 0.45
    rows = [{"config_id": "cv", "fold": f, "repeat": (f - 1) // 2 + 1, "epoch": 1,
             "miou_low": v, "miou_full": v - 0.1} for f, v in values.items()]
    summary = summarize(epochs_frame(rows), folds=4, repeats=2)
    assert summary["repeat"].tolist() == [1, 1, 2, 2]
    table = table1(summary)
    assert table[["Repeat", "Fold"]].values.tolist()[:4] == [["1", "1"], ["1", "2"],
                                                             ["2", "1"], ["2", "2"]]
    by = table.set_index("Fold")
    lows = np.array(list(values.values()))
    assert by.loc["Mean", "Low-Res mIoU"] == pytest.approx(lows.mean())
    assert by.loc["Std", "Low-Res mIoU"] == pytest.approx(lows.std(ddof=0))
    assert by.loc["Std of repeat means", "Low-Res mIoU"] == pytest.approx(
        np.std([lows[:2].mean(), lows[2:].mean()], ddof=0))
    md = table1_markdown(summary)
    assert "| Repeat | Fold | Low-Res mIoU | Full-Res mIoU |" in md and "| 2 | 1 | 0.4000 |" in md
    pending = summarize(epochs_frame(rows[:3]), folds=4, repeats=2)
    assert pending.set_index("fold").loc[4, "repeat"] == 2
    assert "| 2 | 2 (pending" in table1_markdown(pending)
    # one repeat: the seed's layout, no Repeat column
    assert "Repeat" not in table1(summarize(epochs_frame(rows[:2]), folds=2))
