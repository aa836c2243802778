"""Shared fixtures: one small Ray for the whole session, generated data, an isolated cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Two xdist workers: the suite is CPU-bound (91 % of both cores busy, measured over a whole run
# from /proc/stat), and a third worker made every test ≈ 1.7 × slower (475 s against 422 s).
# xdist's loadgroup deals the groups with the most tests first: "local" (the readers of the
# Ray-free run and the kill/resume test, 15 items), "smoke" (the readers of the session's smoke
# CV, 10), "sweep" (the readers of the ASHA sweep, 6) and "data" (test_cli_data's module run and
# the optuna sweep killed and resumed, 5), each made once on the worker that reads it; the rest
# fills in as workers free up. Recount when tests move between groups.

# Ray's background work that no test reads — its metrics collection, its event-loop statistics,
# and the idle workers it starts ahead for a first driver — costs CPU the tests' trials need:
# ≈ 0.07 of a core for each idle Ray, half without these, and 4 of 50 core-seconds of
# test_placement (measured on this 2-core machine). Set here, so the CLIs the tests start
# inherit it; raycity itself leaves Ray's defaults alone.
for _name in ("RAY_enable_metrics_collection", "RAY_event_stats",
              "RAY_prestart_worker_first_driver"):
    os.environ.setdefault(_name, "0")
# OpenMP threads that spin after each parallel region, waiting for the next, take the CPU that
# the other xdist worker and the trials beside them need: two processes training with torch's 2
# threads each took 5.9 s of CPU each, 1.8 s when waiting threads sleep (OMP_WAIT_POLICY=PASSIVE;
# the suite: 514 against 544 busy core-s). Set before torch loads, here and in every process the
# tests start. raycity leaves it alone: a trial's threads are its own CPUs (one per CPU granted).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Ray's token authentication, as raycity's entry points set it before Ray loads: a Ray the tests
# start themselves (a multi-node Cluster) must agree with the driver that joins it. It used to
# come from whichever test had first run a CLI in the same worker; the multi-node test dealt
# before any such test had every trial refused ("Missing authorization header").
os.environ.setdefault("RAY_AUTH_MODE", "token")

SHARED_RUNS = {"smoke_run": "smoke", "sweep_run": "sweep", "data_run": "data", "local_run": "local"}
# The two longest tests (≈ 2 min each) ride with a group, so that each worker knows its long one
# from the start: xdist hands a worker its next unit while its last two tests still run, which
# queued the kill/resume test behind the optuna one and left the other worker idle for a minute.
LONG_ALONE = {"test_optuna_sweep_survives_a_kill_and_the_searcher_hears_fold_means": "data",
              "test_kills_signals_moves_copies_and_a_lost_table_all_resume_to_the_same_numbers":
              "local"}
# Within a group, and among the ungrouped tests after the groups, the longest go first.
LONGEST_FIRST = (*LONG_ALONE, "test_multi_node_cluster_with_shared_storage",
                 "test_each_fold_trains_on_the_gpu_ray_granted_it",
                 "test_through_ray_tune_with_a_fake_trainable")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marker into the node id
def pytest_collection_modifyitems(items):
    for item in items:
        groups = {SHARED_RUNS[f] for f in item.fixturenames if f in SHARED_RUNS}
        name = item.originalname
        groups |= {LONG_ALONE[name]} if name in LONG_ALONE else set()
        if groups:
            item.add_marker(pytest.mark.xdist_group("+".join(sorted(groups))))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.originalname, len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """xdist keeps a group together by a suffix on the node id, which pytest 9.2 ignores when
    xdist 3.8 sets it; every worker would then build every shared run. Said in one line, before
    anything runs, rather than found as a slower suite (checked on the tests grouped by name)."""
    for nodeid in ids:
        name = nodeid.split("::")[-1].split("@")[0].split("[")[0]
        if name in LONG_ALONE and not nodeid.endswith(f"@{LONG_ALONE[name]}"):
            pytest.exit(f"{nodeid}: its xdist group was not applied (the pytest and "
                        f"pytest-xdist versions the test extra pins?); every worker would build "
                        f"every shared run", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RAYCITY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)


@pytest.fixture(scope="session")
def ray_session():
    """Ray is started once (2 CPUs, no dashboard) and always shut down."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_cityscapes(tmp_path_factory) -> Path:
    """Six train and two val scenes in the official layout, at 64×128."""
    root = tmp_path_factory.mktemp("cityscapes")
    from raycity.data import write_synthetic_cityscapes  # torch loads after the settings above

    return write_synthetic_cityscapes(root, {"train": 6, "val": 2}, (64, 128), seed=3)


@pytest.fixture
def tree(tmp_path, tiny_cityscapes) -> Path:
    """A copy of `tiny_cityscapes` that a test may damage."""
    root = tmp_path / "cs"
    shutil.copytree(tiny_cityscapes, root)
    return root


SMOKE_EPOCHS = 2
# The GPU recipe's layout runs on the CPU in every real run of the suite: the shared smoke CV,
# the kill/signal/move/resume runs, and the ASHA sweep whose folds pause at
# the rung and resume through Tune all train channels-last, the layout whose Adam moments a
# resume used to lose. bf16 autocast runs in-process (tests/test_speed.py: a compiled fold, the
# fp16 + loss-scaling fold): this CPU has no bf16 convolution kernels, ≈ 9 s a step against
# 3.5 s channels-last fp32. 3 scenes: one training step per fold and epoch.
FORCED_LAYOUT = ["--channels-last", "on", "--synthetic-train", "3"]


@pytest.fixture(scope="session")
def local_run(tmp_path_factory, tiny_cityscapes) -> Path:
    """A smoke CV's run directory written in-process, without Ray (tests/localrun.py): what the
    inference, evaluate, predict and report tests, and the resume-flag check, read."""
    from raycity.config import preset
    from tests.localrun import write_local_run

    cfg = preset("smoke", data_root=str(tiny_cityscapes), epochs=SMOKE_EPOCHS,
                 channels_last="on")
    return write_local_run(cfg, tmp_path_factory.mktemp("local") / "smoke")


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
                            "--mlflow", *FORCED_LAYOUT])
    finally:
        mp.undo()
    (out / "console.txt").write_text(console.getvalue())
    return code, out / "smoke"


@pytest.fixture(scope="session")
def sweep_run(ray_session, tmp_path_factory, tiny_cityscapes):
    out = tmp_path_factory.mktemp("sweeps")
    space = out / "mixed.yaml"
    # grid and random samplers in one space: the case where Tune alone would give folds
    # of one configuration different values
    # and early stopping at epoch 1 of 2, judged on fold means; one configuration at a time,
    # so the order in which they reach the rung (and so the decision) is the same every run
    space.write_text("params:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
                     "  dropout: {grid: [0.0, 0.3]}\nnum_samples: 1\nmetric: miou_full\n"
                     "scheduler:\n  asha: {grace_period: 1, reduction_factor: 2}\n")
    from raycity import sweep

    code = sweep.main(["--space", str(space), "--preset", "smoke", "--epochs", "2",
                       "--folds", "2", "--data-root", str(tiny_cityscapes), "--max-concurrent",
                       "1", "--output", str(out), "--name", "mixed", "--cpus-per-trial", "0.5",
                       "--mlflow", *FORCED_LAYOUT[:2]])  # folds paused at the rung resume
    return code, out / "mixed"
