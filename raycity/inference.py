"""Full-resolution prediction: one model or a fold ensemble, with flip and multi-scale TTA.

Shared by the prediction panels, `raycity.predict` and `raycity.evaluate`, so all three score
exactly the same probabilities — and the same as the epoch-end validation, whose preprocessing,
batching and logit precision they share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from raycity.checkpoint import CheckpointError, load_checkpoint
from raycity.config import Config
from raycity.constants import NUM_CLASSES
from raycity.data.layout import DataError, Sample, read_sample
from raycity.data.transforms import preprocess
from raycity.engine import forward_logits, to_device, upsample
from raycity.model import empty_model
from raycity.speed import Speed, resolve_speed

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: horizontal flip and/or input scales (relative to image_size)."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def name(self) -> str:
        parts = (["flip"] if self.flip else []) + (["ms"] if self.scales != (1.0,) else [])
        return "+".join(parts) or "none"

    @classmethod
    def parse(cls, text: str | None) -> TTA:
        """'flip,0.75,1.0,1.25' → flip and three scales; '' or 'none' → nothing."""
        if not text or text == "none":
            return cls()
        flip, scales = False, []
        for part in text.split(","):
            part = part.strip()
            if part == "flip":
                flip = True
            else:
                try:
                    scale = float(part)
                except ValueError as err:
                    raise ValueError(f"--tta {text!r}: {part!r} is neither 'flip' nor a scale") \
                        from err
                if not 0.25 <= scale <= 4:
                    raise ValueError(f"--tta {text!r}: scale {scale} outside 0.25…4")
                scales.append(scale)
        return cls(flip, tuple(scales) or (1.0,))


def load_model(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, Config]:
    """A fold checkpoint → the model in eval mode and the Config it was trained with."""
    return model_from_state(load_checkpoint(path), path, device)


def load_model_meta(path: str | Path,
                    device: torch.device) -> tuple[torch.nn.Module, Config, dict]:
    """`load_model`, and the checkpoint's metadata (epoch, metrics, threads…)."""
    state = load_checkpoint(path)
    return (*model_from_state(state, path, device), state["meta"])


@contextlib.contextmanager
def threads_like_training(meta: dict, device: torch.device) -> Iterator[None]:
    """For a fold trained and validated on the CPU, evaluated on the CPU: the torch thread count
    it validated with. oneDNN's convolutions can round differently with another count, and a
    barely trained model's near-tied logits turn that into other pixels — evaluation must
    reproduce validation exactly. (A GPU-trained fold gets the machine's threads.)"""
    threads = meta.get("threads")
    if device.type != "cpu" or meta.get("device", "cpu") != "cpu" or not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_from_state(state: dict, path: str | Path,
                     device: torch.device) -> tuple[torch.nn.Module, Config]:
    """The model of an already loaded checkpoint (whose metadata the caller may also need),
    laid out on `device` as training laid it out."""
    cfg = Config.from_dict(state["meta"]["config"])
    model = empty_model(NUM_CLASSES, dropout=cfg.dropout, decoder_channels=cfg.decoder_channels)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit UNetResNet50 "
                              f"({str(err).splitlines()[0]})") from err
    return scoring_speed(cfg, device).layout(model.to(device).eval()), cfg


def scoring_speed(cfg: Config, device: torch.device) -> Speed:
    """Scored as validated: the training's autocast precision and layout on this device."""
    return resolve_speed(cfg.amp, cfg.channels_last, False, device)


@dataclass
class Prediction:
    """Class probabilities of one image: at its own resolution (full-res scoring, exports) and,
    when asked for, at the training size (low-res scoring)."""

    full: torch.Tensor  # C×H×W
    low: torch.Tensor | None = None  # C×h×w at cfg.image_size
    # the predicted classes (H×W, h×w): of one view, the argmax of its logits, as validation
    # takes it (the softmax of a nearly uniform prediction can round two classes to a tie);
    # of several views, the argmax of their mean probabilities
    classes_full: torch.Tensor | None = None
    classes_low: torch.Tensor | None = None


@torch.inference_mode()
def predict_batch(models: Sequence[Model], images: Sequence[torch.Tensor], cfg: Config,
                  tta: TTA = TTA(), device: torch.device | None = None,
                  low_res: bool = False) -> list[Prediction]:
    """Mean softmax over models × scales × flips, for a batch of uint8 images.

    Images are batched as validation batches them, preprocessed by `preprocess` and run through
    `forward_logits` (fp32 logits under the training's autocast), so that a checkpoint scores the
    same here as in its epoch-end validation.
    """
    device = device or torch.device("cpu")
    speed = scoring_speed(cfg, device)
    full = [torch.zeros(NUM_CLASSES, *image.shape[-2:], device=device) for image in images]
    low = [torch.zeros(NUM_CLASSES, *cfg.image_size, device=device) for _ in images] \
        if low_res else None
    n = len(tta.scales) * len(models) * (2 if tta.flip else 1)
    single = n == 1  # one view: its classes from its logits, as validation takes them
    classes: dict[tuple[str, int], torch.Tensor] = {}
    for scale in tta.scales:
        size = [max(32, round(cfg.image_size[0] * scale)), max(32, round(cfg.image_size[1] * scale))]
        x = to_device(torch.stack([preprocess(image, size) for image in images]), speed)
        views = [(x, False)] + ([(x.flip(-1), True)] if tta.flip else [])
        for model in models:
            for view, flipped in views:
                logits = forward_logits(model, view, speed)
                if flipped:
                    logits = logits.flip(-1)
                for i, logit in enumerate(logits):
                    up = upsample(logit, full[i].shape[-2:])
                    full[i] += up.softmax(0)
                    if single:
                        classes[("full", i)] = up.argmax(0)
                    if low is not None:
                        up = upsample(logit, cfg.image_size)
                        low[i] += up.softmax(0)
                        if single:
                            classes[("low", i)] = up.argmax(0)
    predictions = []
    for i in range(len(images)):
        p_full, p_low = full[i] / n, low[i] / n if low is not None else None
        predictions.append(Prediction(
            p_full, p_low, classes[("full", i)] if single else p_full.argmax(0),
            None if p_low is None else classes[("low", i)] if single else p_low.argmax(0)))
    return predictions


def predict_probs(models: Sequence[Model], image: torch.Tensor, cfg: Config, tta: TTA = TTA(),
                  device: torch.device | None = None) -> torch.Tensor:
    """Full-resolution probabilities of one image (`predict_batch` of one)."""
    return predict_batch(models, [image], cfg, tta, device)[0].full


def readable_batches(samples: Sequence[Sample], batch_size: int, skip_bad: bool,
                     reader: Callable[[Sample], tuple[torch.Tensor, torch.Tensor]] = read_sample
                     ) -> Iterator[tuple[list[Sample], list[tuple[torch.Tensor, torch.Tensor]], int]]:
    """(samples, (image, label) pairs, skipped) in batches of `batch_size` in the given order —
    the batches a validation DataLoader makes — dropping unreadable samples when `skip_bad`."""
    for start in range(0, len(samples), batch_size):
        kept, pairs, skipped = [], [], 0
        for sample in samples[start:start + batch_size]:
            try:
                pairs.append(reader(sample))
                kept.append(sample)
            except DataError:
                if not skip_bad:
                    raise
                skipped += 1
        yield kept, pairs, skipped
