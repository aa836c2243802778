"""A fold's files in its trial's storage, and its journal: the few bytes per epoch
(`epoch-<epoch>.json`, and `done.json` once the fold has finished) that a scheduler's or a
driver's bookkeeping cannot lose, and from which a lost table is rebuilt. `FoldCheckpoints`
(foldstates.py) adds the states and best weights written beside them."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs
import torch

from raycity.durable import put_durably
from raycity.errors import storage_error
from raycity.hostcopy import tensor_bytes

STATE_DIR = "raycity"  # inside each trial's storage folder: state-*.pt, best-*.pt, records
STATE = re.compile(r"^state-(\d+)\.pt$")
BEST = re.compile(r"^best-(\d+)\.pt$")
RECORD = re.compile(r"^epoch-(\d+)\.json$")
DONE = "done.json"


class FoldFiles:
    """One fold's folder: its files by kind and epoch, durable writes, its epoch records."""

    def __init__(self, directory: str, filesystem: pafs.FileSystem | None = None, *,
                 labels: dict[str, Any] | None = None) -> None:
        self.fs = filesystem or pafs.LocalFileSystem()
        self.directory = directory.rstrip("/")
        self.labels = labels or {}  # written into every record (e.g. which configuration)

    # -- files ------------------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return f"{self.directory}/{name}"

    def _files(self, pattern: re.Pattern) -> dict[int, str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.directory, allow_not_found=True))
        return {int(m.group(1)): i.base_name for i in infos
                if i.type == pafs.FileType.File and (m := pattern.match(i.base_name))}

    def _put(self, name: str, write: Callable[[Any], Any]) -> None:
        """Written under a temporary name, made durable, then renamed: a reader never sees half
        a file, and after a power loss the new name holds the whole file or is absent. (The
        directory is made here, not on construction: reading a fold's files creates nothing.)"""
        try:
            put_durably(self.fs, self.directory, name, write)
        except OSError as err:
            self._delete(f".{name}.tmp")
            if (full := storage_error(err, self._path(name))) is not None:
                raise full from err
            raise

    def _write(self, name: str, obj: Any) -> int:
        self._put(name, lambda stream: torch.save(obj, stream))
        return tensor_bytes(obj)

    def _delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._path(name))

    def _write_json(self, name: str, obj: Any) -> None:
        self._put(name, lambda stream: stream.write(json.dumps(obj, default=float).encode()))

    def _read_json(self, name: str) -> Any:
        with self.fs.open_input_stream(self._path(name)) as stream:
            return json.loads(stream.read())

    def record(self, metrics: dict[str, Any]) -> None:
        """The epoch's metrics, durably, beside the states."""
        self._write_json(f"epoch-{int(metrics['epoch']):06d}.json", {**self.labels, **metrics})

    def drop_states(self) -> None:
        """A fold that will never resume (stopped by early stopping, or its run ended): its
        states go, and of its best weights only the newest, the fold's best, stays."""
        self._prune(STATE, keep=set())
        best = self._files(BEST)
        self._prune(BEST, keep={max(best)} if best else set())

    def done(self) -> dict[str, Any] | None:
        """The last epoch's metrics if this fold has finished (a restarted trial need not train)."""
        try:
            return self._read_json(DONE)
        except (FileNotFoundError, OSError, ValueError):
            return None

    def recorded(self, epoch: int) -> dict[str, Any] | None:
        """The metrics this fold recorded for `epoch` (without the labels), if it did."""
        try:
            record = self._read_json(f"epoch-{epoch:06d}.json")
        except (FileNotFoundError, OSError, ValueError):
            return None
        return {k: v for k, v in record.items() if k not in self.labels}

    def records(self) -> list[dict[str, Any]]:
        return [self._read_json(name) for name in self._files(RECORD).values()]

    def best_file(self) -> str | None:
        """Path of the newest best weights on disk (after `close`, the fold's best epoch)."""
        best = self._files(BEST)
        return self._path(best[max(best)]) if best else None

    def _prune(self, pattern: re.Pattern, keep: set[int]) -> None:
        for epoch, name in self._files(pattern).items():
            if epoch not in keep:
                self._delete(name)
