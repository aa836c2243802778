"""The one family of the user's mistakes.

Every error a user can fix (a bad flag, file, space, checkpoint, weights or data) derives from
`UserError`: a CLI catches this one type and prints one line, and a trial knows that a retry
cannot fix it (the same input fails the same way), so it is never retried.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal


class UserError(Exception):
    """A mistake in what the user gave us; the message names the flag or file and what was
    expected."""


def error_text(err: BaseException) -> str:
    """An error's own words, or its type where they say nothing: an EOFError has none, and a
    KeyError's are only the key it missed (torch.load of a text file: `KeyError: 174812789`)."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    return f"{type(err).__name__}: {text}" if isinstance(err, KeyError) else text


def brief(err: BaseException, limit: int = 160) -> str:
    """Another library's error in one short line, for inside a message of ours (torch's
    weights-only refusal alone is a page of advice that does not apply here)."""
    text = error_text(err)
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        return "not a tensor file that loads with weights_only=True"
    line = text.splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failure_message(text: object, failures: int = 0) -> str:
    """A failed trial in one line: a worker killed from outside (kill -9, the OOM killer,
    Ray's memory monitor) as such, not Ray's paragraph of common causes."""
    raw = str(text)
    if text is None:  # Tune kept no error: the trial's worker never got to say one
        return "its worker stopped before it reported anything; --resume retries it"
    if "cancelled before it started running" in raw:  # Ray never ran it at all
        return ("Ray cancelled its worker before it started: a cluster without token "
                "authentication refuses this driver's (RAY_AUTH_MODE=token), for one")
    if "OutOfMemoryError" in raw or "memory monitor" in raw:
        return (f"its worker ran out of host memory and was killed ({failures + 1} time(s)); "
                f"lower --batch-size, --num-workers or --cpus-per-trial, then --resume")
    if "ActorDiedError" in raw or "worker process has died" in raw or "ActorUnavailable" in raw:
        return (f"its worker was killed (a signal, or out of memory?) {failures + 1} time(s); "
                f"--resume retries it")
    return short_error(raw)


def short_error(text: object) -> str:
    """The line of a traceback that says what went wrong, without the module path
    ("DataError: …", not "raycity.data.layout.DataError: …"). An error raised in a DataLoader
    worker comes back as the same class with the worker's whole traceback as its message; this
    is its last line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":")[0]
        if "Error" in head or "Exception" in head:
            return line[len(head) - len(head.rsplit(".", 1)[-1]):] if " " not in head else line
    return lines[-1] if lines else "unknown error"


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class StorageError(UserError, OSError):
    """A disk that is full (or read-only) under a file being written: retrying cannot help
    until the user frees space, and `--resume` continues once they have."""

    def __str__(self) -> str:
        return str(self.strerror)


def storage_error(err: OSError, path: str | os.PathLike | None = None) -> StorageError | None:
    """One line naming the file, the disk's free space and what to do, for an `OSError` that
    says the disk is full or read-only; None for any other."""
    if getattr(err, "errno", None) not in FULL:
        return None
    path = str(path or err.filename or "?")
    where, free = os.path.dirname(path) or ".", ""
    while where and not os.path.isdir(where):
        where = os.path.dirname(where)
    try:
        usage = shutil.disk_usage(where or ".")
        free = f"; {usage.free / 2**30:.2f} GiB free of {usage.total / 2**30:.1f} GiB there"
    except OSError:
        pass
    what = "read-only filesystem" if err.errno == errno.EROFS else "no space left on device"
    return StorageError(err.errno, f"writing {path}: {what}{free}; free some space (or move "
                                   f"--output / --storage-path), then --resume the run")


def find_storage_error(err: BaseException) -> StorageError | None:
    """The disk-full error behind `err`, however a library wrapped it."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, StorageError):
            return err
        if isinstance(err, OSError) and (found := storage_error(err)) is not None:
            return found
        err = err.__cause__ or err.__context__
    return None


class Interrupted(BaseException):
    """The run was stopped by a signal; tables are consistent and `--resume` continues it.

    A BaseException, like KeyboardInterrupt: raised from a signal handler anywhere, even inside
    library code that catches Exception, it must reach the CLI."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
