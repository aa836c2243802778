"""A fold's training state and best weights, written in the background at a measured interval.

A full state of the seed model (weights + Adam moments) is 1.77 GB; writing it takes seconds,
and a GPU epoch of the seed recipe is ≈ 13 s. Writing it synchronously every epoch — and having
Ray Tune copy it once more — cost ≈ 20 % of such an epoch. Here:

- the state is copied into host buffers allocated once (≈ 0.1 s), and a thread writes them
  while the next epoch trains;
- a new state is started only when the time since the last one began is at least
  1 / `budget` × that write's measured duration, so writing occupies at most `budget` (5 %) of the
  wall time and never queues behind itself; the first state is written after epoch 1;
- the best epoch's weights (by val `miou_low`) are kept exactly: copied to a host buffer when
  they appear and written together with the next state, at a synchronous point, or at the end;
- `sync_epochs` (e.g. early-stopping rungs, after which the trial may be paused or stopped) are
  written before the epoch is reported.

On disk, in `directory`: `state-<epoch>.pt` (at most three: the two newest complete ones, each
made durable before older files go, and the one being written), `best-<epoch>.pt`, and a few
bytes per epoch: `epoch-<epoch>.json` (the metrics, with `labels`) and `done.json` once the fold
has finished — the fold's own record, which a scheduler's or a driver's bookkeeping cannot lose.
A crash loses the training since the newest complete state began: states start at epoch ends at
least 1 / budget × W apart (W the write time), so less than (1 / budget + 1) × W + 1 epoch, the
epoch in progress included. Resuming takes the newest state that loads (a damaged one is deleted
and said, and the previous one tried), whatever a scheduler was told; files a crash left
(temporary files, best weights newer than that state, which will be recomputed) are removed
first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import torch

from raycity.checkpoint import CheckpointError, load_checkpoint
from raycity.errors import brief, error_text
from raycity.foldfiles import BEST, DONE, RECORD, STATE, FoldFiles
from raycity.hostcopy import HostBuffers


@dataclass
class EpochSave:
    """What checkpointing cost this epoch, and the state file that became complete (if any)."""

    seconds: float = 0.0  # spent in the training loop: host copies and waiting for the writer
    bytes: int = 0  # bytes whose writing finished since the last epoch
    saved: str | None = None  # a state file that completed since the last report


class FoldCheckpoints(FoldFiles):
    """Where one fold keeps the state it resumes from and the best weights it ends with."""

    def __init__(self, directory: str, filesystem: pafs.FileSystem | None = None, *,
                 budget: float = 0.05, labels: dict[str, Any] | None = None,
                 keep_states: bool = False) -> None:
        super().__init__(directory, filesystem, labels=labels)
        self.keep_states = keep_states
        self.budget = budget
        self.best_epoch, self.best_score = 0, float("-inf")
        self._best_on_disk = 0  # epoch of the newest best-*.pt written
        self._best: dict | None = None  # host copy of the best weights + metadata
        self._best_buffers, self._state_buffers = HostBuffers(), HostBuffers()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._done: list[tuple[str, int]] = []  # (state file or "", bytes) finished by the thread
        self._last_start = float("-inf")
        self._last_write_s: float | None = None
        # (epoch, best epoch it refers to) of the complete states on disk, oldest first: the
        # newest two are kept, so that a newest one damaged after all still has a predecessor
        self._complete: list[tuple[int, int]] = []
        self.notice: str | None = None  # one line for the user from `resume` (a damaged state)

    def mark_done(self, metrics: dict[str, Any]) -> None:
        """A finished fold is resumed from this record, not from a state: its states (1.8 GB
        each for the seed model; a sweep's finished folds add up) go, unless asked to stay."""
        self._write_json(DONE, {**self.labels, **metrics})
        if not self.keep_states:
            self._prune(STATE, keep=set())
            self._prune(BEST, keep={self.best_epoch})  # those the states referred to, too

    # -- resume -----------------------------------------------------------------------------------
    def resume(self, map_location: str | torch.device = "cpu") -> dict | None:
        """The newest state that loads (None: start from scratch), after removing what a crash
        left behind; the best-so-far bookkeeping continues from it. A state that fails to load
        (cut short, overwritten) is deleted and the previous one tried; `notice` says so."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.directory, allow_not_found=True))
        for info in infos:
            if info.base_name.endswith(".tmp"):
                self._delete(info.base_name)
        state, damaged = None, []
        for _, name in sorted(self._files(STATE).items(), reverse=True):
            try:
                with self.fs.open_input_file(self._path(name)) as stream:
                    state = load_checkpoint(stream, map_location=map_location,
                                            name=self._path(name))
                break
            except (CheckpointError, OSError) as err:
                damaged.append(f"{self._path(name)} ({self._why_damaged(name, err)})")
                self._delete(name)
        epoch = state["epoch"] if state else 0
        if damaged:
            self.notice = (f"damaged state {'; '.join(damaged)} deleted; "
                           + (f"resumed from epoch {epoch}" if state else
                              "no complete state left: the fold restarts from epoch 1"))
        for pattern in (BEST, RECORD):  # written after the state we resume from: recomputed
            for later, name in self._files(pattern).items():
                if later > epoch:
                    self._delete(name)
        if state is not None:
            self.best_epoch = state["best"]["epoch"]
            self.best_score = state["best"]["score"]
            self._best_on_disk = self.best_epoch
            # an older state kept beside it refers to a best epoch no later than its own
            self._complete = [(e, self.best_epoch if e == epoch else -e)
                              for e in sorted(self._files(STATE))][-2:]
        return state

    # -- every epoch ------------------------------------------------------------------------------
    def end_of_epoch(self, epoch: int, score: float, weights: Callable[[], dict],
                     state: Callable[[], dict], meta: dict, *, last: bool = False,
                     sync: bool = False) -> EpochSave:
        """Record the epoch: keep its weights if it is the best so far, start writing a full
        state when one is due, and say what finished writing since the last call."""
        start = time.perf_counter()
        result = EpochSave(saved=None)
        improved = score > self.best_score
        due = not last and (sync or self._state_due())
        if improved or due:
            self._join()  # the buffers about to be overwritten may still be being written
        self._collect(result)
        if improved:
            self.best_epoch, self.best_score = epoch, score
            self._best = {"model": self._best_buffers.copy(weights()), "meta": dict(meta)}
        if due:
            copied = self._state_buffers.copy(
                {**state(), "best": {"epoch": self.best_epoch, "score": self.best_score}})
            self._sync_cuda()
            self._start(self._job(epoch, copied))
            if sync:
                self._join()
                self._collect(result)
        elif improved:
            self._sync_cuda()
        result.seconds = time.perf_counter() - start
        return result

    def close(self) -> EpochSave:
        """At the fold's end: the best weights on disk, every write finished."""
        start = time.perf_counter()
        self._join()
        result = EpochSave()
        self._collect(result)
        if self._best is not None and self._best_on_disk != self.best_epoch:
            result.bytes += self._write_best()
            # the state a resume would start from still needs the best weights it refers to
            self._prune(BEST, keep=self._bests_needed())
        result.seconds = time.perf_counter() - start
        return result

    # -- the writer -------------------------------------------------------------------------------
    def _state_due(self) -> bool:
        if self._thread is not None and self._thread.is_alive():
            return False  # never queue behind a write; the next epoch will do
        if self._last_write_s is None:
            return True  # the first state: also measures what writing costs here
        return time.perf_counter() - self._last_start >= self._last_write_s / self.budget

    def _write_best(self) -> int:
        nbytes = self._write(f"best-{self.best_epoch:06d}.pt", self._best)
        self._best_on_disk = self.best_epoch
        return nbytes

    def _bests_needed(self, best_epoch: int | None = None) -> set[int]:
        """The best weights the complete states refer to (a negative entry: some epoch up to
        that state's, not known without loading it), and the current best."""
        keep = {self.best_epoch if best_epoch is None else best_epoch}
        for _, best in self._complete:
            keep |= {best} if best >= 0 else {e for e in self._files(BEST) if e <= -best}
        return keep

    def _job(self, epoch: int, copied: dict) -> Callable[[], None]:
        write_best = self._best is not None and self._best_on_disk != self.best_epoch
        best_epoch = self.best_epoch

        def job() -> None:
            began = time.perf_counter()
            nbytes = self._write_best() if write_best else 0
            name = f"state-{epoch:06d}.pt"
            nbytes += self._write(name, copied)
            # Only now that the new state is durable may older files go. The previous complete
            # state stays (with the best weights it refers to) until the next one is: at most
            # three full states exist at any moment, two complete and one being written.
            self._complete = [*self._complete[-1:], (epoch, best_epoch)]
            self._prune(STATE, keep={e for e, _ in self._complete})
            self._prune(BEST, keep=self._bests_needed(best_epoch))
            self._last_write_s = time.perf_counter() - began
            self._done.append((name, nbytes))

        return job

    def _start(self, job: Callable[[], None]) -> None:
        def run() -> None:
            try:
                job()
            except BaseException as err:  # surfaced in the training thread at the next epoch
                self._error = err

        self._last_start = time.perf_counter()
        self._thread = threading.Thread(target=run, name="raycity-checkpoint", daemon=True)
        self._thread.start()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _collect(self, result: EpochSave) -> None:
        if self._thread is not None and not self._thread.is_alive():
            self._join()
        while self._done:
            name, nbytes = self._done.pop(0)
            result.saved = name
            result.bytes += nbytes

    def _why_damaged(self, name: str, err: Exception) -> str:
        """The loader's own reason and the file's size (0 bytes: a power loss), without the
        file's name again: the notice names it."""
        if isinstance(err, CheckpointError):
            reason = err.reason
        else:
            cause = err.__cause__ or err
            reason = error_text(cause)
        try:
            info = self.fs.get_file_info(self._path(name))
            size = f"{info.size} bytes: " if info.type == pafs.FileType.File else ""
        except OSError:
            size = ""
        return size + brief(ValueError(reason), 80)

    @staticmethod
    def _sync_cuda() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the non-blocking device → host copies must have landed
