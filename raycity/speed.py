"""How a fold computes on its device: autocast precision, memory layout, compilation.

Each switch is `auto` (the GPU recipe: on for CUDA, off on the CPU), `on` (also on the CPU,
where bf16 autocast and channels-last work too, and are faster on CPUs with AMX) or `off`.
`on` on the CPU is how CI runs the branches a GPU would take: the same layout conversions,
the same autocast regions, the same optimizer state round trips.

bf16 needs no loss scaling, but only GPUs from Ampere on compute it natively; older ones
(T4, V100) emulate it at a fraction of fp16's speed. There the switch gives fp16 autocast with
a `GradScaler`, the standard AMP recipe for those cards.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from raycity.errors import UserError

SWITCH = ("auto", "on", "off")
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class Speed:
    """What the training and scoring loops run with, resolved once per fold."""

    device: torch.device
    precision: str = "fp32"  # bf16 | fp16 | fp32 — recorded per epoch in epochs.parquet
    channels_last: bool = False
    compiled: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    @property
    def scaled(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return self.precision == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.scaled)

    def layout(self, tensor: torch.Tensor) -> torch.Tensor:
        """An image batch or a model in the layout the convolutions run in."""
        if not self.channels_last:
            return tensor
        if isinstance(tensor, torch.Tensor):
            return tensor.contiguous(memory_format=torch.channels_last)
        return tensor.to(memory_format=torch.channels_last)


def switched_on(value: str, device: torch.device) -> bool:
    return value == "on" or (value == "auto" and device.type == "cuda")


def cuda_bf16_native() -> bool:
    """bf16 computed in hardware (Ampere and later), not emulated."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no emulation flag
        return torch.cuda.is_bf16_supported()


def autocast_precision(amp: str, device: torch.device) -> str:
    if not switched_on(amp, device):
        return "fp32"
    if device.type == "cuda":
        return "bf16" if cuda_bf16_native() else "fp16"
    return "bf16"


def resolve_speed(amp: str, channels_last: str, compile: bool, device: torch.device) -> Speed:
    return Speed(device, autocast_precision(amp, device), switched_on(channels_last, device),
                 compile)


def switch_value(value: object) -> str:
    """`auto|on|off`; a bool from a config written before the switches existed means `auto`
    (true: the GPU default) or `off` (false)."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    return str(value)


class DeviceError(UserError, RuntimeError):
    """The device a fold was given cannot be used here (e.g. a GPU torch cannot see)."""


def check_device(device: torch.device) -> None:
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise DeviceError(f"{device} was requested but torch {torch.__version__} in this process "
                          f"sees {torch.cuda.device_count()} CUDA device(s); install a CUDA "
                          f"build of torch on this node or use --gpus-per-trial 0")


def match_layouts(optimizer: torch.optim.Optimizer) -> int:
    """Give each optimizer moment its parameter's memory layout; returns how many it changed.

    CUDA's fused Adam refuses moments whose strides differ from their parameter's (and the CPU
    kernel silently pairs the wrong elements), so a resumed optimizer must match the model's
    layout whatever the saved state had: a state written before host copies kept strides, or
    one trained with another --channels-last."""
    changed = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
                    changed += 1
    return changed
