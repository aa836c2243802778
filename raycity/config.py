"""One frozen config object flows from the CLI to the trainable; presets are named data.

`Config` is the recipe: everything that decides the numbers a run produces. `RunOptions` says
where and how a run executes (run name, storage, cluster, resources); it may change on a
resume, the recipe may not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from raycity.errors import UserError
from raycity.speed import SWITCH, switch_value


class ConfigError(UserError, ValueError):
    """A config value or flag that cannot be used; the message names the key."""


# The seed's decoder widths: the bottleneck at 1/32, then the stage outputs at 1/16 … 1/2.
SEED_DECODER = (2048, 1024, 512, 256, 64)


@dataclass(frozen=True)
class Config:
    # Data. `data_root=None` means the package's synthetic street scenes.
    data_root: str | None = None
    image_size: tuple[int, int] = (512, 1024)  # (height, width) the network trains at
    synthetic_train: int = 36  # synthetic images in the train split (folds are cut from it)
    synthetic_val: int = 6  # synthetic images in the official-val split
    synthetic_size: tuple[int, int] = (256, 512)  # (height, width) of synthetic PNGs
    skip_bad_samples: bool = False  # skip and count unreadable samples instead of failing
    max_pixels: int = 64_000_000  # images or labels above it are refused from their headers
    # Augmentation (the seed: ±20 % scale, pad, resize, flip, colour jitter).
    scale_jitter: float = 0.2
    color_jitter: float = 0.2
    hflip: bool = True
    # Model.
    pretrained: str = "imagenet"  # imagenet | none | PATH to a ResNet-50 state dict
    dropout: float = 0.0
    # Widths of the bottleneck and the four decoder stages.
    decoder_channels: tuple[int, int, int, int, int] = SEED_DECODER
    # Optimisation (the seed: Adam 1e-4, batch 2, ReduceLROnPlateau(0.5, 2), CE ignore 255).
    epochs: int = 65
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.0
    plateau_metric: str = "val_loss"  # val_loss (min) | miou_low (max)
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    # Cross-validation.
    folds: int = 3
    repeats: int = 1  # repeated K-fold: R independent splits, R × K fold trials
    seed: int = 0
    group_by: str | None = None  # None | "city": keep each city inside one fold
    # Speed: auto = on for CUDA, off on the CPU; on = on the CPU too (see `raycity.speed`).
    amp: str = "auto"  # autocast: bf16 (fp16 + loss scaling on GPUs without native bf16)
    channels_last: str = "auto"  # NHWC layout of the model and its inputs
    cudnn_benchmark: bool = True  # CUDA
    compile: bool = False  # torch.compile the model (inductor, on the CPU too)
    num_workers: int | None = None  # DataLoader workers; None = from the trial's CPU request
    use_cache: bool = True  # read `raycity.data cache` arrays when present

    def __post_init__(self) -> None:
        for key in ("amp", "channels_last"):  # true/false in configs written before `auto`
            object.__setattr__(self, key, switch_value(getattr(self, key)))
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; allowed: {sorted(known)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)

    def replace(self, **changes: Any) -> Config:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}")
        return dataclasses.replace(self, **changes)


def validate(cfg: Config) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: expected {what}")

    need(len(cfg.image_size) == 2 and all(isinstance(v, int) and v >= 32 for v in cfg.image_size),
         "image_size", "two integers ≥ 32 (height, width)")
    need(len(cfg.synthetic_size) == 2 and all(v >= 32 for v in cfg.synthetic_size),
         "synthetic_size", "two integers ≥ 32")
    need(cfg.epochs >= 1, "epochs", "an integer ≥ 1")
    need(cfg.batch_size >= 1, "batch_size", "an integer ≥ 1")
    if cfg.batch_size >= 1 and len(cfg.image_size) == 2:
        # ResNet-50 halves the size 5 times (rounding up): at 32×32 its last stage is 1×1, and
        # BatchNorm in training needs more than one value per channel across the batch
        cells = math.ceil(cfg.image_size[0] / 32) * math.ceil(cfg.image_size[1] / 32)
        need(cfg.batch_size * cells >= 2, "batch_size",
             f"a batch that gives BatchNorm more than one value per channel: at image_size "
             f"{cfg.image_size[0]}x{cfg.image_size[1]} the encoder's last stage is "
             f"{math.ceil(cfg.image_size[0] / 32)}×{math.ceil(cfg.image_size[1] / 32)}; use "
             f"--batch-size 2 or a larger --image-size")
    need(math.isfinite(cfg.lr) and 0 < cfg.lr <= 1, "lr",
         "a finite learning rate in (0, 1] (Adam diverges above 1; the seed uses 1e-4)")
    need(math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay",
         "a finite number ≥ 0")
    need(0.0 <= cfg.dropout < 1.0, "dropout", "a probability in [0, 1)")
    need(len(cfg.decoder_channels) == 5 and all(
        isinstance(v, int) and v >= 2 and v % 2 == 0 for v in cfg.decoder_channels),
        "decoder_channels", "five even integers ≥ 2 (bottleneck, then 1/16, 1/8, 1/4, 1/2)")
    need(0.0 <= cfg.scale_jitter < 1.0, "scale_jitter", "a fraction in [0, 1)")
    need(cfg.color_jitter >= 0, "color_jitter", "a number ≥ 0")
    need(cfg.folds >= 2, "folds", "an integer ≥ 2")
    need(isinstance(cfg.repeats, int) and cfg.repeats >= 1, "repeats", "an integer ≥ 1")
    need(cfg.group_by in (None, "city"), "group_by", "none or 'city'")
    need(cfg.plateau_metric in ("val_loss", "miou_low"), "plateau_metric", "val_loss or miou_low")
    need(0 < cfg.plateau_factor < 1, "plateau_factor", "a number in (0, 1)")
    need(cfg.plateau_patience >= 0, "plateau_patience", "an integer ≥ 0")
    if cfg.data_root is None:
        need(cfg.synthetic_train >= cfg.folds, "synthetic_train",
             f"at least folds={cfg.folds} images")
    need(cfg.synthetic_val >= 1, "synthetic_val", "an integer ≥ 1")
    need(cfg.num_workers is None or cfg.num_workers >= 0, "num_workers", "an integer ≥ 0")
    need(cfg.max_pixels >= 1024, "max_pixels", "an integer ≥ 1024 (pixels of one image)")
    need(bool(cfg.pretrained), "pretrained", "'imagenet', 'none' or a path")
    need(cfg.amp in SWITCH, "amp", "auto, on or off")
    need(cfg.channels_last in SWITCH, "channels_last", "auto, on or off")


# The seed study exactly; `demo` and `smoke` shrink sizes so a CPU finishes, not the recipe.
PRESETS: dict[str, dict[str, Any]] = {
    "seed": dict(image_size=(512, 1024), epochs=65, batch_size=2, lr=1e-4, pretrained="imagenet"),
    # ≤ 8 minutes on 2 CPU cores for all 3 folds, from scratch: a step of this 147 M-parameter
    # model costs ≈ 1 s there whatever the image size, so a small size buys epochs, and 3e-4
    # rises steadily where 1e-3 stalls (measured; see the README's demo section).
    "demo": dict(image_size=(48, 96), epochs=14, batch_size=2, lr=3e-4, pretrained="none",
                 synthetic_train=18, synthetic_val=6, synthetic_size=(256, 512)),
    # Seconds: the whole pipeline, for tests and for trying flags. The ResNet-50 encoder and
    # every stage stay; the decoder is narrow (31 M parameters, not 147 M), so that a fold's
    # state is 0.5 GB on disk, not 2.4 GB: what a CI machine's disk and a laptop's can hold.
    "smoke": dict(image_size=(32, 64), epochs=2, batch_size=2, lr=1e-3, pretrained="none",
                  synthetic_train=6, synthetic_val=3, synthetic_size=(64, 128),
                  decoder_channels=(256, 128, 64, 32, 16)),
}


def preset(name: str, **overrides: Any) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r}: unknown; choose one of {sorted(PRESETS)}")
    return Config(**{**PRESETS[name], **overrides})


def fold_trials(cfg: Config) -> int:
    """How many fold trials a configuration trains: K per repeat."""
    return cfg.folds * cfg.repeats


def heaviest(cfg: Config, overrides: Iterable[dict[str, Any]]) -> Config:
    """The base recipe with the most epochs and the largest batch any configuration of a sweep
    trains with: what ASHA's last rung and the host-memory request must allow for."""
    overrides = list(overrides)
    changes = {}
    for key in ("epochs", "batch_size"):
        values = [int(o[key]) for o in overrides if key in o]
        if values:
            changes[key] = max([getattr(cfg, key), *values])
    return cfg.replace(**changes)


@dataclass(frozen=True)
class RunOptions:
    """Where and how a run executes; may differ between a run and its resume."""

    name: str
    output: str = "results"
    address: str | None = None  # None: start a local Ray; auto | HOST:PORT | ray://HOST:PORT
    storage_path: str | None = None  # shared/remote experiment storage (NFS, s3://, gs://)
    cpus_per_trial: float | None = None  # None: a share from how many trials run at once
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0
    num_cpus: int | None = None  # for a local Ray only
    dashboard: bool = False
    dashboard_host: str = "127.0.0.1"
    ray_logs: bool = False  # Ray's own log lines on the console too (always in <run>/ray.log)
    max_failures: int = 2
    keep_trial_checkpoints: bool = False
    resume: bool = False
    overwrite: bool = False
    mlflow: bool = False  # log to MLflow from the driver (raycity.tracking)
    mlflow_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else <output>/mlflow.db
    mlflow_experiment: str = "raycity"

    @property
    def run_dir(self) -> str:
        return os.path.abspath(os.path.join(self.output, self.name))


def config_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
