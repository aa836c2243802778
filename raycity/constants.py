"""Constants the Cityscapes benchmark fixes.

The label table is cityscapesScripts' `labels.py` (name, id, trainId, colour), kept here as data:
importing it from torchvision cost every process that needs a class name ≈ 1.9 s of CPU
(torchvision loads torch._dynamo), Ray's trial workers included. tests/test_data.py checks it
entry by entry against both torchvision's and cityscapesScripts' tables.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
    Label("license plate", -1, -1, (0, 0, 142)),
)

IGNORE_INDEX = 255

# The 19 evaluated classes, in trainId order.
TRAIN_CLASSES = sorted(
    (c for c in LABELS if c.train_id not in (IGNORE_INDEX, -1)),
    key=lambda c: c.train_id,
)
NUM_CLASSES = len(TRAIN_CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in TRAIN_CLASSES)
# Column-safe names for tables ("traffic light" → "traffic_light").
CLASS_KEYS: tuple[str, ...] = tuple(n.replace(" ", "_") for n in CLASS_NAMES)
# An epoch's full-resolution confusion matrix in the tables (rows: true class, columns:
# predicted), its NUM_CLASSES² pixel counts row by row: what confusion.parquet is cut from.
CONFUSION = "confusion_full"
CLASS_COLORS = np.array([c.color for c in TRAIN_CLASSES], dtype=np.uint8)

# Every label id of the official table (0…33 plus -1 "license plate", which never appears in PNGs).
VALID_LABEL_IDS = frozenset(c.id for c in LABELS if c.id >= 0)

# labelId → trainId lookup table over the whole uint8 range; ids outside the table map to 255.
LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _c in LABELS:
    if _c.id >= 0 and _c.train_id not in (-1, IGNORE_INDEX):
        LABEL_TO_TRAIN[_c.id] = _c.train_id
# trainId → labelId, for exports that cityscapesScripts reads.
TRAIN_TO_LABEL = np.array([c.id for c in TRAIN_CLASSES], dtype=np.uint8)
# Cityscapes colour of every label id (for synthetic `*_gtFine_color.png`).
LABEL_COLORS = np.zeros((256, 3), dtype=np.uint8)
for _c in LABELS:
    if _c.id >= 0:
        LABEL_COLORS[_c.id] = _c.color
