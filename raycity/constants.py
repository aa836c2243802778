"""Constants the Cityscapes benchmark fixes; derived from torchvision's class table, never retyped."""

from __future__ import annotations

import numpy as np
from torchvision.datasets import Cityscapes

IGNORE_INDEX = 255

# The 19 evaluated classes, in trainId order.
TRAIN_CLASSES = sorted(
    (c for c in Cityscapes.classes if c.train_id not in (IGNORE_INDEX, -1)),
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
VALID_LABEL_IDS = frozenset(c.id for c in Cityscapes.classes if c.id >= 0)

# labelId → trainId lookup table over the whole uint8 range; ids outside the table map to 255.
LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _c in Cityscapes.classes:
    if _c.id >= 0 and _c.train_id not in (-1, IGNORE_INDEX):
        LABEL_TO_TRAIN[_c.id] = _c.train_id
# trainId → labelId, for exports that cityscapesScripts reads.
TRAIN_TO_LABEL = np.array([c.id for c in TRAIN_CLASSES], dtype=np.uint8)
# Cityscapes colour of every label id (for synthetic `*_gtFine_color.png`).
LABEL_COLORS = np.zeros((256, 3), dtype=np.uint8)
for _c in Cityscapes.classes:
    if _c.id >= 0:
        LABEL_COLORS[_c.id] = _c.color
