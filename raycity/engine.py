"""One training epoch and one evaluation pass: plain PyTorch, no Ray, no files."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raycity.constants import IGNORE_INDEX, NUM_CLASSES
from raycity.errors import UserError
from raycity.metrics import confusion_matrix

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; continuing would only waste the GPU, and a
    retry from the last checkpoint diverges again (lr too high, bad labels)."""


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)


@dataclass
class TrainStats:
    loss: float
    images: int
    seconds: float
    skipped: int


@dataclass
class EvalStats:
    loss: float
    cm_low: torch.Tensor  # confusion at the training resolution, vs nearest-resized labels
    cm_full: torch.Tensor  # logits upsampled to the label's own size, vs the original labels
    images: int
    seconds: float
    skipped: int


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); nothing elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pick_device() -> torch.device:
    """For in-process use (evaluate, predict, benchmarks); a Ray trial uses the GPUs Ray granted it."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rng_state(device: torch.device) -> dict[str, Any]:
    """The RNGs a training state carries, so that a resumed fold draws what a run through would:
    the CPU's and the GPU's (dropout on either) and Python's."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    if channels_last and device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def forward_logits(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   device: torch.device, *, amp: bool = True) -> torch.Tensor:
    """Logits in fp32 for scoring: the network runs in bf16 autocast on CUDA, its classifier in
    fp32 (see `model.Head`), and `.float()` covers models that do not. Validation, evaluation
    and prediction all call this, so they argmax and upsample the same numbers."""
    with autocast(device, amp):
        return model(images).float()


def _on_device(loader: Iterable[dict], device: torch.device, channels_last: bool,
               counts: dict[str, int]) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """(images, masks, batch) on `device`; batches emptied by skipped samples are counted only."""
    for batch in loader:
        counts["skipped"] += batch["skipped"]
        if "image" not in batch:
            continue
        yield (to_device(batch["image"], device, channels_last),
               batch["mask"].to(device, non_blocking=True), batch)


def train_one_epoch(model: nn.Module, loader: Iterable[dict], optimizer: torch.optim.Optimizer,
                    device: torch.device, *, amp: bool = True, channels_last: bool = False,
                    loss_fn: LossFn = cross_entropy) -> TrainStats:
    model.train()
    start = time.perf_counter()
    total, images, counts = 0.0, 0, {"skipped": 0}
    for step, (x, y, _) in enumerate(_on_device(loader, device, channels_last, counts)):
        with autocast(device, amp):
            loss = loss_fn(model(x), y)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"training loss is {value} at batch {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value * len(x)
        images += len(x)
    return TrainStats(total / max(images, 1), images, time.perf_counter() - start,
                      counts["skipped"])


def upsample(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """One image's C×h×w logits → C×H×W at the label's own size (full-resolution scoring)."""
    return F.interpolate(logits[None].float(), size=tuple(size), mode="bilinear",
                         align_corners=False)[0]


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable[dict], device: torch.device, *,
             num_classes: int = NUM_CLASSES, amp: bool = True, channels_last: bool = False,
             loss_fn: LossFn = cross_entropy) -> EvalStats:
    """Low- and full-resolution confusion matrices in one pass over the loader."""
    model.eval()
    start = time.perf_counter()
    cm_low = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    cm_full = torch.zeros_like(cm_low)
    total, images, counts = 0.0, 0, {"skipped": 0}
    for x, y, batch in _on_device(loader, device, channels_last, counts):
        logits = forward_logits(model, x, device, amp=amp)
        total += loss_fn(logits, y).item() * len(x)
        images += len(x)
        cm_low += confusion_matrix(logits.argmax(1), y, num_classes)
        full = batch["full_mask"]
        full = [full[i] for i in range(len(full))] if isinstance(full, torch.Tensor) else full
        for logit, mask in zip(logits, full):
            mask = mask.to(device, non_blocking=True)
            cm_full += confusion_matrix(upsample(logit, mask.shape[-2:]).argmax(0), mask,
                                        num_classes)
    return EvalStats(total / max(images, 1), cm_low.cpu(), cm_full.cpu(), images,
                     time.perf_counter() - start, counts["skipped"])
