"""Seeds derived from integers (seed, fold, epoch, index…), the same in every process and on
every machine: a fold's order and augmentation depend on the run's seed and the fold alone,
never on which worker or restart draws them. Free of torch and torchvision, for whoever needs
only a seed."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, by NumPy's SeedSequence (stable across versions)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))
