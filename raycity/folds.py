"""Deterministic K-fold split of the train split, and its manifest `folds.json`."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from raycity.errors import UserError, brief
from raycity.results import atomic_write_text


class FoldsError(UserError, ValueError):
    """A split that cannot be made, or a folds.json that does not match the data."""


@dataclass(frozen=True)
class FoldSplit:
    """One fold trial's split. `fold` numbers the trials of a run, 1 … repeats × K: with
    repeated K-fold, repeat r holds folds (r-1)·K+1 … r·K, so every (repeat, fold) pair is one
    trial, checkpoint and table key."""

    fold: int  # 1-based, unique in the run
    train: tuple[str, ...]
    val: tuple[str, ...]
    repeat: int = 1  # 1-based


def repeat_seed(seed: int, repeat: int) -> int:
    """The split seed of repeat r: the run's own seed for the first (so that one repeat is
    today's split), then one of its own for each further repeat."""
    return seed if repeat == 1 else seed * 1_000_003 + 7919 * repeat


def make_repeated_folds(keys: Sequence[str], k: int = 3, seed: int = 0,
                        groups: Sequence[str] | None = None, repeats: int = 1) -> list[FoldSplit]:
    """R independent K-fold splits (repeated K-fold), one seed each, groups respected; numbered
    through, repeat by repeat."""
    folds = []
    for repeat in range(1, repeats + 1):
        for f in make_folds(keys, k, repeat_seed(seed, repeat), groups):
            folds.append(FoldSplit((repeat - 1) * k + f.fold, f.train, f.val, repeat))
    return folds


def make_folds(keys: Sequence[str], k: int = 3, seed: int = 0,
               groups: Sequence[str] | None = None) -> list[FoldSplit]:
    """Shuffle with `seed` and deal into k folds; with `groups`, whole groups go to one fold.

    Groups (cities) are dealt largest first to the fold with fewest samples, so folds stay
    balanced while no city is seen in both training and validation.
    """
    group_of = dict(zip(keys, groups)) if groups is not None else {}
    keys = sorted(keys)
    if len(set(keys)) != len(keys):
        raise FoldsError("sample keys must be unique")
    if k < 2 or len(keys) < k:
        raise FoldsError(f"cannot cut {len(keys)} samples into {k} folds (need ≥ 2 folds and "
                         f"≥ 1 sample per fold)")
    rng = random.Random(seed)
    members: list[list[str]] = [[] for _ in range(k)]
    if groups is None:
        shuffled = keys[:]
        rng.shuffle(shuffled)
        for i, key in enumerate(shuffled):
            members[i % k].append(key)
    else:
        by_group: dict[str, list[str]] = {}
        for key in keys:
            by_group.setdefault(group_of[key], []).append(key)
        if len(by_group) < k:
            raise FoldsError(f"--group-by city: {len(by_group)} cities cannot fill {k} folds")
        names = sorted(by_group)
        rng.shuffle(names)
        for name in sorted(names, key=lambda g: -len(by_group[g])):
            min(members, key=len).extend(by_group[name])
    assigned = [sorted(m) for m in members]
    return [FoldSplit(i + 1, tuple(sorted(x for j, m in enumerate(assigned) if j != i for x in m)),
                      tuple(assigned[i])) for i in range(k)]


def save_folds(path: Path, folds: Sequence[FoldSplit], meta: dict) -> None:
    payload = {**meta, "folds": [{"fold": f.fold, "repeat": f.repeat, "train": list(f.train),
                                  "val": list(f.val)} for f in folds]}
    atomic_write_text(path, json.dumps(payload, indent=1))


def load_folds(path: Path) -> tuple[list[FoldSplit], dict]:
    try:
        payload = json.loads(Path(path).read_text())
        folds = [FoldSplit(int(f["fold"]), tuple(f["train"]), tuple(f["val"]),
                           int(f.get("repeat", 1))) for f in payload.pop("folds")]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FoldsError(f"{path}: not a raycity folds.json ({brief(err)})") from err
    return folds, payload
