"""The protocol every fold follows with its files, in one place: `run_fold` and the tests'
stand-in folds both call it, so what is tested is what runs.

1. `finished()`: a fold restarted after it had finished says its last epoch again and trains
   nothing (its end reached the fold's record but not Tune's experiment snapshot of the scheduler);
2. `resume()`: the newest state that loads, and `replay(state)`: the results at the early-
   stopping rungs it has passed, said again for a scheduler that may have missed them;
3. `end_epoch(...)`: the state (synchronously at a rung), the best weights, the epoch's record;
   after the last epoch, everything durable and the fold marked done.

Ray-free; the words `replayed` and `notice` are the result keys a driver reads.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch

from raycity.foldstates import FoldCheckpoints
from raycity.results import BEST_BY

REPLAYED = "replayed"  # a result key: said before, said again after a resume (no new row)
NOTICE = "notice"  # a result key: one line for the user about this fold (e.g. a damaged state)


class FoldSession:
    """One fold's run against its files; without `checkpoints` (a fold kept in memory) every
    step is a no-op."""

    def __init__(self, checkpoints: FoldCheckpoints | None, epochs: int,
                 sync_epochs: Collection[int] = ()) -> None:
        self.checkpoints, self.epochs, self.sync_epochs = checkpoints, epochs, set(sync_epochs)

    def finished(self) -> dict[str, Any] | None:
        """The last result of a fold that had finished, to say again; None: train."""
        if self.checkpoints is None or (done := self.checkpoints.done()) is None:
            return None
        return {**{k: v for k, v in done.items() if k not in self.checkpoints.labels},
                REPLAYED: True}

    def resume(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        return self.checkpoints.resume(map_location=map_location) \
            if self.checkpoints is not None else None

    @property
    def notice(self) -> str | None:
        """What the resume found worth a line (a damaged state deleted), once."""
        return self.checkpoints.notice if self.checkpoints is not None else None

    def replay(self, state: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The results this fold reported at the synchronous epochs (early-stopping rungs) it
        has passed, to be reported again when it resumes.

        A driver killed after a rung's result reached it, but before Tune's next snapshot,
        comes back with a scheduler that never heard it: the fold's siblings would wait at that
        rung for a result this fold, resuming past it, would never send. Where the rung was
        heard, a second hearing changes nothing (a decided rung is not judged again). The
        rung's record is missing when the crash fell between the state and the record (so the
        epoch was never reported): it is written now from the state's own metrics.
        """
        if self.checkpoints is None or state is None:
            return []
        replay = []
        for epoch in sorted(e for e in self.sync_epochs if e <= state["epoch"]):
            metrics = self.checkpoints.recorded(epoch)
            if metrics is None and epoch == state["epoch"]:
                metrics = dict(state["meta"]["metrics"])
                self.checkpoints.record(metrics)
            if metrics is not None:
                replay.append({**metrics, REPLAYED: True})
        return replay

    def end_epoch(self, epoch: int, metrics: dict[str, Any], weights: Callable[[], dict],
                  state: Callable[[], dict], meta: dict[str, Any],
                  sync: bool | None = None) -> str | None:
        """The epoch's state and (if it is the best so far by `miou_low`) weights, written in
        the background — synchronously at a rung, or when `sync` says so — and its record. Adds
        `checkpoint_seconds` / `checkpoint_bytes` to `metrics`; returns the state file that
        became complete (for the scheduler's pointer), if any."""
        if self.checkpoints is None:
            return None
        last = epoch == self.epochs
        save = self.checkpoints.end_of_epoch(
            epoch, metrics[BEST_BY], weights, state, meta, last=last,
            sync=epoch in self.sync_epochs if sync is None else sync)
        if last:  # every write of the fold durable before it says its last epoch
            end = self.checkpoints.close()
            save.seconds += end.seconds
            save.bytes += end.bytes
        metrics.update(checkpoint_seconds=save.seconds, checkpoint_bytes=save.bytes)
        self.checkpoints.record(metrics)
        if last:
            self.checkpoints.mark_done(metrics)
        return save.saved
