"""Checkpoints that explain themselves: weights plus the config, fold and metrics that made them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import torch

from raycity.constants import NUM_CLASSES
from raycity.errors import UserError, brief, error_text

ARCH = "UNetResNet50"
FILENAME = "checkpoint.pt"


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable, or of another model. `reason` is the message
    without the file's name, for a caller that names the file itself."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def load_checkpoint(path: str | Path | BinaryIO,
                    map_location: str | torch.device = "cpu", *,
                    name: str | None = None) -> dict[str, Any]:
    """Load with `weights_only=True` and check it is one of ours before anyone uses it.

    `path` may also be an open binary stream (e.g. from a pyarrow filesystem); `name` is then
    the file that messages name (a stream's repr says nothing to a user).
    """
    if isinstance(path, (str, Path)):
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found", reason="checkpoint not found")
    label = name or str(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{label}: not a loadable raycity checkpoint ({brief(err)})",
                              reason=error_text(err)) from err
    meta = state.get("meta", {}) if isinstance(state, dict) else {}
    if meta.get("arch") != ARCH or "model" not in state:
        reason = f"not a {ARCH} checkpoint (arch={meta.get('arch')!r})"
        raise CheckpointError(f"{label}: {reason}", reason=reason)
    if meta.get("num_classes") != NUM_CLASSES:
        reason = f"trained for {meta.get('num_classes')} classes, raycity evaluates {NUM_CLASSES}"
        raise CheckpointError(f"{label}: {reason}", reason=reason)
    return state
