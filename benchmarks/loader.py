"""Training loader throughput: raycity (decode-once cache + uint8 v2 augmentations) against
torchvision.datasets.Cityscapes + PIL + transforms.v2 doing the same augmentations on the same
2048×1024 files, in one run.

    python benchmarks/loader.py [--images 16] [--epochs 2] [--image-size 512x1024]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.datasets import Cityscapes
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

from raycity.cli import image_size  # noqa: E402
from raycity.constants import LABEL_TO_TRAIN  # noqa: E402
from raycity.data import (  # noqa: E402
    SegmentationDataset,
    collate,
    find_samples,
    train_transform,
    write_synthetic_cityscapes,  # noqa: E402
)
from raycity.data.cache import build_cache, cached_reader  # noqa: E402


def torchvision_dataset(root: Path, size: tuple[int, int]) -> Cityscapes:
    """The plain alternative: PIL decoding, labelIds → trainIds, the same v2 augmentations."""
    augment = train_transform(size)
    lut = torch.from_numpy(LABEL_TO_TRAIN)

    def transforms(image, target):
        image = v2.functional.pil_to_tensor(image)
        mask = lut[v2.functional.pil_to_tensor(target)[0].long()]
        return augment(tv_tensors.Image(image), tv_tensors.Mask(mask))

    return Cityscapes(str(root), split="train", mode="fine", target_type="semantic",
                      transforms=transforms)


def throughput(dataset, epochs: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=workers,
                        collate_fn=collate if isinstance(dataset, SegmentationDataset) else None,
                        persistent_workers=workers > 0)
    next(iter(loader))  # warm-up: workers started, files in the page cache
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--image-size", type=image_size, default=(512, 1024))
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_cityscapes(Path(tmp), {"train": args.images}, (1024, 2048))
        samples = find_samples(root, "train")
        aug = train_transform(args.image_size)
        t0 = time.perf_counter()
        build_cache(root, args.image_size, 0.2, splits=("train",), progress=False)
        cache_s = time.perf_counter() - t0
        reader = cached_reader(root, args.image_size, 0.2)
        rates = {
            "torchvision Cityscapes + PIL + v2": throughput(
                torchvision_dataset(root, args.image_size), args.epochs, args.workers),
            "raycity, PNG (no cache)": throughput(
                SegmentationDataset(samples, aug), args.epochs, args.workers),
            "raycity, cache": throughput(
                SegmentationDataset(samples, aug, reader=reader), args.epochs, args.workers),
        }
    base = rates["torchvision Cityscapes + PIL + v2"]
    print(f"## Loader ({args.images} synthetic 2048×1024 images, image_size "
          f"{args.image_size[0]}×{args.image_size[1]}, {args.workers} workers, 1 thread)\n")
    print(table(["loader", "samples/s", "vs torchvision"],
                [[k, f"{v:.1f}", f"{v / base:.2f}×"] for k, v in rates.items()]))
    print(f"\ncache build: {cache_s:.1f} s for {args.images} images (once)\n\nmachine: {machine()}")


if __name__ == "__main__":
    main()
