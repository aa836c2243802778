"""Cityscapes data: the official layout, label ids, synthetic scenes, transforms, datasets."""

from raycity.data.dataset import SegmentationDataset, collate
from raycity.data.layout import DataError, Sample, find_samples, read_sample, to_train_ids
from raycity.data.synthetic import synthetic_root, write_synthetic_cityscapes
from raycity.data.transforms import train_transform, val_transform

__all__ = [
    "DataError", "Sample", "SegmentationDataset", "collate", "find_samples", "read_sample",
    "synthetic_root", "to_train_ids", "train_transform", "val_transform",
    "write_synthetic_cityscapes",
]
