"""Decode-once cache: images as uint8 arrays at the size training needs, labels as trainIds.

Decoding a 2048×1024 Cityscapes PNG costs ~50 ms of CPU, often more than a GPU step. The cache
holds each image at `image_size × (1 + scale_jitter)` (enough for the largest random scale) and
each label at its original size (full-resolution scoring needs it), in memory-mapped .npy files.
A manifest of the source files' sizes and modification times makes a stale cache detectable;
the loader then falls back to the PNGs and says so.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raycity.data.layout import DataError, Sample, find_samples, read_sample

CACHE_DIRNAME = "raycity-cache"
FORMAT_VERSION = 1


def cache_size(image_size: tuple[int, int], scale_jitter: float) -> tuple[int, int]:
    return (math.ceil(image_size[0] * (1 + scale_jitter)),
            math.ceil(image_size[1] * (1 + scale_jitter)))


def cache_path(root: str | Path, image_size: tuple[int, int], scale_jitter: float) -> Path:
    h, w = cache_size(image_size, scale_jitter)
    return Path(root) / CACHE_DIRNAME / f"{h}x{w}"


def _stamp(sample: Sample) -> list[int]:
    a, b = sample.image_path.stat(), sample.label_path.stat()
    return [a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns]


def build_cache(root: str | Path, image_size: tuple[int, int], scale_jitter: float = 0.2,
                splits: Iterable[str] = ("train", "val"), progress: bool = True) -> Path:
    """Decode every pair once; written under a temporary name and moved into place."""
    target = cache_path(root, image_size, scale_jitter)
    size = cache_size(image_size, scale_jitter)
    samples = [s for split in splits
               if (Path(root) / "leftImg8bit" / split).is_dir() for s in find_samples(root, split)]
    if not samples:
        raise DataError(f"{root}: no samples in splits {list(splits)}")
    _, first_label = read_sample(samples[0])
    label_shape = tuple(first_label.shape)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (len(samples), *size, 3))
    labels = np.lib.format.open_memmap(tmp / "labels.npy", "w+", np.uint8,
                                       (len(samples), *label_shape))
    index = {}
    for i, sample in enumerate(samples):
        image, label = read_sample(sample)
        if tuple(label.shape) != label_shape:
            raise DataError(f"{sample.label_path}: size {tuple(label.shape)} differs from the "
                            f"first label's {label_shape}; the cache needs one label size")
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        images[i] = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR))
        labels[i] = label.numpy()
        index[sample.key] = [i, *_stamp(sample)]
        if progress:
            print(f"\rcache: {i + 1}/{len(samples)} samples", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    images.flush()
    labels.flush()
    del images, labels
    manifest = {"version": FORMAT_VERSION, "image_size": list(image_size),
                "scale_jitter": scale_jitter, "cache_size": list(size), "index": index}
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


class CachedReader:
    """Drop-in for `read_sample`; memory maps are opened lazily in each DataLoader worker."""

    def __init__(self, directory: Path, index: dict[str, list[int]]) -> None:
        self.directory = directory
        self.rows = {key: entry[0] for key, entry in index.items()}
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def __call__(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        if sample.key not in self.rows:
            return read_sample(sample)
        if self._arrays is None:
            self._arrays = (np.load(self.directory / "images.npy", mmap_mode="r"),
                            np.load(self.directory / "labels.npy", mmap_mode="r"))
        images, labels = self._arrays
        row = self.rows[sample.key]
        image = torch.from_numpy(np.array(images[row])).permute(2, 0, 1)
        return image, torch.from_numpy(np.array(labels[row]))


def cached_reader(root: str | Path, image_size: tuple[int, int],
                  scale_jitter: float) -> CachedReader | None:
    """The cache's reader if a fresh one exists; None (read PNGs) otherwise, warning if stale."""
    directory = cache_path(root, image_size, scale_jitter)
    manifest_file = directory / "manifest.json"
    if not manifest_file.is_file():
        return None
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("version") != FORMAT_VERSION or manifest.get("scale_jitter") != scale_jitter:
        return _stale(directory, "it was built with other settings")
    index = manifest["index"]
    for key, entry in index.items():
        split, city, name = key.split("/")
        sample = Sample(str(root), split, city, name)
        try:
            if _stamp(sample) != entry[1:]:
                return _stale(directory, f"{sample.image_path.name} or its label changed")
        except FileNotFoundError:
            return _stale(directory, f"{sample.image_path} no longer exists")
    return CachedReader(directory, index)


def _stale(directory: Path, why: str) -> None:
    warnings.warn(f"{directory}: stale cache ({why}); reading PNGs instead. Rebuild with "
                  f"`python -m raycity.data cache --data-root ...`.", stacklevel=3)
    return None
