"""Shared fixtures: one small Ray for the whole session, generated data, an isolated cache."""

from __future__ import annotations

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
