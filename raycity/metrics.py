"""Cityscapes' evaluation: one confusion matrix summed over the whole set, IoU from the sum.

Per-class IoU = TP / (TP + FP + FN); pixels whose truth is ignored do not count; classes with an
empty union are NaN and left out of the mean (cityscapesScripts' definition).
"""

from __future__ import annotations

import numpy as np
import torch

from raycity.constants import IGNORE_INDEX, NUM_CLASSES


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """num_classes² int64 matrix, rows = truth, columns = prediction.

    Ignored pixels are counted into one spare bin and dropped, instead of being masked out:
    a boolean mask has a data-dependent size, which makes a GPU wait for the count, and this is
    called once per validation image."""
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = torch.where(keep, num_classes * target + pred, num_classes**2)
    counts = torch.zeros(num_classes**2 + 1, dtype=torch.int64, device=index.device)
    counts.index_add_(0, index, torch.ones_like(index))
    return counts[:-1].reshape(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    cm = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: torch.Tensor | np.ndarray) -> float:
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
