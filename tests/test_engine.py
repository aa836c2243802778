"""The training engine without Ray: one epoch, one evaluation."""

from __future__ import annotations

import pytest
import torch

from raycity.config import preset
from raycity.constants import IGNORE_INDEX, NUM_CLASSES
from raycity.engine import NonFiniteLossError, train_one_epoch, validate
from raycity.speed import Speed
from raycity.training import build_model, build_optimizer

CPU = Speed(torch.device("cpu"))


class Constant(torch.nn.Module):
    """Predicts class `k` everywhere, at whatever size it is given."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], NUM_CLASSES, *x.shape[-2:]) + self.dummy
        logits[:, self.k] = 1.0
        return logits


def batch(full_size=(16, 32), low_size=(8, 16)):
    full = torch.randint(0, NUM_CLASSES, (2, *full_size))
    full[:, 0] = IGNORE_INDEX
    low = full[:, ::2, ::2].clone()
    return {"image": torch.zeros(2, 3, *low_size), "mask": low.long(), "full_mask": full,
            "skipped": 1}


def test_validation_scores_both_resolutions_in_one_pass():
    b = batch()
    stats = validate(Constant(3), [b], CPU)
    assert stats.cm_low[:, 3].sum() == (b["mask"] != IGNORE_INDEX).sum()
    assert stats.cm_full[:, 3].sum() == (b["full_mask"] != IGNORE_INDEX).sum()  # label's own size
    assert stats.cm_full.sum() == stats.cm_full[:, 3].sum()
    assert stats.images == 2 and stats.skipped == 1


def test_non_finite_loss_is_caught():
    model = build_model(preset("smoke"), CPU)
    with pytest.raises(NonFiniteLossError, match="nan in batch 1"):
        train_one_epoch(model, [batch()], build_optimizer(preset("smoke"), model), CPU,
                        loss_fn=lambda logits, y: logits.sum() * float("nan"))


def test_training_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = preset("smoke")
    model = build_model(cfg, CPU)
    optimizer = build_optimizer(cfg, model)
    b = batch(low_size=(32, 64))
    b["mask"] = torch.randint(0, 3, (2, 32, 64))
    b["image"] = torch.randn(2, 3, 32, 64)
    losses = [train_one_epoch(model, [b], optimizer, CPU).loss for _ in range(4)]
    assert losses[-1] < losses[0]


class ChannelIsClass(torch.nn.Module):
    """Logits = the image's channels for classes 0-2: the prediction follows the image."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        logits = torch.full((x.shape[0], NUM_CLASSES, *x.shape[-2:]), -10.0) + self.dummy
        logits[:, :3] = x[:, :3]
        return logits


def bands(height: int, width: int, edges: tuple[int, ...]) -> torch.Tensor:
    """Classes 0, 1, 2 in vertical bands whose right edges are `edges` (unequal widths, so a
    horizontal flip changes the picture)."""
    mask = torch.zeros(height, width, dtype=torch.long)
    start = 0
    for k, edge in enumerate(edges):
        mask[:, start:edge] = k
        start = edge
    return mask


def test_full_resolution_is_scored_where_the_labels_are():
    """The network sees an 8×16 image; the labels are 16×32. Upsampled bilinearly to the label's
    size, the prediction matches them exactly; a flip, a shift or a wrong size would not."""
    low = bands(8, 16, (2, 10, 16))
    image = torch.nn.functional.one_hot(low, 3).permute(2, 0, 1).float()[None] * 5
    full = bands(16, 32, (4, 20, 32))
    stats = validate(ChannelIsClass(), [{"image": image, "mask": low[None], "full_mask": full[None],
                                         "skipped": 0}], CPU)
    assert stats.cm_full.sum() == 16 * 32 and stats.cm_full.trace() == 16 * 32
    assert stats.cm_low.trace() == 8 * 16
    flipped = validate(ChannelIsClass(), [{"image": image.flip(-1), "mask": low[None],
                                           "full_mask": full[None], "skipped": 0}], CPU)
    assert flipped.cm_full.trace() < 0.5 * 16 * 32  # misaligned: most pixels wrong


def test_full_resolution_logits_are_upsampled_bilinearly_before_the_argmax():
    """mmsegmentation and the seed resize logits (bilinear, align_corners=False), then argmax: at
    a non-integer scale nearest-neighbour or corner-aligned resizing moves class boundaries."""
    torch.manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 12, 20), 5, 1, 2)[..., 2:10, 2:18]
    low = smooth.argmax(1)
    size = (13, 29)
    full = torch.nn.functional.interpolate(smooth, size=size, mode="bilinear",
                                           align_corners=False).argmax(1)
    nearest = torch.nn.functional.interpolate(smooth, size=size, mode="nearest").argmax(1)
    assert (nearest != full).sum() > 10  # the case tells the two apart
    stats = validate(ChannelIsClass(), [{"image": smooth, "mask": low, "full_mask": full,
                                         "skipped": 0}], CPU)
    assert stats.cm_full.trace() == stats.cm_full.sum() == 13 * 29


class Counted(torch.nn.Module):
    """A 1×1 convolution whose loss can be made NaN from a given step on."""

    def __init__(self, nan_from: int = 0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, NUM_CLASSES, 1)
        self.calls, self.nan_from = 0, nan_from

    def forward(self, x):
        self.calls += 1
        out = self.conv(x)
        return out * float("nan") if self.nan_from and self.calls >= self.nan_from else out


def reads_of_device_values(monkeypatch) -> list[str]:
    """Every read of a tensor's value into Python (each one a host–device sync on a GPU)."""
    reads: list[str] = []
    for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return reads


def test_training_reads_the_loss_once_every_check_not_every_step(monkeypatch):
    """The loss stays on the device; reading it each step would make the CPU wait for every
    forward before it can queue the backward."""
    model = Counted()
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    data = [batch(low_size=(8, 16)) for _ in range(7)]
    reads = reads_of_device_values(monkeypatch)
    stats = train_one_epoch(model, data, optimizer, CPU, check_every=3)
    assert len(reads) == 3  # after steps 3 and 6, and at the end (step 7)
    assert stats.images == 14 and stats.loss > 0


def test_a_nan_between_two_checks_names_the_steps(monkeypatch):
    model = Counted(nan_from=5)
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(NonFiniteLossError, match="nan in batches 4–6"):
        train_one_epoch(model, [batch() for _ in range(9)], optimizer, CPU, check_every=3)


def test_validation_reads_nothing_back_before_the_end(monkeypatch):
    """Per batch and per image the confusion matrices grow on the device; one read at the end
    (the loss), plus the copies of the two matrices."""
    data = [batch() for _ in range(4)]
    reads = reads_of_device_values(monkeypatch)
    stats = validate(Constant(3), data, CPU)
    assert reads == ["item"]
    assert stats.images == 8
