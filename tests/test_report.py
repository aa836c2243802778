"""Figures, report, export and official-split evaluation on a real smoke run."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from raycity import evaluate, predict, report
from raycity.checkpoint import CheckpointError
from raycity.data import find_samples, read_sample
from raycity.figures import colorize
from raycity.inference import TTA, load_model, predict_probs
from raycity.results import table1


@pytest.fixture
def run_dir(smoke_run):
    code, path = smoke_run
    assert code == 0
    return path


def test_figures_are_written_and_readable(run_dir):
    names = [f"fold{k}_{kind}.png" for k in (1, 2, 3) for kind in ("prediction", "history")]
    for name in [*names, "cv_history.png"]:
        with Image.open(run_dir / "figures" / name) as im:
            im.verify()
        with Image.open(run_dir / "figures" / name) as im:
            assert im.width >= 600 and im.height >= 200, name


def test_panel_shows_the_models_argmax(run_dir):
    samples = report.panel_samples(run_dir, 1)
    assert [s.key for s in samples] == [s.key for s in report.panel_samples(run_dir, 1)]
    checkpoint = run_dir / "checkpoints" / "fold1.pt"
    panel, boxes, _, samples = report.fold_panel(checkpoint, samples)
    model, cfg = load_model(checkpoint, torch.device("cpu"))
    for sample, row in zip(samples, boxes):
        image, truth = read_sample(sample)
        argmax = predict_probs([model], image, cfg).argmax(0).numpy().astype(np.uint8)
        top, left, h, w = row[2]  # the prediction cell
        assert np.array_equal(panel[top:top + h, left:left + w], colorize(report.display(argmax)))
        top, left, h, w = row[1]  # the ground-truth cell
        assert np.array_equal(panel[top:top + h, left:left + w],
                              colorize(report.display(truth.numpy())))
    saved = np.asarray(Image.open(run_dir / "figures" / "fold1_prediction.png").convert("RGB"))
    assert np.array_equal(saved, panel)  # the file is that panel, pixel for pixel


def test_report_has_table1_equal_to_summary(run_dir):
    text = (run_dir / "report.md").read_text()
    t = table1(pd.read_parquet(run_dir / "summary.parquet")).set_index("Fold")
    for label in ("1", "2", "3", "Mean", "Std"):
        low, full = t.loc[label, "Low-Res mIoU"], t.loc[label, "Full-Res mIoU"]
        assert f"| {label} | {low:.4f} | {full:.4f} |" in text
    assert "Per-class IoU" in text and "| road |" in text
    assert "![fold 2 prediction](figures/fold2_prediction.png)" in text


def test_report_command_rebuilds_from_saved_files(run_dir, tmp_path):
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tune", "figures", "report.md"))
    assert report.main([str(copy)]) == 0
    assert (copy / "report.md").read_text() == (run_dir / "report.md").read_text()
    assert (copy / "figures" / "fold3_prediction.png").is_file()
    assert report.main([str(tmp_path / "nothing")]) == 2


def test_export_scores_like_cityscapesscripts(run_dir, tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    checkpoints = evaluate.run_checkpoints(run_dir)
    root = evaluate.run_data_root(run_dir, None)
    ours = evaluate.evaluate_models({"fold1": checkpoints["fold1"]}, root, "val", [TTA()],
                                    ensemble=False, progress=False)
    assert predict.main(["--run", str(run_dir), "--fold", "1", "--split", "val",
                         "--out", str(tmp_path / "preds"), "--color"]) == 0
    gts = sorted(str(s.label_path) for s in find_samples(root, "val"))
    args = official.args
    args.quiet, args.evalInstLevelScore, args.JSONOutput = True, False, False
    args.predictionPath, args.predictionWalk = str(tmp_path / "preds" / "labelIds"), None
    args.exportFile = str(tmp_path / "official.json")
    preds = [official.getPrediction(args, gt) for gt in gts]
    scores = official.evaluateImgLists(preds, gts, args)
    assert ours.loc[0, "miou_full"] == pytest.approx(scores["averageScoreClasses"], abs=1e-6)
    assert len(list((tmp_path / "preds" / "color").rglob("*_pred_color.png"))) == len(gts)


def test_ensemble_of_identical_checkpoints_is_the_single_model(run_dir):
    one = evaluate.run_checkpoints(run_dir)["fold1"]
    root = evaluate.run_data_root(run_dir, None)
    table = evaluate.evaluate_models({"fold1": one, "fold2": one}, root, "val", [TTA()],
                                     ensemble=True, progress=False).set_index("model")
    cols = [c for c in table.columns if c.startswith(("miou", "iou"))]
    pd.testing.assert_series_equal(table.loc["ensemble", cols], table.loc["fold1", cols],
                                   check_names=False)


def test_flip_tta_changes_nothing_on_a_flip_equivariant_model(run_dir):
    model, cfg = load_model(evaluate.run_checkpoints(run_dir)["fold1"], torch.device("cpu"))

    def symmetric(x):  # flip-equivariant by construction
        return (model(x) + model(x.flip(-1)).flip(-1)) / 2

    image, _ = read_sample(find_samples(evaluate.run_data_root(run_dir, None), "val")[0])
    plain = predict_probs([symmetric], image, cfg)
    flipped = predict_probs([symmetric], image, cfg, TTA(flip=True))
    torch.testing.assert_close(plain, flipped, atol=1e-5, rtol=1e-5)
    multi = predict_probs([model], image, cfg, TTA(flip=True, scales=(0.75, 1.0)))
    assert multi.shape == plain.shape and torch.allclose(multi.sum(0), torch.ones(()), atol=1e-4)


def test_evaluate_command_writes_val_table_and_report(run_dir):
    assert evaluate.main(["--run", str(run_dir), "--ensemble", "--tta", "flip"]) == 0
    table = pd.read_parquet(run_dir / "val.parquet")
    assert set(table["model"]) == {"fold1", "fold2", "fold3", "ensemble"}
    assert set(table["tta"]) == {"none", "flip"}
    assert len(table) == 8 and table["miou_full"].between(0, 1).all()
    assert "iou_full_road" in table
    assert "## Official val split" in (run_dir / "report.md").read_text()


def test_wrong_checkpoints_are_refused(tmp_path, run_dir):
    from torchvision.models import resnet50

    other = tmp_path / "resnet.pt"
    torch.save(resnet50().state_dict(), other)
    with pytest.raises(CheckpointError, match="not a UNetResNet50 checkpoint"):
        load_model(other, torch.device("cpu"))
    state = torch.load(run_dir / "checkpoints" / "fold1.pt", weights_only=True)
    state["meta"]["num_classes"] = 8
    torch.save(state, tmp_path / "eight.pt")
    with pytest.raises(CheckpointError, match="8 classes"):
        load_model(tmp_path / "eight.pt", torch.device("cpu"))
    state["meta"]["num_classes"] = 19
    state["model"]["head.classify.weight"] = torch.zeros(7, 32, 1, 1)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "shape.pt", torch.device("cpu"))
    assert predict.main(["--checkpoint", str(other), "--data-root", str(tmp_path),
                         "--out", str(tmp_path / "o")]) == 2


def test_tta_parsing():
    assert TTA.parse("flip,0.75,1.0,1.25") == TTA(True, (0.75, 1.0, 1.25))
    assert TTA.parse("flip,0.75,1.0,1.25").name == "flip+ms"
    assert TTA.parse("none").name == "none" and TTA.parse("flip").name == "flip"
    with pytest.raises(ValueError, match="'x'"):
        TTA.parse("flip,x")
