"""Files that survive a power loss: written under a temporary name, `fsync`ed, renamed, and
their folder `fsync`ed, so that after a crash the final name holds the whole file or is absent.
On an object store (s3://, gs://) a put is already atomic and there is nothing to sync."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs


def fsync_dir(path: str) -> None:
    """A rename is durable once its folder is synced (POSIX; not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def put_durably(fs: pafs.FileSystem, directory: str, name: str,
                write: Callable[[Any], Any]) -> None:
    fs.create_dir(directory, recursive=True)
    tmp, final = f"{directory}/.{name}.tmp", f"{directory}/{name}"
    if isinstance(fs, pafs.LocalFileSystem):
        with open(tmp, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, final)
        fsync_dir(directory)  # the rename itself
        return
    with fs.open_output_stream(tmp) as stream:  # object stores: a put is atomic
        write(stream)
    fs.move(tmp, final)
