"""A map-style dataset over `Sample`s, the sampler that makes every epoch reproducible, and the
collate that tolerates skipped samples."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler, default_collate
from torchvision import tv_tensors

from raycity.data.layout import DataError, Sample, read_sample
from raycity.seeds import derive_seed

Reader = Callable[[Sample], tuple[torch.Tensor, torch.Tensor]]


class SeededSampler(Sampler):
    """Yields `(index, seed)`: the epoch's order and each sample's augmentation draw derive from
    (seed, epoch, index) alone.

    DataLoader workers otherwise draw from RNGs seeded when they start, so a run resumed at
    epoch 7 — or run with another `--num-workers` — would see other crops and flips than an
    uninterrupted one. Here it sees exactly the same batches.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = range(self.size)
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        for index in order:
            yield index, derive_seed(self.seed, self.epoch, index)


class SegmentationDataset(Dataset):
    """Yields {"image", "mask"} (and the untouched "full_mask" for full-resolution scoring).

    Indexed by an int or by `(index, seed)` from `SeededSampler`; with a seed, the random
    augmentations of that sample draw from it (in a forked RNG, so the training RNG is untouched).
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

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        try:
            image, mask = self.reader(sample)
        except DataError:
            if self.skip_bad:
                return None
            raise
        if seed is None:
            out_image, out_mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # the CPU's only: CUDA's drives dropout
                out_image, out_mask = self.transform(tv_tensors.Image(image),
                                                     tv_tensors.Mask(mask))
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
