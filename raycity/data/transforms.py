"""The seed's augmentations as torchvision.transforms.v2 on image + Mask jointly.

Geometry is applied to both, colour only to the image; v2 resizes a `Mask` with nearest
neighbour whatever interpolation the image uses, so labels are never blended.
Everything runs on uint8 until the final normalisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from raycity.constants import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScaleResize(v2.Transform):
    """Resize to `size` × s with s uniform in [1 − jitter, 1 + jitter] (the seed's ±20 % scale)."""

    def __init__(self, size: tuple[int, int], jitter: float) -> None:
        super().__init__()
        self.size, self.jitter = size, jitter

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        s = 1.0 + (torch.rand(()).item() * 2 - 1) * self.jitter
        return {"size": [max(1, round(self.size[0] * s)), max(1, round(self.size[1] * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.resize(inpt, params["size"], antialias=True)


def normalize() -> list[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def resize_image(image: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """uint8 3×H×W at `size`, antialiased: the resize of validation and of the cache alike."""
    return TF.resize(image.as_subclass(torch.Tensor), list(size), antialias=True)


def preprocess(image: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """uint8 3×H×W → the network's input at `size`.

    Resize first (on uint8, antialiased), then normalise: the one order that validation,
    `raycity.evaluate`, `raycity.predict` and the decode-once cache all use, so that they feed
    the network bit-identical tensors and score the same mIoU for the same checkpoint.
    """
    return TF.normalize(TF.to_dtype(resize_image(image, size), torch.float32, scale=True),
                        IMAGENET_MEAN, IMAGENET_STD)


def resize_mask(mask: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """Labels at `size` by nearest neighbour (never blended): what low-res mIoU compares with."""
    return TF.resize(tv_tensors.Mask(mask), list(size)).as_subclass(torch.Tensor)


def train_transform(image_size: tuple[int, int], scale_jitter: float = 0.2,
                    color_jitter: float = 0.2, hflip: bool = True) -> v2.Compose:
    """Random scale, pad (image 0, mask 255) and crop back to `image_size`, flip, jitter."""
    steps: list[v2.Transform] = [
        RandomScaleResize(image_size, scale_jitter),
        v2.RandomCrop(image_size, pad_if_needed=True,
                      fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return v2.Compose(steps + normalize())


class ValTransform:
    """The seed's validation transform (resize to `image_size`, normalise) as `preprocess`."""

    def __init__(self, image_size: tuple[int, int]) -> None:
        self.image_size = image_size

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return preprocess(image, self.image_size), resize_mask(mask, self.image_size)


def val_transform(image_size: tuple[int, int]) -> ValTransform:
    return ValTransform(image_size)
