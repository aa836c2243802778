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
