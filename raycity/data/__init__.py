"""Cityscapes data: the official layout, label ids, synthetic scenes, transforms, datasets.

The dataset and the transforms load torchvision, and with it torch._dynamo (≈ 2 s of CPU): they
load when first asked for, so that a driver that only lists and checks files (every CLI before
it launches, a stand-in sweep) never pays for them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from raycity.data.layout import DataError, Sample, find_samples, read_sample, to_train_ids
from raycity.data.synthetic import synthetic_root, write_synthetic_cityscapes

if TYPE_CHECKING:
    from raycity.data.dataset import SegmentationDataset, collate
    from raycity.data.transforms import train_transform, val_transform

_LAZY = {"SegmentationDataset": "raycity.data.dataset", "collate": "raycity.data.dataset",
         "train_transform": "raycity.data.transforms", "val_transform": "raycity.data.transforms"}

__all__ = [
    "DataError", "Sample", "SegmentationDataset", "collate", "find_samples", "read_sample",
    "synthetic_root", "to_train_ids", "train_transform", "val_transform",
    "write_synthetic_cityscapes",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
