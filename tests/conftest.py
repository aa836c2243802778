"""Shared fixtures: one small Ray for the whole session, generated data, an isolated cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from raycity.data import write_synthetic_cityscapes


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RAYCITY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)


@pytest.fixture(scope="session")
def ray_session():
    """Ray is started once (2 CPUs, no dashboard) and always shut down."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_cityscapes(tmp_path_factory) -> Path:
    """Six train and two val scenes in the official layout, at 64×128."""
    root = tmp_path_factory.mktemp("cityscapes")
    return write_synthetic_cityscapes(root, {"train": 6, "val": 2}, (64, 128), seed=3)


@pytest.fixture
def tree(tmp_path, tiny_cityscapes) -> Path:
    """A copy of `tiny_cityscapes` that a test may damage."""
    root = tmp_path / "cs"
    shutil.copytree(tiny_cityscapes, root)
    return root


SMOKE_EPOCHS = 2
# The GPU recipe's branches (bf16 autocast, channels-last, their host copies and resumes) run
# on the CPU in every real smoke run of the suite; 3 scenes (one training step per fold and
# epoch) because this CPU runs bf16 convolutions on reference kernels, ≈ 9 s a step.
FORCED_GPU_RECIPE = ["--amp", "on", "--channels-last", "on", "--synthetic-train", "3"]


@pytest.fixture(scope="session")
def smoke_run(ray_session, tmp_path_factory):
    """One real smoke CV without --data-root (the synthetic demo path), shared by the tests
    that read what a run leaves behind. Returns (exit code, run dir); what it printed is in
    console.txt beside the run."""
    import contextlib
    import io

    from raycity import cv

    out = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAYCITY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            code = cv.main(["--preset", "smoke", "--epochs", str(SMOKE_EPOCHS), "--output",
                            str(out), "--name", "smoke", "--cpus-per-trial", "0.6",
                            *FORCED_GPU_RECIPE])
    finally:
        mp.undo()
    (out / "console.txt").write_text(console.getvalue())
    return code, out / "smoke"
