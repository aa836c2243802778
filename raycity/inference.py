"""Full-resolution prediction: one model or a fold ensemble, with flip and multi-scale TTA.

Shared by the prediction panels, `raycity.predict` and `raycity.evaluate`, so all three score
exactly the same probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from raycity.checkpoint import CheckpointError, load_checkpoint
from raycity.config import Config
from raycity.constants import NUM_CLASSES
from raycity.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from raycity.model import UNetResNet50

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


def model_from_state(state: dict, path: str | Path,
                     device: torch.device) -> tuple[torch.nn.Module, Config]:
    """The model of an already loaded checkpoint (whose metadata the caller may also need)."""
    cfg = Config.from_dict(state["meta"]["config"])
    model = UNetResNet50(NUM_CLASSES, dropout=cfg.dropout, pretrained="none")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit UNetResNet50 "
                              f"({str(err).splitlines()[0]})") from err
    return model.to(device).eval(), cfg


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 3×H×W → normalised float, as in training."""
    return TF.normalize(image.float() / 255, IMAGENET_MEAN, IMAGENET_STD)


@torch.inference_mode()
def predict_probs(models: Sequence[Model], image: torch.Tensor, image_size: tuple[int, int],
                  tta: TTA = TTA(), device: torch.device | None = None) -> torch.Tensor:
    """Mean softmax over models × scales × flips, at the image's own resolution (C×H×W)."""
    device = device or torch.device("cpu")
    full = image.shape[-2:]
    x = normalize(image.to(device))[None]
    total = torch.zeros(NUM_CLASSES, *full, device=device)
    n = 0
    for scale in tta.scales:
        size = [max(32, round(image_size[0] * scale)), max(32, round(image_size[1] * scale))]
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        views = [(xs, False)] + ([(xs.flip(-1), True)] if tta.flip else [])
        for model in models:
            for view, flipped in views:
                logits = model(view).float()
                if flipped:
                    logits = logits.flip(-1)
                up = F.interpolate(logits, size=full, mode="bilinear", align_corners=False)
                total += up.softmax(1)[0]
                n += 1
    return total / n
