"""One training epoch and one validation pass: plain PyTorch, no Ray, no files."""

from __future__ import annotations

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
from raycity.speed import Speed

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


def to_device(images: torch.Tensor, speed: Speed) -> torch.Tensor:
    return speed.layout(images.to(speed.device, non_blocking=True))


def forward_logits(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   speed: Speed) -> torch.Tensor:
    """Logits in fp32 for scoring: the network runs under the fold's autocast, its classifier in
    fp32 (see `model.Head`), and `.float()` covers models that do not. Validation, evaluation
    and prediction all call this, so they argmax and upsample the same numbers."""
    with speed.autocast():
        return model(images).float()


def _on_device(loader: Iterable[dict], speed: Speed,
               counts: dict[str, int]) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """(images, masks, batch) on the device; batches emptied by skipped samples are counted only."""
    for batch in loader:
        counts["skipped"] += batch["skipped"]
        if "image" not in batch:
            continue
        yield (to_device(batch["image"], speed),
               batch["mask"].to(speed.device, non_blocking=True), batch)


CHECK_EVERY = 50  # steps between two looks at the loss: each look waits for the device


def train_one_epoch(model: nn.Module, loader: Iterable[dict], optimizer: torch.optim.Optimizer,
                    speed: Speed, *, scaler: torch.amp.GradScaler | None = None,
                    loss_fn: LossFn = cross_entropy, check_every: int = CHECK_EVERY) -> TrainStats:
    """One pass over the loader. The loss stays on the device: reading it every step would make
    the CPU wait for each forward before it can queue the backward. It is summed there and
    checked for NaN/inf every `check_every` steps and at the end."""
    model.train()
    scaler = scaler or speed.grad_scaler()
    start = time.perf_counter()
    zero = torch.zeros((), dtype=torch.float64, device=speed.device)
    total, window, first, images, counts = 0.0, zero, 1, 0, {"skipped": 0}
    step = 0
    for step, (x, y, _) in enumerate(_on_device(loader, speed, counts), start=1):
        with speed.autocast():
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        window = window + loss.detach().double() * len(x)
        images += len(x)
        if step % check_every == 0:
            total += _checked(window, first, step)
            window, first = zero, step + 1
    if step >= first:
        total += _checked(window, first, step)
    return TrainStats(total / max(images, 1), images, time.perf_counter() - start,
                      counts["skipped"])


def _checked(window: torch.Tensor, first: int, last: int) -> float:
    value = window.item()
    if not math.isfinite(value):
        where = f"batch {last}" if first == last else f"batches {first}–{last}"
        raise NonFiniteLossError(f"training loss is {value} in {where}")
    return value


def upsample(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """One image's C×h×w logits → C×H×W at the label's own size (full-resolution scoring)."""
    return F.interpolate(logits[None].float(), size=tuple(size), mode="bilinear",
                         align_corners=False)[0]


@torch.inference_mode()
def validate(model: nn.Module, loader: Iterable[dict], speed: Speed, *,
             num_classes: int = NUM_CLASSES, loss_fn: LossFn = cross_entropy) -> EvalStats:
    """Low- and full-resolution confusion matrices in one pass over the loader, accumulated on
    the device: nothing is read back before the end."""
    model.eval()
    start = time.perf_counter()
    cm_low = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=speed.device)
    cm_full = torch.zeros_like(cm_low)
    total = torch.zeros((), dtype=torch.float64, device=speed.device)
    images, counts = 0, {"skipped": 0}
    for x, y, batch in _on_device(loader, speed, counts):
        logits = forward_logits(model, x, speed)
        total += loss_fn(logits, y).double() * len(x)
        images += len(x)
        cm_low += confusion_matrix(logits.argmax(1), y, num_classes)
        full = batch["full_mask"]
        full = [full[i] for i in range(len(full))] if isinstance(full, torch.Tensor) else full
        for logit, mask in zip(logits, full):
            mask = mask.to(speed.device, non_blocking=True)
            cm_full += confusion_matrix(upsample(logit, mask.shape[-2:]).argmax(0), mask,
                                        num_classes)
    return EvalStats(total.item() / max(images, 1), cm_low.cpu(), cm_full.cpu(), images,
                     time.perf_counter() - start, counts["skipped"])
