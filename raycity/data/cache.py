"""Decode-once cache: images as uint8 arrays at the size training needs, labels as trainIds.

Decoding a 2048×1024 Cityscapes PNG costs ~50 ms of CPU, often more than a GPU step. The cache
holds each image twice: at `image_size × (1 + scale_jitter)` for training (enough for the largest
random scale) and at exactly `image_size` for validation, resized by the very call validation
makes without the cache, so that validation inputs are bit-identical with and without it. Labels
stay at their original size (full-resolution scoring needs them). All in memory-mapped .npy
files. A manifest of the source files' sizes and modification times makes a stale cache
detectable, and the arrays are checked against the manifest's shapes, so a truncated file is
found too; the loader then falls back to the PNGs and says so.
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

from raycity.data.layout import DataError, Sample, find_samples, read_sample
from raycity.errors import brief

CACHE_DIRNAME = "raycity-cache"
FORMAT_VERSION = 2  # 2: validation images at exactly image_size, resized as `preprocess` does
ARRAYS = ("images.npy", "val_images.npy", "labels.npy")


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
    shapes = {"images.npy": (len(samples), *size, 3),
              "val_images.npy": (len(samples), *image_size, 3),
              "labels.npy": (len(samples), *label_shape)}
    arrays = {name: np.lib.format.open_memmap(tmp / name, "w+", np.uint8, shape)
              for name, shape in shapes.items()}
    index = {}
    for i, sample in enumerate(samples):
        image, label = read_sample(sample)
        if tuple(label.shape) != label_shape:
            raise DataError(f"{sample.label_path}: size {tuple(label.shape)} differs from the "
                            f"first label's {label_shape}; the cache needs one label size")
        arrays["images.npy"][i] = _resized(image, size)
        arrays["val_images.npy"][i] = _resized(image, image_size)
        arrays["labels.npy"][i] = label.numpy()
        index[sample.key] = [i, *_stamp(sample)]
        if progress:
            print(f"\rcache: {i + 1}/{len(samples)} samples", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    for array in arrays.values():
        array.flush()
    del arrays
    manifest = {"version": FORMAT_VERSION, "image_size": list(image_size),
                "scale_jitter": scale_jitter, "cache_size": list(size),
                "shapes": {name: list(shape) for name, shape in shapes.items()}, "index": index}
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _resized(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """H×W×3 uint8 at `size`, by the resize `transforms.preprocess` makes (bit-identical)."""
    from raycity.data.transforms import resize_image  # torchvision: only to build a cache

    return resize_image(image, size).permute(1, 2, 0).numpy()


class CachedReader:
    """Drop-in for `read_sample`; memory maps are opened lazily in each DataLoader worker.

    `split="train"` serves the images sized for the random scale, `split="val"` the images at
    exactly the training size (validation then only normalises them).
    """

    def __init__(self, directory: Path, index: dict[str, list[int]], split: str = "train") -> None:
        self.directory = directory
        self.rows = {key: entry[0] for key, entry in index.items()}
        self.images_file = "val_images.npy" if split == "val" else "images.npy"
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def __call__(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        if sample.key not in self.rows:
            return read_sample(sample)
        if self._arrays is None:
            self._arrays = (np.load(self.directory / self.images_file, mmap_mode="r"),
                            np.load(self.directory / "labels.npy", mmap_mode="r"))
        images, labels = self._arrays
        row = self.rows[sample.key]
        image = torch.from_numpy(np.array(images[row])).permute(2, 0, 1)
        return image, torch.from_numpy(np.array(labels[row]))


def cached_reader(root: str | Path, image_size: tuple[int, int], scale_jitter: float,
                  split: str = "train") -> CachedReader | None:
    """The cache's reader if a fresh one exists; None (read PNGs) otherwise, warning if stale
    or damaged."""
    directory = cache_path(root, image_size, scale_jitter)
    manifest_file = directory / "manifest.json"
    if not manifest_file.is_file():
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        return _stale(directory, "its manifest.json is unreadable")
    if manifest.get("version") != FORMAT_VERSION or manifest.get("scale_jitter") != scale_jitter:
        return _stale(directory, "it was built with other settings or by an older raycity")
    for name, shape in manifest.get("shapes", {}).items():
        try:  # the header read and a size check: a truncated file fails here, not in a worker
            array = np.load(directory / name, mmap_mode="r")
        except (OSError, ValueError) as err:
            return _stale(directory, f"{name} is damaged ({brief(err)})")
        if list(array.shape) != shape:
            return _stale(directory, f"{name} has shape {list(array.shape)}, expected {shape}")
    index = manifest["index"]
    for key, entry in index.items():
        sample = Sample(str(root), *key.split("/"))
        try:
            if _stamp(sample) != entry[1:]:
                return _stale(directory, f"{sample.image_path.name} or its label changed")
        except FileNotFoundError:
            return _stale(directory, f"{sample.image_path} no longer exists")
    return CachedReader(directory, index, split)


def cache_problem(root: str | Path, image_size: tuple[int, int], scale_jitter: float) -> str | None:
    """Why an existing cache cannot be used, if so: the driver says it once on the console;
    the trials' own warnings go to the run's log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cached_reader(root, image_size, scale_jitter)
    return str(caught[0].message) if caught else None


def _stale(directory: Path, why: str) -> None:
    warnings.warn(f"{directory}: stale cache ({why}); reading PNGs instead. Rebuild with "
                  f"`python -m raycity.data cache --data-root ...`.", stacklevel=3)
    return None
