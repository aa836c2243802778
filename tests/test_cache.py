"""The decode-once cache: same labels as the PNGs, used automatically, stale caches detected."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from raycity.config import preset
from raycity.data import SegmentationDataset, find_samples, read_sample, train_transform
from raycity.data.__main__ import main as data_main
from raycity.data.cache import CachedReader, build_cache, cache_size, cached_reader
from raycity.engine import train_one_epoch
from raycity.folds import make_folds
from raycity.training import build_loaders, build_model, build_optimizer, fold_speed


def test_cache_matches_the_pngs(tree):
    build_cache(tree, (32, 64), 0.2, progress=False)
    reader = cached_reader(tree, (32, 64), 0.2)
    assert isinstance(reader, CachedReader)
    for sample in find_samples(tree, "train") + find_samples(tree, "val"):
        image, mask = reader(sample)
        png_image, png_mask = read_sample(sample)
        assert image.dtype == torch.uint8 and image.shape == (3, *cache_size((32, 64), 0.2))
        assert torch.equal(mask, png_mask)  # labels stay at full size, as trainIds
        small = torch.nn.functional.interpolate(png_image[None].float(), size=image.shape[-2:],
                                                mode="bilinear", antialias=True)[0]
        assert (small - image.float()).abs().mean() < 6  # the same picture, resized


def test_cached_samples_go_through_the_augmentations(tree):
    build_cache(tree, (32, 64), 0.2, progress=False)
    reader = cached_reader(tree, (32, 64), 0.2)
    ds = SegmentationDataset(find_samples(tree, "train"), train_transform((32, 64)), reader=reader)
    item = ds[0]
    assert item["image"].shape == (3, 32, 64) and item["mask"].shape == (32, 64)


def test_training_uses_the_cache_automatically(tree):
    cfg = preset("smoke", data_root=str(tree))
    split = make_folds([s.key for s in find_samples(tree, "train")], 3)[0]
    train, _ = build_loaders(cfg, str(tree), split, torch.device("cpu"))
    assert not isinstance(train.dataset.reader, CachedReader)  # no cache yet: PNGs
    assert data_main(["cache", "--data-root", str(tree), "--image-size", "32x64"]) == 0
    train, val = build_loaders(cfg, str(tree), split, torch.device("cpu"))
    assert isinstance(train.dataset.reader, CachedReader)
    assert isinstance(val.dataset.reader, CachedReader)
    speed = fold_speed(cfg, torch.device("cpu"))
    model = build_model(cfg, speed)
    stats = train_one_epoch(model, train, build_optimizer(cfg, model), speed)
    assert stats.images == len(split.train) // 2 * 2 and np.isfinite(stats.loss)


def test_stale_or_other_size_cache_falls_back_to_pngs(tree):
    build_cache(tree, (32, 64), 0.2, progress=False)
    assert cached_reader(tree, (48, 96), 0.2) is None  # built for another size: not used
    label = find_samples(tree, "train")[0].label_path
    arr = np.array(Image.open(label))
    arr[:4] = 7
    Image.fromarray(arr).save(label)
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match="stale cache"):
        assert cached_reader(tree, (32, 64), 0.2) is None
