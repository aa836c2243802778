"""`raycity.cv` as a user runs it: real Ray Tune, generated data, the files a user opens."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from raycity import cv
from raycity.checkpoint import load_checkpoint
from raycity.results import IOU_FULL, IOU_LOW
from tests.conftest import SMOKE_EPOCHS as EPOCHS


@pytest.fixture
def demo_run(smoke_run):
    return smoke_run


def test_run_succeeds_and_prints_the_demo_banner(demo_run):
    code, run_dir = demo_run
    assert code == 0
    console = (run_dir.parent / "console.txt").read_text()
    assert "DEMO on synthetic street scenes" in console and "--data-root" in console
    for fold in (1, 2, 3):  # one line per epoch and fold
        assert sum(f"[fold {fold}] epoch" in line for line in console.splitlines()) == EPOCHS
    assert "Table 1: Cross-Validation mIoU" in console and f"results: {run_dir}" in console
    # Ray's own notices stay out of the console; they are in the run's ray.log
    assert "Token authentication" not in console and "Traceback" not in console
    assert (run_dir / "ray.log").is_file()
    assert (run_dir / "config.json").is_file() and (run_dir / "folds.json").is_file()


def test_epochs_parquet_holds_every_fold_and_epoch_once(demo_run):
    _, run_dir = demo_run
    df = pd.read_parquet(run_dir / "epochs.parquet")
    assert sorted(df["fold"].unique()) == [1, 2, 3]
    assert len(df) == 3 * EPOCHS
    assert not df.duplicated(["fold", "epoch"]).any()
    assert df.groupby("fold")["epoch"].apply(sorted).tolist() == [[1, 2]] * 3
    for col in ["lr", "train_loss", "val_loss", "miou_low", "miou_full", "epoch_seconds",
                *IOU_LOW, *IOU_FULL]:
        assert col in df, col
    assert df["miou_low"].between(0, 1).all() and df["miou_full"].between(0, 1).all()
    assert (df["lr"] > 0).all() and (df["epoch_seconds"] > 0).all()


def test_summary_and_table1_agree(demo_run):
    """summary.parquet and summary.md against the seed's rule applied here with plain pandas:
    each fold's row at its best epoch by val miou_low, then Mean and Std (ddof=0)."""
    _, run_dir = demo_run
    summary = pd.read_parquet(run_dir / "summary.parquet")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    best = epochs.loc[epochs.groupby("fold")["miou_low"].idxmax()].set_index("fold")
    assert summary["fold"].tolist() == [1, 2, 3]
    for row in summary.itertuples():
        assert row.best_epoch == best.loc[row.fold, "epoch"]
        assert row.miou_low == best.loc[row.fold, "miou_low"]
        assert row.miou_full == best.loc[row.fold, "miou_full"]
    md = (run_dir / "summary.md").read_text()
    assert "| Fold | Low-Res mIoU | Full-Res mIoU |" in md
    expected = {str(k): (best.loc[k, "miou_low"], best.loc[k, "miou_full"]) for k in (1, 2, 3)}
    low, full = best["miou_low"].to_numpy(), best["miou_full"].to_numpy()
    expected["Mean"] = (np.mean(low), np.mean(full))
    expected["Std"] = (np.std(low), np.std(full))
    for label, (lo, fu) in expected.items():
        assert f"| {label} | {lo:.4f} | {fu:.4f} |" in md


def test_confusion_table_is_each_folds_best_epoch_and_gives_its_table1_value(demo_run):
    """confusion.parquet holds, for each fold, the full-res matrix of its best epoch: the IoU
    recomputed from those pixels is that fold's Full-Res value; the report sums it over folds."""
    from raycity.constants import CLASS_KEYS
    from raycity.metrics import mean_iou

    _, run_dir = demo_run
    confusion = pd.read_parquet(run_dir / "confusion.parquet")
    summary = pd.read_parquet(run_dir / "summary.parquet").set_index("fold")
    n = len(CLASS_KEYS)
    assert len(confusion) == 3 * n * n
    for fold, block in confusion.groupby("fold"):
        assert set(block["epoch"]) == {summary.loc[fold, "best_epoch"]}
        wide = block.pivot(index="true_class", columns="predicted_class", values="pixels")
        matrix = wide.loc[list(CLASS_KEYS), list(CLASS_KEYS)].to_numpy()
        assert matrix.sum() > 0
        assert mean_iou(torch.as_tensor(matrix)) == pytest.approx(summary.loc[fold, "miou_full"],
                                                                  abs=1e-12)
    report = (run_dir / "report.md").read_text()
    assert "## Confusion (full resolution" in report and "figures/confusion.png" in report
    assert (run_dir / "figures" / "confusion.png").stat().st_size > 10_000


def test_folds_manifest_config_and_artifacts(demo_run):
    _, run_dir = demo_run
    folds = json.loads((run_dir / "folds.json").read_text())
    assert folds["k"] == 3 and len(folds["folds"]) == 3
    vals = [set(f["val"]) for f in folds["folds"]]
    config = json.loads((run_dir / "config.json").read_text())
    assert not (vals[0] & vals[1]) and len(set().union(*vals)) == config["synthetic_train"]
    assert config["epochs"] == EPOCHS and config["image_size"] == [32, 64]
    folds_logged = sorted(p.name for p in (run_dir / "tensorboard").iterdir())
    assert folds_logged == ["cv_fold1", "cv_fold2", "cv_fold3"]
    for name in folds_logged:  # scalars per epoch, and the prediction panel at the end
        assert list((run_dir / "tensorboard" / name).glob("events.out.tfevents.*"))
    # a clean run drops the states and Tune's pointers, keeps the folds' few-byte records …
    assert not list((run_dir / "tune").glob("*/checkpoint_*"))
    assert not list((run_dir / "tune").glob("*/raycity/*.pt"))
    assert len(list((run_dir / "tune").glob("*/raycity/epoch-*.json"))) == 3 * EPOCHS
    for k in (1, 2, 3):  # … and keeps each fold's best model, self-describing
        state = load_checkpoint(run_dir / "checkpoints" / f"fold{k}.pt")
        assert state["meta"]["fold"] == k and state["meta"]["config"]["epochs"] == EPOCHS


