"""What the README promises for a run on real data, through the CLI: $CITYSCAPES_DATASET, `seed`
as the default preset, the default run name, --group-by city, --skip-bad-samples to the end,
--num-workers 1 on the CPU and --keep-trial-checkpoints — one shared run."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import pandas as pd
import pytest

from raycity import cv, evaluate, report
from raycity.config import PRESETS
from raycity.data.layout import IMAGE_SUFFIX, Sample


@pytest.fixture(scope="module")
def data_run(ray_session, tmp_path_factory, tiny_cityscapes):
    root = tmp_path_factory.mktemp("data") / "cityscapes"
    shutil.copytree(tiny_cityscapes, root)
    bad = sorted((root / "leftImg8bit" / "train").glob(f"*/*{IMAGE_SUFFIX}"))[0]
    bad.write_bytes(b"")  # a zero-byte PNG
    out = tmp_path_factory.mktemp("data-runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("CITYSCAPES_DATASET", str(root))
    mp.setenv("RAYCITY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console):
            # the seed recipe with a narrow decoder: --keep-trial-checkpoints keeps every
            # state, 0.5 GB a fold instead of 2.4 GB
            code = cv.main(["--epochs", "1", "--image-size", "32x64", "--pretrained", "none",
                            "--decoder-channels", "256,128,64,32,16",
                            "--folds", "2", "--group-by", "city", "--skip-bad-samples",
                            "--num-workers", "1",
                            "--keep-trial-checkpoints", "--output", str(out),
                            "--cpus-per-trial", "1"])
    finally:
        mp.undo()
    (run_dir,) = list(out.iterdir())
    return code, run_dir, root, bad, console.getvalue()


def test_the_dataset_comes_from_the_environment_with_the_seed_recipe(data_run):
    code, run_dir, root, _, console = data_run
    assert code == 0, console
    assert re.fullmatch(r"seed-\d{8}-\d{6}", run_dir.name)  # the default run name
    assert json.loads((run_dir / "run.json").read_text())["data_root"] == str(root)
    config = json.loads((run_dir / "config.json").read_text())
    seed = PRESETS["seed"]
    assert (config["lr"], config["batch_size"]) == (seed["lr"], seed["batch_size"])
    assert (config["epochs"], config["image_size"], config["pretrained"]) == (1, [32, 64], "none")
    assert config["num_workers"] == 1 and "DEMO" not in console
    epochs = pd.read_parquet(run_dir / "epochs.parquet")  # what each fold really loaded with
    assert (epochs["loader_workers"] == 1).all() and (epochs["torch_threads"] == 1).all()


def test_group_by_city_keeps_each_city_in_one_fold(data_run):
    _, run_dir, *_ = data_run
    folds = json.loads((run_dir / "folds.json").read_text())
    assert folds["group_by"] == "city"
    cities = [{key.split("/")[1] for key in fold["val"]} for fold in folds["folds"]]
    assert len(cities) == 2 and not cities[0] & cities[1]  # 3 cities: one fold holds two
    assert set.union(*cities) == {"aachen", "bochum", "cologne"}
    for fold, val_cities in zip(folds["folds"], cities):
        assert not val_cities & {key.split("/")[1] for key in fold["train"]}


def test_bad_samples_are_skipped_and_counted_to_the_end(data_run):
    _, run_dir, root, bad, console = data_run
    assert "--skip-bad-samples: 1 unreadable pair(s) will be skipped" in console
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert epochs["skipped_samples"].sum() == 2  # in one fold's training, the other's validation
    for fold in (1, 2):  # the panels were drawn, the unreadable image left out
        assert (run_dir / "figures" / f"fold{fold}_prediction.png").is_file()
    # a fold none of whose validation images is readable has no panel, and no traceback
    unreadable = Sample(str(root), "train", bad.parent.name, bad.name.removesuffix(IMAGE_SUFFIX))
    assert report.fold_panel(run_dir / "checkpoints" / "fold1.pt", [unreadable]) is None
    assert evaluate.main(["--run", str(run_dir), "--split", "folds"]) == 0
    rows = pd.read_parquet(run_dir / "val.parquet").set_index("model")
    assert rows["skipped"].sum() == 1 and rows["images"].sum() == 5


def test_trial_checkpoints_are_kept_when_asked(data_run):
    """After a clean run they are normally deleted (test_cv); here they stay. (With one epoch
    there is no state to resume from, only the best weights.)"""
    _, run_dir, *_ = data_run
    trials = [p for p in (run_dir / "tune").iterdir() if p.is_dir()]
    assert len(trials) == 2
    for trial in trials:
        assert list((trial / "raycity").glob("best-*.pt"))
        assert (trial / "raycity" / "done.json").is_file()
    # each fold's exported best model is the trial's file under a second name, not a copy
    for k in (1, 2):
        assert (run_dir / "checkpoints" / f"fold{k}.pt").stat().st_nlink == 2
