"""Figures, report, export and official-split evaluation, on a smoke CV written without Ray
(conftest.local_run: the real fold recipe, journals, export and report)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from raycity import evaluate, predict, report
from raycity.checkpoint import CheckpointError
from raycity.constants import CLASS_COLORS
from raycity.data import find_samples, read_sample, to_train_ids
from raycity.inference import (
    TTA,
    load_model,
    load_model_meta,
    predict_probs,
    threads_like_training,
)
from raycity.metrics import confusion_matrix, mean_iou
from raycity.run import RunDir


@pytest.fixture
def run_dir(local_run):
    return local_run


def test_figures_are_written_and_readable(run_dir):
    names = [f"fold{k}_{kind}.png" for k in (1, 2, 3) for kind in ("prediction", "history")]
    for name in [*names, "cv_history.png"]:
        with Image.open(run_dir / "figures" / name) as im:
            im.verify()
        with Image.open(run_dir / "figures" / name) as im:
            assert im.width >= 600 and im.height >= 150, name


def by_hand(model, image: torch.Tensor, size: tuple[int, int], flip: bool = False,
            cfg=None, raw: bool = False) -> torch.Tensor:
    """Class probabilities at the image's own size, written out without raycity's inference
    code: resize the uint8 image, scale, normalise, forward (under the autocast and layout the
    fold trained with: the suite forces channels-last), upsample,
    softmax (or, with `raw`, the logits: what a single view's classes are the argmax of)."""
    x = TF.resize(image, list(size), antialias=True)[None].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (x - mean) / std
    x = x.flip(-1) if flip else x
    on = cfg is not None and cfg.amp == "on"
    if cfg is not None and cfg.channels_last == "on":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
        logits = model(x).float()
    logits = logits.flip(-1) if flip else logits
    up = torch.nn.functional.interpolate(logits, size=image.shape[-2:], mode="bilinear",
                                         align_corners=False)
    return up[0] if raw else up.softmax(1)[0]


def test_panel_samples_are_the_folds_first_validation_images(run_dir):
    folds = json.loads((run_dir / "folds.json").read_text())
    val = next(f["val"] for f in folds["folds"] if f["fold"] == 1)
    assert [s.key for s in report.panel_samples(run_dir, 1)] == val  # folds.json order
    checkpoint = run_dir / "checkpoints" / "fold1.pt"
    _, _, _, shown = report.fold_panel(checkpoint, report.panel_samples(run_dir, 1))
    assert [s.key for s in shown] == val[:report.PANEL_IMAGES]


def test_panel_shows_the_models_argmax(run_dir):
    checkpoint = run_dir / "checkpoints" / "fold1.pt"
    panel, boxes, _, samples = report.fold_panel(checkpoint, report.panel_samples(run_dir, 1))
    model, cfg, meta = load_model_meta(checkpoint, torch.device("cpu"))
    for sample, row in zip(samples, boxes):
        image = torch.from_numpy(np.array(Image.open(sample.image_path).convert("RGB")))
        image = image.permute(2, 0, 1).contiguous()
        with threads_like_training(meta, torch.device("cpu")):  # the panel's numerics
            logits = by_hand(model, image, cfg.image_size, cfg=cfg, raw=True)
        argmax = logits.argmax(0).numpy()
        # a smoke model's logits are nearly uniform: where its two best classes lie within
        # float rounding of each other, either is the model's argmax
        top = logits.topk(2, dim=0).values
        tied = ((top[0] - top[1]) < 1e-5 * top[0].abs().clamp(min=1)).numpy()
        assert tied.mean() < 0.05
        truth = to_train_ids(np.array(Image.open(sample.label_path)))
        expected_pred = CLASS_COLORS[argmax]
        expected_truth = np.where((truth == 255)[..., None], 0,
                                  CLASS_COLORS[np.minimum(truth, 18)])  # ignored: black
        top, left, h, w = row[2]  # the prediction cell
        drawn = panel[top:top + h, left:left + w]
        assert np.array_equal(drawn[~tied], expected_pred[~tied])
        top, left, h, w = row[1]  # the ground-truth cell
        assert np.array_equal(panel[top:top + h, left:left + w], expected_truth)
    saved = np.asarray(Image.open(run_dir / "figures" / "fold1_prediction.png").convert("RGB"))
    assert np.array_equal(saved, panel)  # the file is that panel, pixel for pixel


def test_report_has_table1_computed_from_the_epochs(run_dir):
    """Table 1 in report.md, checked against plain pandas over epochs.parquet: each fold at its
    best epoch by low-res mIoU, then the mean and the population std."""
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    best = epochs.loc[epochs.groupby("fold")["miou_low"].idxmax()].sort_values("fold")
    text = (run_dir / "report.md").read_text()
    for row in best.itertuples():
        assert f"| {row.fold} | {row.miou_low:.4f} | {row.miou_full:.4f} |" in text
    low, full = best["miou_low"].to_numpy(), best["miou_full"].to_numpy()
    assert f"| Mean | {low.mean():.4f} | {full.mean():.4f} |" in text
    assert f"| Std | {low.std():.4f} | {full.std():.4f} |" in text
    assert "Per-class IoU" in text and "| road |" in text
    assert "![fold 2 prediction](figures/fold2_prediction.png)" in text


def test_report_command_rebuilds_from_saved_files(run_dir, tmp_path):
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tune", "figures", "report.md"))
    assert report.main([str(copy)]) == 0
    assert (copy / "report.md").read_text() == (run_dir / "report.md").read_text()
    assert (copy / "figures" / "fold3_prediction.png").is_file()
    assert report.main([str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("command", ["report", "evaluate"])
def test_a_damaged_table_is_rebuilt_from_the_folds_records(run_dir, tmp_path, capsys, command):
    """`raycity.report` and `raycity.evaluate` on a run whose epochs table is damaged and whose
    summary is gone: both rebuilt, as --resume does, said in one line, then the command's own
    work."""
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("figures", "report.md",
                                                                 "val.parquet"))
    (copy / "epochs.parquet").write_bytes(b"PAR1 cut short")
    (copy / "summary.parquet").unlink()
    if command == "report":
        assert report.main([str(copy)]) == 0
    else:
        assert evaluate.main(["--run", str(copy), "--split", "folds"]) == 0
        assert (copy / "val.parquet").is_file()
    said = capsys.readouterr().err
    assert "epochs.parquet: unreadable" in said and "rebuilt 6 epoch row(s)" in said
    assert "Traceback" not in said
    rebuilt = pd.read_parquet(copy / "epochs.parquet").sort_values(["fold", "epoch"])
    original = pd.read_parquet(run_dir / "epochs.parquet").sort_values(["fold", "epoch"])
    assert rebuilt["miou_full"].tolist() == original["miou_full"].tolist()
    assert (copy / "report.md").is_file()


def test_resuming_a_finished_run_rebuilds_what_is_missing_and_trains_nothing(run_dir, tmp_path,
                                                                          capsys):
    """`--resume` of a finished run says so and rebuilds what is missing — the report, and the
    rows an older copy of the table lacks — from the folds' records, before any Ray starts;
    nothing is trained again. (Resumes that train: tests/test_resume.py.)"""
    from raycity import cv

    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report.md"))
    done = pd.read_parquet(copy / "epochs.parquet")
    done.iloc[:2].to_parquet(copy / "epochs.parquet", index=False)
    stamps = lambda: {p: p.stat().st_mtime_ns for p in (copy / "checkpoints").rglob("*")}  # noqa: E731
    before = stamps()
    assert cv.main(["--resume", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "this run has finished" in out, out
    assert f"added {len(done) - 2} epoch row(s) the trials recorded" in out, out
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "epochs.parquet"), done)
    assert (copy / "report.md").is_file() and stamps() == before


def test_a_folder_that_is_not_a_run_or_a_damaged_run_json_is_named(tmp_path, capsys):
    assert evaluate.main(["--run", str(tmp_path)]) == 2
    line = capsys.readouterr().err
    assert f"{tmp_path}: not a raycity run (no run.json)" in line and "--data-root" not in line
    from raycity.run import RunError, RunState

    (tmp_path / "run.json").write_text("{ cut")
    with pytest.raises(RunError, match="run.json: damaged"):
        RunState.load(tmp_path)


def test_export_scores_like_cityscapesscripts(run_dir, tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    checkpoints = RunDir(run_dir).models()
    root = RunDir(run_dir).data_root()
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


def test_the_ensemble_is_the_mean_of_the_folds_softmaxes(run_dir):
    """Two different checkpoints (folds 1 and 2): the ensemble's probabilities are the mean of
    theirs, and evaluate's ensemble row scores the argmax of that mean."""
    checkpoints = RunDir(run_dir).models()
    root = RunDir(run_dir).data_root()
    (m1, cfg), (m2, _) = (load_model(checkpoints[k], torch.device("cpu")) for k in ("fold1", "fold2"))
    assert not torch.equal(m1.head.classify.weight, m2.head.classify.weight)
    cm = torch.zeros(19, 19, dtype=torch.int64)
    for sample in find_samples(root, "val"):
        image, truth = read_sample(sample)
        p1, p2 = by_hand(m1, image, cfg.image_size, cfg=cfg), by_hand(m2, image, cfg.image_size, cfg=cfg)
        both = predict_probs([m1, m2], image, cfg)
        torch.testing.assert_close(both, (p1 + p2) / 2, atol=1e-5, rtol=1e-5)
        cm += confusion_matrix(((p1 + p2) / 2).argmax(0), truth)
    table = evaluate.evaluate_models({"fold1": checkpoints["fold1"], "fold2": checkpoints["fold2"]},
                                     root, "val", [TTA()], ensemble=True, progress=False)
    table = table.set_index("model")
    assert table.loc["ensemble", "miou_full"] == pytest.approx(mean_iou(cm), abs=1e-9)


class Asymmetric(torch.nn.Module):
    """A trained fold model plus a left-to-right ramp on one class: not flip-equivariant, so a
    flip that was ignored or not undone changes its probabilities."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x).float()
        ramp = torch.linspace(-3, 3, x.shape[-1])
        logits[:, 0] = logits[:, 0] + ramp
        return logits


def test_flip_and_multiscale_tta_average_the_right_views(run_dir):
    model, cfg = load_model(RunDir(run_dir).models()["fold1"], torch.device("cpu"))
    asym = Asymmetric(model)
    image, _ = read_sample(find_samples(RunDir(run_dir).data_root(), "val")[0])
    plain = by_hand(asym, image, cfg.image_size, cfg=cfg)
    flipped_view = by_hand(asym, image, cfg.image_size, flip=True, cfg=cfg)
    assert (plain - flipped_view).abs().max() > 0.05  # the two views really differ
    torch.testing.assert_close(predict_probs([asym], image, cfg), plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(predict_probs([asym], image, cfg, TTA(flip=True)),
                               (plain + flipped_view) / 2, atol=1e-5, rtol=1e-5)
    h, w = cfg.image_size
    scaled = [by_hand(asym, image, (max(32, round(h * s)), max(32, round(w * s))), flip=f,
                      cfg=cfg)
              for s in (0.75, 1.0) for f in (False, True)]
    torch.testing.assert_close(predict_probs([asym], image, cfg, TTA(True, (0.75, 1.0))),
                               sum(scaled) / 4, atol=1e-5, rtol=1e-5)


def test_evaluate_command_writes_val_table_and_report(run_dir):
    assert evaluate.main(["--run", str(run_dir), "--ensemble", "--tta", "flip"]) == 0
    table = pd.read_parquet(run_dir / "val.parquet")
    assert set(table["model"]) == {"fold1", "fold2", "fold3", "ensemble"}
    assert set(table["tta"]) == {"none", "flip"}
    assert len(table) == 8 and table["miou_full"].between(0, 1).all()
    assert "iou_full_road" in table
    for row in table.itertuples():  # each row's own matrix gives its score
        matrix = torch.tensor(np.asarray(row.confusion_full)).reshape(19, 19)
        assert mean_iou(matrix) == pytest.approx(row.miou_full, abs=1e-12)
    assert "## Official val split" in (run_dir / "report.md").read_text()


def test_evaluate_folds_reproduces_table1(run_dir):
    """One way to score: each fold's exported best model, run by `raycity.evaluate` on that
    fold's validation images, gives the numbers its epoch-end validation put in Table 1."""
    assert evaluate.main(["--run", str(run_dir), "--split", "folds"]) == 0
    table = pd.read_parquet(run_dir / "val.parquet")
    rows = table[table["split"] == "folds"].set_index("model")
    summary = pd.read_parquet(run_dir / "summary.parquet").set_index("fold")
    assert sorted(rows.index) == ["fold1", "fold2", "fold3"] and set(rows["tta"]) == {"none"}
    for fold in (1, 2, 3):
        for metric in ("miou_low", "miou_full"):
            assert abs(rows.loc[f"fold{fold}", metric] - summary.loc[fold, metric]) <= 1e-6


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
