import numpy as np
import pytest
import torch
from PIL import Image

from raycity.constants import IGNORE_INDEX, NUM_CLASSES, TRAIN_TO_LABEL
from raycity.data import to_train_ids
from raycity.metrics import confusion_matrix, iou_per_class, mean_iou


def test_confusion_and_iou_by_hand():
    target = torch.tensor([0, 0, 1, 1, 2, IGNORE_INDEX])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(pred, target, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    iou = iou_per_class(cm)
    # class 0: tp 1, fp 1, fn 1; class 1: tp 2, fp 1; class 2: tp 0, fn 1
    np.testing.assert_allclose(iou, [1 / 3, 2 / 3, 0.0])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3) / 3)


def test_empty_union_is_nan_and_left_out():
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), num_classes=3)
    iou = iou_per_class(cm)
    assert iou[0] == 1.0 and np.isnan(iou[1]) and np.isnan(iou[2])
    assert mean_iou(cm) == 1.0


def test_summed_over_the_set_not_averaged_per_image():
    """Image a: 100 pixels of class 0, all right. Image b: truth [0, 1], prediction [1, 1].
    Summed: [[100, 1], [0, 1]] → IoU 100/101 and 1/2. Averaging per image would give
    (1 + (0 + 1/2) / 2) / 2 = 0.625 instead."""
    a = confusion_matrix(torch.zeros(100), torch.zeros(100), 2)
    b = confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 1]), 2)
    assert a.tolist() == [[100, 0], [0, 0]] and b.tolist() == [[0, 1], [0, 1]]
    assert (a + b).tolist() == [[100, 1], [0, 1]]
    np.testing.assert_allclose(iou_per_class(a + b), [100 / 101, 1 / 2])
    assert mean_iou(a + b) == pytest.approx((100 / 101 + 1 / 2) / 2)
    assert mean_iou(a) == 1.0 and mean_iou(b) == pytest.approx(0.25)  # class 1 absent from a


def test_parity_with_cityscapesscripts(tmp_path):
    """Same predictions, scored by raycity and by the official evaluator, agree to 1e-6."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    rng = np.random.default_rng(0)
    gt_files, pred_files, cm = [], [], torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for i in range(3):
        gt_ids = rng.choice(np.arange(0, 34), size=(40, 80)).astype(np.uint8)
        truth = torch.from_numpy(to_train_ids(gt_ids))
        pred = torch.from_numpy(rng.integers(0, NUM_CLASSES, size=(40, 80)))
        keep = truth != IGNORE_INDEX  # make half the pixels right so IoUs are non-trivial
        right = keep & torch.from_numpy(rng.random((40, 80)) < 0.5)
        pred[right] = truth[right].long()
        gt = tmp_path / f"city_{i:06d}_000019_gtFine_labelIds.png"
        pr = tmp_path / f"city_{i:06d}_000019_pred.png"
        Image.fromarray(gt_ids).save(gt)
        Image.fromarray(TRAIN_TO_LABEL[pred.numpy()]).save(pr)
        gt_files.append(str(gt))
        pred_files.append(str(pr))
        cm += confusion_matrix(pred, truth)

    args = official.args
    args.quiet, args.evalInstLevelScore, args.JSONOutput = True, False, False
    args.exportFile = str(tmp_path / "result.json")
    scores = official.evaluateImgLists(pred_files, gt_files, args)
    assert mean_iou(cm) == pytest.approx(scores["averageScoreClasses"], abs=1e-6)
    ours = iou_per_class(cm)
    from raycity.constants import CLASS_NAMES

    for name, value in zip(CLASS_NAMES, ours):
        theirs = scores["classScores"][name]
        assert (np.isnan(value) and np.isnan(theirs)) or value == pytest.approx(theirs, abs=1e-6)
