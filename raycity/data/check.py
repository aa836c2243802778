"""Whole-dataset validation: every pair decoded once, every problem named by its file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from raycity.constants import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from raycity.data.layout import SPLITS, DataError, find_samples, read_sample


def check_dataset(root: str | Path, splits: tuple[str, ...] = SPLITS,
                  progress: bool = False) -> dict:
    """Pairs per split and city, image sizes, and the trainId pixel histogram; DataError on the
    first unusable file (missing partner, size mismatch, corrupt PNG, unknown label id)."""
    root = Path(root)
    present = [s for s in splits if (root / "leftImg8bit" / s).is_dir()]
    if not present:
        find_samples(root, splits[0])  # raises the precise layout error
    report: dict = {"root": str(root), "splits": {}}
    hist = np.zeros(NUM_CLASSES + 1, dtype=np.int64)  # last bin: ignored pixels
    for split in present:
        samples = find_samples(root, split)
        cities: Counter[str] = Counter()
        sizes: Counter[tuple[int, int]] = Counter()
        for i, sample in enumerate(samples):
            image, mask = read_sample(sample)
            cities[sample.city] += 1
            sizes[tuple(image.shape[-2:])] += 1
            m = mask.numpy()
            hist += np.bincount(np.where(m == IGNORE_INDEX, NUM_CLASSES, m).ravel(),
                                minlength=NUM_CLASSES + 1)
            if progress:
                print(f"\r{split}: {i + 1}/{len(samples)}", end="", flush=True)
        if progress:
            print()
        report["splits"][split] = {"pairs": len(samples), "cities": dict(cities),
                                   "sizes": {f"{h}x{w}": n for (h, w), n in sizes.items()}}
    report["class_pixels"] = dict(zip([*CLASS_NAMES, "ignored"], hist.tolist()))
    return report


def format_report(report: dict) -> str:
    lines = [f"Cityscapes layout OK: {report['root']}"]
    for split, info in report["splits"].items():
        sizes = ", ".join(f"{s} ({n})" for s, n in info["sizes"].items())
        lines.append(f"  {split}: {info['pairs']} pairs in {len(info['cities'])} cities; sizes {sizes}")
        for city, n in sorted(info["cities"].items()):
            lines.append(f"    {city}: {n}")
    total = sum(report["class_pixels"].values()) or 1
    lines.append("  class pixels (trainIds):")
    for name, n in report["class_pixels"].items():
        lines.append(f"    {name:<14} {n:>12}  {100 * n / total:5.1f} %")
    return "\n".join(lines)


__all__ = ["DataError", "check_dataset", "format_report"]
