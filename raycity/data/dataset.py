"""A map-style dataset over `Sample`s, and the collate that tolerates skipped samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate
from torchvision import tv_tensors

from raycity.data.layout import DataError, Sample, read_sample

Reader = Callable[[Sample], tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """Yields {"image", "mask"} (and the untouched "full_mask" for full-resolution scoring).

    With `skip_bad=True` a sample that cannot be read yields None and is counted by the collate,
    so one corrupt PNG does not cost a multi-day run.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, *,
                 full_mask: bool = False, skip_bad: bool = False,
                 reader: Reader = read_sample) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.full_mask = full_mask
        self.skip_bad = skip_bad
        self.reader = reader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:
            image, mask = self.reader(sample)
        except DataError:
            if self.skip_bad:
                return None
            raise
        out_image, out_mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        item = {"image": out_image.as_subclass(torch.Tensor),
                "mask": out_mask.as_subclass(torch.Tensor).long(), "index": index}
        if self.full_mask:
            item["full_mask"] = mask
        return item


def collate(batch: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack a batch, dropping skipped samples; full masks of unequal sizes stay a list."""
    items = [b for b in batch if b is not None]
    out: dict[str, Any] = {"skipped": len(batch) - len(items)}
    if not items:
        return out
    full = [b.pop("full_mask") for b in items] if "full_mask" in items[0] else None
    out.update(default_collate(items))
    if full is not None:
        same = all(f.shape == full[0].shape for f in full)
        out["full_mask"] = torch.stack(full) if same else full
    return out
