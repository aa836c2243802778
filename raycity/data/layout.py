"""The official Cityscapes layout on disk, its label ids, and the errors a user can act on.

`leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` pairs with
`gtFine/<split>/<city>/<name>_gtFine_labelIds.png`; `<name>` is `<city>_<seq>_<frame>`.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from raycity.constants import LABEL_TO_TRAIN, VALID_LABEL_IDS
from raycity.errors import UserError, brief

if TYPE_CHECKING:  # torchvision loads when a PNG is first decoded (raycity/data/__init__.py)
    from torchvision.io import ImageReadMode

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREYSCALE = 0  # PNG colour type of single-channel images
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
SPLITS = ("train", "val", "test")

_VALID_LUT = torch.zeros(256, dtype=torch.bool)
_VALID_LUT[sorted(VALID_LABEL_IDS)] = True


class DataError(UserError, ValueError):
    """Unusable data; the message names the file or directory and what was expected."""


@dataclass(frozen=True)
class Sample:
    """One image/label pair; `key` (`<split>/<city>/<name>`) names it in folds.json and errors."""

    root: str
    split: str
    city: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.split}/{self.city}/{self.name}"

    @property
    def image_path(self) -> Path:
        return Path(self.root) / "leftImg8bit" / self.split / self.city / (self.name + IMAGE_SUFFIX)

    @property
    def label_path(self) -> Path:
        return Path(self.root) / "gtFine" / self.split / self.city / (self.name + LABEL_SUFFIX)


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds → the 19 trainIds; every other id becomes 255 (ignored)."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype != np.uint8:
        if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 255):
            raise ValueError("label ids must lie in 0…255")
        label_ids = label_ids.astype(np.uint8)
    return LABEL_TO_TRAIN[label_ids]


def find_samples(root: str | Path, split: str) -> list[Sample]:
    """All pairs of one split, sorted; raises DataError on a wrong root or a missing partner."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data root does not exist (expected the Cityscapes folder "
                        f"holding leftImg8bit/ and gtFine/)")
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (root / "leftImg8bit", root / "gtFine"):
        if not d.is_dir():
            raise DataError(f"{d}: missing; {root} is not in the Cityscapes layout "
                            f"(expected leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/)")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: split '{split}' is missing")
    images = {p.relative_to(image_dir).as_posix()[: -len(IMAGE_SUFFIX)]
              for p in image_dir.glob(f"*/*{IMAGE_SUFFIX}")}
    labels = {p.relative_to(label_dir).as_posix()[: -len(LABEL_SUFFIX)]
              for p in label_dir.glob(f"*/*{LABEL_SUFFIX}")} if label_dir.is_dir() else set()
    if not images:
        raise DataError(f"{image_dir}: no *{IMAGE_SUFFIX} files in any city folder")
    for stem in sorted(images - labels):
        raise DataError(f"{label_dir / (stem + LABEL_SUFFIX)}: missing; it is the label of "
                        f"{image_dir / (stem + IMAGE_SUFFIX)}")
    for stem in sorted(labels - images):
        raise DataError(f"{image_dir / (stem + IMAGE_SUFFIX)}: missing; it is the image of "
                        f"{label_dir / (stem + LABEL_SUFFIX)}")
    return [Sample(str(root), split, *stem.split("/", 1)) for stem in sorted(images)]


MAX_PIXELS = 64_000_000  # --max-pixels: 30× Cityscapes' 2048×1024, far below a bomb's reach


