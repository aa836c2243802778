"""Synthetic street scenes written in the official Cityscapes layout.

They let a user (and the tests) run the whole pipeline, the real reader included, before fetching
11 GB of data. Each class is painted in its Cityscapes colour with per-image lighting and noise,
laid out like a street (sky over buildings over road), so a network can learn it in minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from raycity.constants import LABEL_COLORS
from raycity.data.layout import IMAGE_SUFFIX, LABEL_SUFFIX, DataError

if TYPE_CHECKING:
    from raycity.config import Config

# Cityscapes label ids used by the painter.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = 7, 8, 11, 12, 13, 17
TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 20, 21, 22, 23
PERSON, CAR, TRUCK, BUS, UNLABELED, EGO = 24, 26, 27, 28, 0, 1
CITIES = ("aachen", "bochum", "cologne")
SCENES_VERSION = 3  # part of the cache key: bump when the painter changes, so old caches go


def paint_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A labelIds map of one street scene: 14 of the 19 classes (no train, motorcycle, rider,
    bicycle or traffic light).

    Objects are sized relative to the image so that every class covers a few percent of it and
    stays several pixels wide at the demo's training size: a from-scratch model on a CPU gets a
    few hundred steps, and classes that vanish at that size would only teach it to ignore them.
    """
    lab = np.full((height, width), SKY, dtype=np.uint8)
    horizon = int(height * rng.uniform(0.4, 0.5))
    x = 0
    while x < width:  # a skyline of buildings, walls and trees
        w = int(width * rng.uniform(0.12, 0.25))
        top = int(horizon * rng.uniform(0.05, 0.55))
        lab[top:horizon, x:x + w] = rng.choice([BUILDING, BUILDING, VEGETATION, WALL])
        x += w
    lab[horizon:, :] = ROAD
    walk = horizon + int((height - horizon) * rng.uniform(0.2, 0.3))
    lab[horizon:walk, :] = SIDEWALK
    lab[horizon:walk, :int(width * rng.uniform(0.25, 0.4))] = TERRAIN
    fence_x, fence_w = int(width * rng.uniform(0.35, 0.6)), int(width * rng.uniform(0.25, 0.4))
    lab[horizon - height // 5:horizon, fence_x:fence_x + fence_w] = FENCE
    for _ in range(rng.integers(1, 3)):  # poles with a sign on top
        pole_w = max(5, width // 22)
        px = int(rng.uniform(width // 10, width - width // 8))
        top = int(horizon * rng.uniform(0.1, 0.3))
        lab[top:walk, px:px + pole_w] = POLE
        lab[top:top + height // 7, px - width // 24:px + pole_w + width // 24] = TRAFFIC_SIGN
    for _ in range(rng.integers(2, 5)):  # vehicles on the road
        cls = rng.choice([CAR, TRUCK, BUS])
        vw = int(width * rng.uniform(0.15, 0.28))
        vh = int(vw * rng.uniform(0.4, 0.6))
        vx = int(rng.uniform(0, width - vw))
        vy = int(rng.uniform(walk + vh // 2, height))
        lab[max(vy - vh, 0):vy, vx:vx + vw] = cls
    for _ in range(rng.integers(2, 4)):  # people on the sidewalk
        pw = max(5, width // 20)
        px = int(rng.uniform(0, width - pw))
        lab[max(walk - 3 * pw, 0):walk, px:px + pw] = PERSON
    lab[int(height * 0.95):, :] = EGO  # the ego vehicle's bonnet, ignored as in the real data
    lab[:, :2] = UNLABELED
    return lab


def render_image(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """RGB image: class colours under a random light, per-class tint, and pixel noise."""
    colors = LABEL_COLORS.astype(np.float32)
    tint = rng.normal(0, 8, size=(256, 3)).astype(np.float32)
    img = colors[labels] + tint[labels]
    img *= rng.uniform(0.85, 1.15)
    img += rng.normal(0, 10, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic_cityscapes(root: str | Path, counts: dict[str, int],
                               size: tuple[int, int], seed: int = 0) -> Path:
    """Write `counts[split]` scenes per split, spread over a few cities; deterministic in seed."""
    root = Path(root)
    height, width = size
    for split, n in counts.items():
        rng = np.random.default_rng([seed, sum(map(ord, split))])
        for i in range(n):
            city = CITIES[i % len(CITIES)]
            name = f"{city}_{i:06d}_000019"
            labels = paint_scene(rng, height, width)
            image = render_image(rng, labels)
            for kind, suffix, array in (("leftImg8bit", IMAGE_SUFFIX, image),
                                        ("gtFine", LABEL_SUFFIX, labels),
                                        ("gtFine", "_gtFine_color.png", LABEL_COLORS[labels])):
                d = root / kind / split / city
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(d / (name + suffix))
    return root


def cache_home() -> Path:
    return Path(os.environ.get("RAYCITY_CACHE", Path.home() / ".cache" / "raycity"))


def synthetic_root(counts: dict[str, int], size: tuple[int, int], seed: int = 0) -> Path:
    """The synthetic dataset for these parameters, generated once into the cache (atomically)."""
    spec = json.dumps({"counts": counts, "size": list(size), "seed": seed, "v": SCENES_VERSION},
                      sort_keys=True)
    target = cache_home() / "synthetic" / hashlib.sha1(spec.encode()).hexdigest()[:12]
    if (target / "spec.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    except OSError as err:
        raise DataError(f"cannot write the demo's synthetic scenes into {target.parent} "
                        f"({err.strerror or err}); set $RAYCITY_CACHE to a writable folder, or "
                        f"pass --data-root") from err
    try:
        write_synthetic_cityscapes(tmp, counts, size, seed)
        (tmp / "spec.json").write_text(spec)
        os.replace(tmp, target)
    except OSError:
        if not (target / "spec.json").is_file():  # a concurrent writer did not win either
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def dataset_root(cfg: Config) -> tuple[str, bool]:
    """(root, synthetic?) — the user's data, or the generated scenes (made again if missing, so
    a demo run resumes or is evaluated on another machine)."""
    if cfg.data_root:
        return os.path.abspath(cfg.data_root), False
    root = synthetic_root({"train": cfg.synthetic_train, "val": cfg.synthetic_val},
                          cfg.synthetic_size, seed=cfg.seed)
    return str(root), True
