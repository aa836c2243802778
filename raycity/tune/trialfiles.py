"""A finished trial's files in its storage: its best model exported beside the run's tables,
and its states dropped once no resume can need them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raycity.foldfiles import STATE_DIR
from raycity.foldstates import FoldCheckpoints
from raycity.run import RunDir, RunState


def export_best(run_dir: Path, state: RunState, key: tuple[str, int], result: Any) -> None:
    """The fold's best weights (with their config, fold, epoch and metrics), written by the trial
    into its storage, as checkpoints/[<config>_]fold<k>.pt."""
    import pyarrow.fs

    fs = result.filesystem
    best = FoldCheckpoints(f"{result.path}/{STATE_DIR}", fs).best_file()
    if best is None:
        return
    target = RunDir(run_dir).checkpoint(key[1], None if state.kind == "cv" else key[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:  # on the same disk, a second name for the file (590 MB not copied, not stored twice)
        if not isinstance(fs, pyarrow.fs.LocalFileSystem):
            raise OSError("remote storage")
        os.link(best, tmp)
    except OSError:
        pyarrow.fs.copy_files(best, str(tmp), source_filesystem=fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
    os.replace(tmp, target)


def drop_trial_checkpoints(result: Any) -> None:
    """The state files (1.8 GB each: weights + Adam state), the best weights (exported) and
    Tune's pointers exist to resume; once every fold has finished they are only disk. The
    folds' epoch records (a few bytes each) stay."""
    import pyarrow.fs

    fs = result.filesystem
    selector = pyarrow.fs.FileSelector(result.path, allow_not_found=True, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            fs.delete_dir_contents(info.path, missing_dir_ok=True)
            fs.delete_dir(info.path)
        elif info.type == pyarrow.fs.FileType.File and info.path.endswith(".pt") and \
                f"/{STATE_DIR}/" in info.path:
            fs.delete_file(info.path)