def check_pixels(path: Path, width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """A PNG of a few KB can declare 30000×30000 pixels (a decompression bomb: 2.7 GB once
    decoded as RGB); the header says so before anything is decoded."""
    if width * height > max_pixels:
        raise DataError(f"{path}: {width}×{height} pixels ({width * height / 1e6:.0f} MP) is "
                        f"above the limit of {max_pixels / 1e6:g} MP; refused before decoding "
                        f"(raise it with --max-pixels if the image is genuine)")


def read_png(path: Path, mode: ImageReadMode, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    from torchvision.io import decode_png

    width, height, _, _ = png_header(path)
    check_pixels(path, width, height, max_pixels)
    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return decode_png(data, mode=mode)
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except (RuntimeError, ValueError, OSError) as err:
        raise DataError(f"{path}: unreadable or corrupt PNG ({brief(err)})") from err


def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the first 33 bytes, without decoding."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except OSError as err:
        raise DataError(f"{path}: unreadable ({brief(err)})") from err
    if not head:
        raise DataError(f"{path}: empty file (0 bytes); expected a PNG")
    if head[:8] != PNG_SIGNATURE:
        kind = "a JPEG" if head[:3] == b"\xff\xd8\xff" else "not a PNG"
        raise DataError(f"{path}: {kind}; the Cityscapes layout holds PNG files")
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise DataError(f"{path}: truncated or corrupt PNG header")
    width, height = struct.unpack(">II", head[16:24])
    return width, height, head[24], head[25]


def check_pair(sample: Sample, max_pixels: int = MAX_PIXELS) -> None:
    width, height, _, _ = png_header(sample.image_path)
    label_w, label_h, _, colour = png_header(sample.label_path)
    check_pixels(sample.image_path, width, height, max_pixels)
    check_pixels(sample.label_path, label_w, label_h, max_pixels)
    if colour != GREYSCALE:
        raise DataError(f"{sample.label_path}: a colour PNG (colour type {colour}); expected "
                        f"single-channel labelIds (*_gtFine_labelIds.png)")
    if (label_w, label_h) != (width, height):
        raise DataError(f"{sample.label_path}: size {label_h}×{label_w} differs from its "
                        f"image's {height}×{width} ({sample.image_path})")


def check_pairs(samples: list[Sample], skip_bad: bool = False,
                max_pixels: int = MAX_PIXELS) -> list[DataError]:
    """Every pair's headers, before anything launches: both files present, non-empty PNGs, the
    label single-channel and the size of its image. Header reads only, so 5,000 pairs take
    seconds; none is larger than `max_pixels`; decoding (label ids) stays in `raycity.data
    check` and in the trials. Raises the
    first problem, or with `skip_bad` returns them all (those samples will be skipped)."""
    problems = []
    for sample in samples:
        try:
            check_pair(sample, max_pixels)
        except DataError as err:
            if not skip_bad:
                raise
            problems.append(err)
    return problems


def read_sample(sample: Sample, max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 image (3×H×W) and trainId mask (H×W), validated; DataError names the file."""
    from torchvision.io import ImageReadMode

    image = read_png(sample.image_path, ImageReadMode.RGB, max_pixels)
    label_ids = read_png(sample.label_path, ImageReadMode.GRAY, max_pixels)[0]
    if label_ids.dtype != torch.uint8:  # a 16-bit PNG
        top = int(label_ids.to(torch.int32).max()) if label_ids.numel() else 0
        if top > 255:
            raise DataError(f"{sample.label_path}: a 16-bit label with ids up to {top}; expected "
                            f"8-bit Cityscapes labelIds 0…33")
        label_ids = label_ids.to(torch.uint8)
    if image.shape[-2:] != label_ids.shape:
        raise DataError(f"{sample.label_path}: size {tuple(label_ids.shape)} differs from its "
                        f"image's {tuple(image.shape[-2:])} ({sample.image_path})")
    if not bool(_VALID_LUT[label_ids.long()].all()):
        bad = sorted(set(label_ids.unique().tolist()) - VALID_LABEL_IDS)
        raise DataError(f"{sample.label_path}: label ids {bad} are not in the Cityscapes table "
                        f"(expected labelIds 0…33, not trainIds or colours)")
    return image, torch.from_numpy(LABEL_TO_TRAIN[label_ids.numpy()])


@functools.lru_cache(maxsize=8)
def first_label_size(root: str) -> tuple[int, int] | None:
    """(height, width) of the train labels, for Table 1's caption; read once per data root."""
    try:
        width, height, _, _ = png_header(find_samples(root, "train")[0].label_path)
        return height, width
    except Exception:  # only a caption; never fail a run over it
        return None
