"""UNet with a ResNet-50 encoder, exactly as the seed study describes it.

encoder → bottleneck → four decoder stages → head; each is its own module with explicit
channel arguments so that the shape story can be read off the constructor.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from raycity.config import SEED_DECODER
from raycity.constants import NUM_CLASSES
from raycity.errors import UserError, brief

# Channels of the stem (1/2) and of the four residual stages (1/4 … 1/32).
ENCODER_CHANNELS = (64, 256, 512, 1024, 2048)
# The seed's bottleneck and first stage hold 100 M of its 147 M parameters;
# `Config.decoder_channels` narrows them (as segmentation_models_pytorch's `decoder_channels`
# does) for a light model.
DECODER_CHANNELS = SEED_DECODER[1:]
HEAD_CHANNELS = 32


class PretrainedWeightsError(UserError, RuntimeError):
    """The requested encoder weights could not be obtained."""


class ConvBlock(nn.Sequential):
    """Two 3×3 Conv–BN–ReLU, optionally followed by Dropout2d (the seed's regulariser)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(c_in, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Encoder(nn.Module):
    """ResNet-50 cut after layer4; returns the stem and the four stage outputs (fine to coarse)."""

    out_channels = ENCODER_CHANNELS

    def __init__(self, pretrained: str = "none") -> None:
        super().__init__()
        net = resnet50(weights=None)
        load_encoder_weights(net, pretrained)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.pool = net.maxpool
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        x = self.pool(features[0])
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class DecoderStage(nn.Module):
    """2× transposed conv halving channels, exact resize onto the skip, concat, ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        up_channels = in_channels // 2
        self.up = nn.ConvTranspose2d(in_channels, up_channels, kernel_size=2, stride=2)
        self.block = ConvBlock(up_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            # Odd input sizes make the 2× upsample miss the skip by a pixel.
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class Head(nn.Module):
    """2× transposed conv to full resolution, 1×1 conv to class logits.

    The classifier runs in fp32 even under bf16 autocast: the logits are what the loss, the
    argmax and the upsampling to label size read, and every scoring path must see the same
    precision. It is 32 → 19 channels, so fp32 costs nothing measurable.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, HEAD_CHANNELS, kernel_size=2, stride=2)
        self.classify = nn.Conv2d(HEAD_CHANNELS, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # on `meta` (shapes and FLOPs counted without data) there is no autocast to leave
        fp32 = contextlib.nullcontext() if x.device.type == "meta" else \
            torch.autocast(x.device.type, enabled=False)
        with fp32:
            return self.classify(x.float())


class UNetResNet50(nn.Module):
    """The seed study's segmentation network (≈147 M parameters with 19 classes and the seed's
    decoder widths; ≈ 31 M with the smoke preset's narrow decoder, same stages and shapes)."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.0,
                 pretrained: str = "none",
                 decoder_channels: tuple[int, ...] = SEED_DECODER) -> None:
        super().__init__()
        stem_c, c1, c2, c3, c4 = ENCODER_CHANNELS
        b, d1, d2, d3, d4 = decoder_channels
        self.encoder = Encoder(pretrained)
        self.bottleneck = ConvBlock(c4, b, dropout=dropout)
        self.decoder = nn.ModuleList([
            DecoderStage(b, c3, d1),
            DecoderStage(d1, c2, d2),
            DecoderStage(d2, c1, d3),
            DecoderStage(d3, stem_c, d4),
        ])
        self.head = Head(d4, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        stem, s1, s2, s3, s4 = self.encoder(images)
        x = self.bottleneck(s4)
        for stage, skip in zip(self.decoder, (s3, s2, s1, stem)):
            x = stage(x, skip)
        logits = self.head(x)
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                                   align_corners=False)
        return logits


def load_encoder_weights(net: nn.Module, pretrained: str) -> None:
    """Fill a torchvision ResNet-50 from `imagenet` (torchvision's weights API), `none` or a file.

    ImageNet weights come from torch's hub cache; on a machine without internet the user must
    place the file there or pass a path, so the error says exactly where.
    """
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        weights = ResNet50_Weights.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # urllib, ssl, hash mismatch: all mean "not obtainable here"
            target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise PretrainedWeightsError(
                f"could not obtain ImageNet weights for the ResNet-50 encoder ({brief(err)}). "
                f"Download {weights.url} and place it at {target}, or pass "
                f"--pretrained PATH to a ResNet-50 state dict, or --pretrained none."
            ) from err
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise PretrainedWeightsError(
                f"--pretrained {pretrained!r}: no such file; expected 'imagenet', 'none' or the "
                f"path of a torchvision ResNet-50 state dict (.pth)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise PretrainedWeightsError(f"--pretrained {path}: not a loadable state dict "
                                         f"({brief(err)}); expected a torchvision ResNet-50 "
                                         f"state dict (.pth)") from err
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise PretrainedWeightsError(
                f"--pretrained {path}: holds a {type(state).__name__}, not a state dict of "
                f"tensors; expected a torchvision ResNet-50 state dict (.pth)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # the names of a ResNet-50, other shapes (ResNeXt, Wide ResNet)
        raise PretrainedWeightsError(
            f"--pretrained {pretrained}: not a ResNet-50 state dict ({brief(err)})") from err
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"--pretrained {pretrained}: not a ResNet-50 state dict "
            f"(missing {missing[:3]}…, unexpected {unexpected[:3]}…)"
        )


def check_pretrained(pretrained: str) -> None:
    """The encoder weights a run asks for, checked in the driver before any trial starts: the
    file exists and is a ResNet-50 state dict, or the ImageNet weights are obtainable (fetched
    once into torch's hub cache, where every trial on this node then finds them)."""
    load_encoder_weights(resnet50(weights=None), pretrained)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def empty_model(num_classes: int = NUM_CLASSES, dropout: float = 0.0,
                device: torch.device | str = "cpu",
                decoder_channels: tuple[int, ...] = SEED_DECODER) -> UNetResNet50:
    """The architecture with uninitialised tensors on `device`, for loading a checkpoint into:
    drawing 147 M random weights first would only cost seconds to be overwritten. (Loading must
    then be strict, so that no tensor is left uninitialised.)"""
    with torch.device("meta"):
        model = UNetResNet50(num_classes, dropout=dropout, pretrained="none",
                             decoder_channels=decoder_channels)
    return model.to_empty(device=device)


def parameter_count(decoder_channels: tuple[int, ...] = SEED_DECODER) -> int:
    """Parameters of the architecture, counted on the meta device (nothing allocated)."""
    return sum(tensor_bytes(decoder_channels)[1]) // 4


@functools.lru_cache(maxsize=8)
def tensor_bytes(decoder_channels: tuple[int, ...] = SEED_DECODER) -> tuple[list[int], list[int]]:
    """Bytes of each tensor of the architecture's state dict, and of each parameter, on the
    meta device: what host copies of its weights and optimizer state allocate, block by
    block."""
    with torch.device("meta"):
        model = UNetResNet50(NUM_CLASSES, decoder_channels=tuple(decoder_channels))
    return ([t.numel() * t.element_size() for t in model.state_dict().values()],
            [p.numel() * p.element_size() for p in model.parameters()])