def tensorboard_scalars(directory) -> dict[tuple[str, int], float]:
    """(tag, step) → value from TensorBoard event files, read record by record (TFRecord:
    length, crc, an Event protobuf, crc) with tensorboardX's own protobuf classes."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    values = {}
    for path in directory.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                values[(value.tag, event.step)] = value.simple_value
    return values


def test_tensorboard_holds_the_epochs_values(demo_run):
    _, run_dir = demo_run
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    for fold in (1, 2, 3):
        logged = tensorboard_scalars(run_dir / "tensorboard" / f"cv_fold{fold}")
        for row in epochs[epochs["fold"] == fold].itertuples():
            for tag in ("train_loss", "val_loss", "miou_low", "miou_full", "lr"):
                assert logged[(tag, row.epoch)] == pytest.approx(getattr(row, tag), rel=1e-6)


def test_existing_name_is_refused_and_resume_of_nothing(demo_run, capsys):
    _, run_dir = demo_run
    before = (run_dir / "epochs.parquet").read_bytes()
    assert cv.main(["--preset", "smoke", "--output", str(run_dir.parent), "--name", "smoke"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "epochs.parquet").read_bytes() == before
    assert cv.main(["--resume", str(run_dir.parent / "nope")]) == 2
    assert "no such run" in capsys.readouterr().err


def test_bad_inputs_give_one_clear_error(tmp_path, capsys, tiny_cityscapes):
    assert cv.main(["--preset", "seed", "--output", str(tmp_path)]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert cv.main(["--data-root", str(tmp_path / "missing"), "--preset", "smoke",
                    "--output", str(tmp_path)]) == 2
    assert "data root does not exist" in capsys.readouterr().err
    assert cv.main(["--preset", "smoke", "--lr", "-1", "--output", str(tmp_path)]) == 2
    assert "lr=-1.0" in capsys.readouterr().err
    assert cv.main(["--preset", "smoke", "--folds", "9", "--data-root", str(tiny_cityscapes),
                    "--output", str(tmp_path), "--name", "k9"]) == 2
    assert "cannot cut 6 samples into 9 folds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cv.main(["--image-size", "big"])
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cv.main(["--decoder-channels", "wide"])
    assert "five comma-separated widths" in capsys.readouterr().err
    assert cv.main(["--preset", "smoke", "--decoder-channels", "256,128", "--output",
                    str(tmp_path)]) == 2
    assert "decoder_channels=(256, 128): expected five even integers" in capsys.readouterr().err


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cv.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data-root", "--preset", "--epochs", "--gpus-per-trial", "--dashboard",
                 "--resume", "--address", "--storage-path"):
        assert flag in out


def test_repeated_k_fold_trains_every_repeat_and_fold_once(tmp_path, tiny_cityscapes):
    """--repeats 2 --folds 2, as the tests' Ray-free run trains it (tests/localrun.py): four
    folds on two different splits; folds.json, epochs.parquet and summary.parquet say the
    repeat; Table 1 lists each (repeat, fold) and the std of the repeat means. (Tune's grid
    over the folds is every CV run's.)"""
    from raycity.config import preset
    from tests.localrun import write_local_run

    cfg = preset("smoke", data_root=str(tiny_cityscapes), epochs=1, folds=2, repeats=2)
    run_dir = write_local_run(cfg, tmp_path / "rep", figures=False)
    summary = pd.read_parquet(run_dir / "summary.parquet")
    folds = json.loads((run_dir / "folds.json").read_text())
    assert folds["repeats"] == 2 and [(f["repeat"], f["fold"]) for f in folds["folds"]] == [
        (1, 1), (1, 2), (2, 3), (2, 4)]
    splits = [sorted(sorted(f["val"]) for f in folds["folds"] if f["repeat"] == r) for r in (1, 2)]
    assert splits[0] != splits[1]
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert epochs[["fold", "repeat"]].values.tolist() == [[1, 1], [2, 1], [3, 2], [4, 2]]
    assert summary["repeat"].tolist() == [1, 1, 2, 2] and (summary["status"] == "ok").all()
    md = (run_dir / "summary.md").read_text()
    assert "| Repeat | Fold |" in md and "| Std of repeat means |" in md
    means = summary.groupby("repeat")["miou_full"].mean()
    assert f"{np.std(means, ddof=0):.4f} |" in md.split("Std of repeat means")[1].splitlines()[0]


def test_evaluate_on_the_demo_run_finds_its_scenes_and_gives_table1(demo_run):
    """A demo run's data is the synthetic scenes (generated again where they are missing):
    `raycity.evaluate --split folds` scores each fold's exported model, trained through Ray
    channels-last, to the numbers its Table 1 holds."""
    from raycity import evaluate

    _, run_dir = demo_run
    assert json.loads((run_dir / "run.json").read_text())["synthetic"]
    assert evaluate.main(["--run", str(run_dir), "--split", "folds"]) == 0
    rows = pd.read_parquet(run_dir / "val.parquet").set_index("model")
    summary = pd.read_parquet(run_dir / "summary.parquet").set_index("fold")
    for fold in summary.index:
        for metric in ("miou_low", "miou_full"):
            assert abs(rows.loc[f"fold{fold}", metric] - summary.loc[fold, metric]) <= 1e-6
