"""One process per run directory.

Two `raycity.cv --name twin` started together both saw no `twin/` and both went on; the second
then cleared what the first had written, and both reported success. Two `--resume` of one run
trained the same fold into the same folder. A lock file taken atomically before the run
directory is checked, created or resumed makes the second one stop in one line.

The lock lies beside the run directory (`<output>/.<name>.lock`), so that creating, clearing or
resuming the directory never touches it. It is created with O_CREAT | O_EXCL, atomic on local
filesystems and on NFS v3 and later; it holds the owner's pid and host. A lock whose process no
longer runs on this host is stale and taken over (renamed away first, so that of two processes
finding it stale only one takes it); one from another host is left to the user, who alone can
tell whether that process still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raycity.errors import UserError


class RunLockedError(UserError, RuntimeError):
    """Another process holds the run directory."""


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """Held for as long as a run's driver works in its directory."""

    def __init__(self, run_dir: Path, say: Callable[[str], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.held = False
        self._made: list[Path] = []  # folders made for the lock: gone again if left empty

    def acquire(self) -> None:
        missing = self.path.parent
        while not missing.exists():
            self._made.append(missing)
            missing = missing.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(self._holder())
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise RunLockedError(f"{self.run_dir}: could not take its lock {self.path}")

    def _holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return {"gone": True}
        except (OSError, ValueError):
            return {}  # being written this instant, or damaged

    def _take_over_if_stale(self, holder: dict[str, Any]) -> None:
        if holder.get("gone"):
            return  # released meanwhile: try again
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int) or host != socket.gethostname() or _alive(pid):
            since = holder.get("since")
            when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) \
                if isinstance(since, (int, float)) else ""
            who = f"process {pid} on {host}{when}" if pid else f"another process ({self.path})"
            raise RunLockedError(
                f"{self.run_dir}: in use by {who}; one process per run — wait for it to end, "
                f"or use --name for another run (if that process is gone for good, remove "
                f"{self.path})")
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)  # only one of two takers gets it
        except FileNotFoundError:
            return
        aside.unlink(missing_ok=True)
        self.say(f"{self.run_dir}: took over the lock of process {pid}, which no longer runs")

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                if self._holder().get("pid") == os.getpid():
                    self.path.unlink()
            self.held = False
        for folder in self._made:  # a run refused before it wrote anything leaves nothing
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._made = []

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
