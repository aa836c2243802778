"""The paired tests between configurations, recomputed here from their definitions."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from raycity.comparison import bayesian_correlated_t, compare, comparison_markdown, corrected_t_test
from raycity.folds import FoldSplit


def test_the_corrected_t_test_and_the_bayesian_test_follow_their_definitions():
    diffs, ratio = [0.010, 0.025, 0.031], 0.5  # 3 folds; n_test / n_train of 3-fold CV
    mean, var = np.mean(diffs), np.var(diffs, ddof=1)
    t = mean / math.sqrt((1 / 3 + ratio) * var)  # Nadeau & Bengio's variance correction
    assert corrected_t_test(diffs, ratio) == pytest.approx((t, 2 * stats.t.sf(abs(t), 2)), rel=1e-12)
    naive = mean / math.sqrt(var / 3)  # the uncorrected paired t: far too confident
    assert abs(t) < abs(naive)
    posterior = stats.t(2, loc=mean, scale=math.sqrt((1 / 3 + ratio) * var))
    better, equivalent, worse = bayesian_correlated_t(diffs, ratio, rope=0.005)
    assert better == pytest.approx(1 - posterior.cdf(0.005), rel=1e-12)
    assert worse == pytest.approx(posterior.cdf(-0.005), rel=1e-12)
    assert better + equivalent + worse == pytest.approx(1)
    assert all(math.isnan(v) for v in corrected_t_test([0.01], ratio))  # one pair: no test


def test_compare_pairs_folds_and_leaves_out_failed_ones():
    folds = [FoldSplit(k, tuple(f"t{i}" for i in range(6)), ("v1", "v2", "v3")) for k in (1, 2, 3)]
    summary = pd.DataFrame([
        {"config_id": c, "fold": f, "miou_low": v, "miou_full": v + 0.01,
         "status": "failed: killed" if (c, f) == ("c2", 3) else "ok"}
        for c, values in (("c1", [0.60, 0.62, 0.61]), ("c2", [0.58, 0.57, 0.9]),
                          ("c3", [0.55, 0.60, 0.52])) for f, v in zip((1, 2, 3), values)])
    table = compare(summary, "c1", folds).set_index(["config_id", "metric"])
    assert table.loc[("c2", "miou_full"), "pairs"] == 2  # c2's fold 3 failed: no pair
    row = table.loc[("c3", "miou_full")]
    diffs = np.array([0.55 - 0.60, 0.60 - 0.62, 0.52 - 0.61])
    assert row["diff_mean"] == pytest.approx(diffs.mean()) and row["pairs"] == 3
    assert row["diff_std"] == pytest.approx(diffs.std(ddof=1))
    assert row["test_train_ratio"] == pytest.approx(0.5)
    assert row["p_worse"] > row["p_better"]
    text = comparison_markdown(compare(summary, "c1", folds))
    assert "corrected resampled t-test" in text and "Only 2 pair(s)" in text


def test_a_sweep_writes_the_comparison_its_tables_give(sweep_run):
    """Recomputed from epochs.parquet and folds.json alone: each fold's Table 1 value (best
    epoch by miou_low), paired against the ranked best configuration."""
    _, run_dir = sweep_run
    table = pd.read_parquet(run_dir / "comparison.parquet")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    folds = json.loads((run_dir / "folds.json").read_text())["folds"]
    ratio = np.mean([len(f["val"]) / len(f["train"]) for f in folds])
    best = epochs.loc[epochs.groupby(["config_id", "fold"])["miou_low"].idxmax()]
    board = pd.read_parquet(run_dir / "leaderboard.parquet")
    baseline = board.loc[board["rank"] == 1, "config_id"].item()
    assert set(table["baseline"]) == {baseline} and baseline not in set(table["config_id"])
    for row in table.itertuples():
        a = best[best["config_id"] == row.config_id].set_index("fold")[row.metric]
        b = best[best["config_id"] == baseline].set_index("fold")[row.metric]
        diffs = (a - b).dropna().to_numpy()
        t = diffs.mean() / math.sqrt((1 / len(diffs) + ratio) * diffs.var(ddof=1))
        assert row.pairs == len(diffs)
        assert abs(row.diff_mean - diffs.mean()) <= 1e-9
        assert abs(row.t - t) <= 1e-9 * max(1, abs(t))
        assert abs(row.p_value - 2 * stats.t.sf(abs(t), len(diffs) - 1)) <= 1e-9
    assert "corrected resampled t-test" in (run_dir / "leaderboard.md").read_text()
    assert "corrected resampled t-test" in (run_dir / "report.md").read_text()
    # two configurations: a parallel-coordinates figure, and nothing to apportion yet
    assert (run_dir / "figures" / "parallel_coordinates.png").is_file()
    assert "parallel_coordinates.png" in (run_dir / "report.md").read_text()
    assert pd.read_parquet(run_dir / "importance.parquet").empty


def write_run(root, name: str, data_root, seed: int, scores: dict[int, float]):
    """A finished CV run's files, written by raycity's own run-directory code, without Ray."""
    from raycity.config import preset
    from raycity.data import find_samples
    from raycity.folds import make_folds
    from raycity.results import epochs_frame
    from raycity.run import RunDir, RunState, Variant
    from raycity.runtables import write_tables

    cfg = preset("smoke", data_root=str(data_root), seed=seed)
    state = RunState("cv", cfg, [Variant("cv")], str(data_root), False, None, "tune", [])
    files = RunDir(root / name)
    files.path.mkdir(parents=True)
    files.write_new(state, make_folds([s.key for s in find_samples(data_root, "train")], 3, seed))
    epochs = epochs_frame([{"config_id": "cv", "fold": f, "epoch": e, "miou_low": v * e / 2,
                            "miou_full": v * e / 2 - 0.01} for f, v in scores.items()
                           for e in (1, 2)])
    write_tables(files.path, state, epochs, {})
    return files.path


def test_the_compare_command_pairs_two_runs_by_fold(tmp_path, tiny_cityscapes, capsys):
    from raycity import compare as command

    a = write_run(tmp_path, "before", tiny_cityscapes, 0, {1: 0.60, 2: 0.62, 3: 0.58})
    b = write_run(tmp_path, "after", tiny_cityscapes, 0, {1: 0.63, 2: 0.64, 3: 0.62})
    assert command.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "B = after against A = before" in out and "corrected resampled t-test" in out
    table = pd.read_parquet(b / "comparison-vs-before.parquet").set_index("metric")
    diffs = np.array([0.03, 0.02, 0.04])  # each fold's best epoch (2) of B minus A
    assert table.loc["miou_low", "diff_mean"] == pytest.approx(diffs.mean())
    assert table.loc["miou_low", "pairs"] == 3 and table.loc["miou_low", "p_better"] > 0.5
    other = write_run(tmp_path, "reseeded", tiny_cityscapes, 1, {1: 0.6, 2: 0.6, 3: 0.6})
    assert command.main([str(a), str(other)]) == 2
    err = capsys.readouterr().err
    assert "cut into different folds" in err and len(err.strip().splitlines()) == 1
    assert command.main([str(a), str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'}: not a raycity run" in capsys.readouterr().err
    assert command.main([str(a), f"{a}:c7"]) == 2  # a CV run has no configuration c7
    assert "no configuration 'c7'" in capsys.readouterr().err


def test_per_class_table_holds_every_fold_and_their_mean(tmp_path, tiny_cityscapes):
    from raycity.results import IOU_FULL, IOU_LOW

    run = write_run(tmp_path, "cv", tiny_cityscapes, 0, {1: 0.6, 2: 0.5, 3: 0.7})
    assert set(pd.read_parquet(run / "per_class.parquet")["fold"]) == {1, 2, 3}  # written
    from raycity.results import summarize
    from raycity.runtables import per_class_frame

    epochs = pd.read_parquet(run / "epochs.parquet")
    rng = np.random.default_rng(1)
    for col in IOU_LOW + IOU_FULL:
        epochs[col] = rng.uniform(0, 1, len(epochs))
    summary = summarize(epochs)
    summary.loc[summary["fold"] == 3, "status"] = "failed: killed"
    table = per_class_frame(summary)
    road = table[table["class"] == "road"].set_index("fold")
    assert sorted(road.index) == [1, 2]  # fold 3 failed
    values = summary.set_index("fold").loc[[1, 2], "iou_full_road"]
    assert road["iou_full"].tolist() == values.tolist()
    assert road["iou_full_mean"].iloc[0] == pytest.approx(values.mean())
    assert road["iou_full_std"].iloc[0] == pytest.approx(values.std(ddof=0))
    assert table["class"].nunique() == 19


def test_the_classes_that_moved_most_are_named():
    from raycity.comparison import class_differences
    from raycity.results import IOU_FULL

    rows = []
    for config_id, shift in (("a", 0.0), ("b", 1.0)):
        for fold in (1, 2):
            row = {"config_id": config_id, "fold": fold, "status": "ok"}
            row.update({col: 0.5 for col in IOU_FULL})
            row["iou_full_road"] += 0.10 * shift
            row["iou_full_car"] -= 0.20 * shift
            row["iou_full_sky"] += 0.01 * shift * fold
            rows.append(row)
    moved = class_differences(pd.DataFrame(rows), "b", "a")
    assert [k for k, _ in moved] == ["car", "road", "sky"]
    assert moved[0][1] == pytest.approx(-0.20) and moved[2][1] == pytest.approx(0.015)


def a_search(n: int = 10) -> pd.DataFrame:
    """A leaderboard whose fold means depend on lr alone (a bump at 1e-4), not on dropout."""
    rng = np.random.default_rng(4)
    lr = 10 ** rng.uniform(-5, -3, n)
    dropout = rng.uniform(0, 0.5, n)
    score = 0.6 - 0.2 * (np.log10(lr) + 4) ** 2
    return pd.DataFrame({"config_id": [f"c{i}" for i in range(n)], "rank": pd.array(
        np.argsort(np.argsort(-score)) + 1, dtype="Int64"), "hp_lr": lr, "hp_dropout": dropout,
        "miou_full_mean": score, "miou_full_std": 0.01})


def test_importance_finds_the_value_that_mattered(tmp_path):
    from raycity.searchview import importance, importance_figure, parallel_coordinates

    board = a_search()
    table = importance(board, ["lr", "dropout"], ["lr"], "miou_full").set_index("param")
    assert table["importance"].sum() == pytest.approx(1)
    assert table.loc["lr", "importance"] > 0.8 > table.loc["dropout", "importance"]
    assert (table["configurations"] == 10).all() and set(table["evaluator"]) == {"fanova"}
    importance_figure(table.reset_index(), tmp_path / "importance.png")
    assert parallel_coordinates(board, ["lr", "dropout"], ["lr"], "miou_full",
                                tmp_path / "parallel.png")
    from PIL import Image

    for name in ("importance.png", "parallel.png"):
        with Image.open(tmp_path / name) as im:
            assert im.width > 400
    # two configurations, or one tuned value, leave nothing to apportion
    assert importance(board.iloc[:2], ["lr", "dropout"], ["lr"], "miou_full").empty
    assert importance(board, ["lr"], ["lr"], "miou_full").empty
    unranked = board.assign(rank=pd.array([None] * 10, dtype="Int64"))
    assert importance(unranked, ["lr", "dropout"], ["lr"], "miou_full").empty
