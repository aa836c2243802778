"""Hostile or careless input: bombs refused in bounded memory, one process per run directory,
a full disk in one line, recipes that cannot train refused before anything launches."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import pytest

from raycity import cv, sweep
from raycity.config import ConfigError, preset
from raycity.data.layout import DataError, check_pairs, find_samples, read_sample
from raycity.errors import StorageError
from raycity.foldstates import FoldCheckpoints
from raycity.runlock import RunLock, RunLockedError, lock_path
from raycity.tune.space import SpaceError, load_space
from tests.test_user_errors import one_line

BOMB = """\
a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
params: {lr: {grid: *g}}
"""


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(SpaceError, match="alias .* refused"):
        load_space(str(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5 * 2**20 and time.perf_counter() - start < 1.0


def test_a_huge_yaml_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("params: {lr: {grid: [" + "0.1, " * 100_000 + "0.1]}}\n")
    with pytest.raises(SpaceError, match="bytes; a search space is at most"):
        load_space(str(path))


def test_numbers_in_scientific_notation_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("params:\n  lr: {loguniform: [1e-5, 3E-3]}\n  dropout: {grid: [0, 1e-1]}\n")
    space = load_space(str(path))
    assert space.specs["lr"] == ("loguniform", [1e-5, 3e-3])
    assert space.specs["dropout"] == ("grid", [0.0, 0.1])


def test_a_plan_above_the_bound_is_refused_with_its_count(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    values = ", ".join(f"{v / 1000:.4f}" for v in range(1, 1001))
    path.write_text(f"params:\n  lr: {{grid: [{values}]}}\n"
                    f"  dropout: {{grid: [{values.replace('1.0000', '0.9990')}]}}\n")
    code = sweep.main(["--space", str(path), "--preset", "smoke", "--output",
                       str(tmp_path / "out")])
    line = one_line(capsys)
    assert code == 2 and "1000000 configurations" in line and "--max-configurations" in line
    assert not (tmp_path / "out").exists()


def test_an_asha_grace_period_that_reaches_no_rung_is_refused(tmp_path, capsys):
    path = tmp_path / "asha.yaml"
    path.write_text("params: {lr: {grid: [1e-4, 1e-3]}}\n"
                    "scheduler: {asha: {grace_period: 2, reduction_factor: 2}}\n")
    code = sweep.main(["--space", str(path), "--preset", "smoke", "--epochs", "2", "--output",
                       str(tmp_path / "out")])
    line = one_line(capsys)
    assert code == 2 and "grace_period 2" in line and "last epoch (2)" in line


def png_header_only(path, width: int, height: int, colour: int) -> None:
    """A PNG that declares `width`×`height` in a few bytes, as a decompression bomb does."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)
    path.write_bytes(data)


def test_a_decompression_bomb_is_refused_from_its_header(tree, tmp_path, capsys):
    sample = find_samples(tree, "train")[0]
    png_header_only(sample.image_path, 30000, 30000, 2)
    png_header_only(sample.label_path, 30000, 30000, 0)
    with pytest.raises(DataError, match="30000×30000 pixels .* above the limit"):
        check_pairs([sample])
    tracemalloc.start()
    with pytest.raises(DataError, match="refused before decoding"):
        read_sample(sample)  # a trial, evaluate or predict: also before decoding
    assert tracemalloc.get_traced_memory()[1] < 2**20
    tracemalloc.stop()
    code = cv.main(["--preset", "smoke", "--data-root", str(tree), "--output",
                    str(tmp_path / "out")])
    line = one_line(capsys)
    assert code == 2 and str(sample.image_path) in line and "--max-pixels" in line
    check_pairs([sample], max_pixels=30000 * 30000)  # a genuine large image: the flag


def test_a_recipe_whose_bottleneck_batch_norm_sees_one_value_is_refused():
    with pytest.raises(ConfigError, match="batch_size=1.*BatchNorm"):
        preset("smoke", batch_size=1, image_size=(32, 32))
    preset("smoke", batch_size=1, image_size=(32, 64))  # 1×2 values per channel: trains
    preset("smoke", batch_size=2, image_size=(32, 32))


def test_one_process_per_run_directory(tmp_path):
    run_dir = tmp_path / "twin"
    said = []
    first = RunLock(run_dir, said.append)
    first.acquire()
    with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
        RunLock(run_dir).acquire()
    first.release()
    assert not lock_path(run_dir).exists()
    RunLock(run_dir).acquire()  # free again


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket

    lock_path(run_dir).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    said = []
    with RunLock(run_dir, said.append) as lock:
        assert lock.held and json.loads(lock_path(run_dir).read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"process {dead}" in said[0] and "no longer runs" in said[0]


def test_a_second_cv_on_a_held_run_is_one_line_and_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "twin").mkdir(parents=True)
    (out / "twin" / "config.json").write_text("{}")  # what the first run wrote so far
    with RunLock(out / "twin"):
        code = cv.main(["--preset", "smoke", "--output", str(out), "--name", "twin",
                        "--overwrite"])
    line = one_line(capsys)
    assert code == 2 and "in use by process" in line
    assert (out / "twin" / "config.json").read_text() == "{}"


def test_a_full_disk_under_a_state_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import raycity.foldfiles as foldfiles

    ck = FoldCheckpoints(str(tmp_path / "fold"))

    def full(fs, directory, name, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(foldfiles, "put_durably", full)
    with pytest.raises(StorageError) as err:
        ck.record({"epoch": 1})
    message = str(err.value)
    assert "epoch-000001.json" in message and "no space left" in message
    assert "GiB free" in message and "--resume" in message


def test_a_full_disk_under_the_drivers_tables_ends_in_one_line(capsys):
    """However a library wraps it (Tune re-raises callback errors), the CLI says it once."""
    from raycity.cli import guarded

    def run(cfg, explicit, opts):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/results/x/epochs.parquet")
        except OSError as err:
            raise RuntimeError("a callback failed") from err

    args = cv.parser().parse_args(["--preset", "smoke", "--output", "/tmp"])
    assert guarded(args, "python -m raycity.cv", run) == 2
    line = one_line(capsys)
    assert "/results/x/epochs.parquet: no space left on device" in line


def test_more_loader_workers_than_a_fold_has_cpus_are_refused():
    from raycity.run import RunError
    from raycity.tune.experiment import check_workers
    from raycity.tune.resources import TrialPlan

    plan = TrialPlan(cpus=2, gpus=0, memory=2**30, concurrent=1)
    with pytest.raises(RunError, match="--num-workers 100: each fold gets 2 CPU.*at most 2"):
        check_workers(preset("smoke", num_workers=100), plan)
    check_workers(preset("smoke", num_workers=2), plan)
    check_workers(preset("smoke"), plan)


def test_a_second_signal_is_absorbed_and_a_third_ends_at_once_in_one_line():
    import signal

    from raycity.tune.driver import Interrupted, StopSignals

    said, ended = [], []
    stop = StopSignals(say=said.append, end=ended.append)
    stop.in_tune = True  # Tune is saving its state after the first
    stop._handle(signal.SIGTERM, None)
    assert stop.signum == signal.SIGTERM and not said
    stop._handle(signal.SIGTERM, None)  # `timeout -k`, Kubernetes: absorbed, no traceback
    assert len(said) == 1 and "already stopping" in said[0] and not ended
    stop._handle(signal.SIGINT, None)
    assert len(said) == 2 and "continue with --resume" in said[1] and ended == [143]
    outside = StopSignals(say=said.append, end=ended.append)
    with pytest.raises(Interrupted):
        outside._handle(signal.SIGHUP, None)  # a closed terminal stops like SIGTERM
    outside._handle(signal.SIGHUP, None)  # during the clean-up that follows: absorbed
    assert signal.SIGHUP in StopSignals.SIGNALS


def test_the_interrupted_line_for_sighup_says_how_to_resume(tmp_path, capsys):
    import signal

    from raycity.cli import interrupted
    from raycity.config import RunOptions

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    code = interrupted(RunOptions(name="run", output=str(tmp_path)), signal.SIGHUP)
    line = capsys.readouterr().err.strip()
    assert code == 129 and "interrupted (SIGHUP)" in line and "--resume" in line


def test_storage_that_cannot_be_reached_is_refused_in_seconds(tmp_path, monkeypatch):
    import pyarrow.fs

    from raycity.run import RunError
    from raycity.tune.driver import probe_storage

    probe_storage(str(tmp_path / "shared"))  # a writable folder passes
    assert not list((tmp_path / "shared").iterdir())  # and keeps nothing of the probe
    with pytest.raises(RunError, match="--storage-path /proc/raycity: cannot write there"):
        probe_storage("/proc/raycity")

    class Hangs:  # a client that retries an unreachable endpoint for minutes
        @staticmethod
        def from_uri(uri):
            time.sleep(60)

    monkeypatch.setattr(pyarrow.fs, "FileSystem", Hangs)
    start = time.perf_counter()
    with pytest.raises(RunError, match="no answer in 0.5 s"):
        probe_storage("s3://bucket/runs", timeout_s=0.5)
    assert time.perf_counter() - start < 5


def test_a_worker_killed_from_outside_is_one_line_not_rays_paragraph():
    from raycity.errors import failure_message

    ray_text = ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing "
                "this task.\n\tclass_name: ImplicitFunc\nThe actor is dead because its worker "
                "process has died. Worker exit type: SYSTEM_ERROR\nSome common causes include…")
    line = failure_message(ray_text, failures=2)
    assert line == "its worker was killed (a signal, or out of memory?) 3 time(s); --resume " \
                   "retries it"
    assert "host memory" in failure_message("ray.exceptions.OutOfMemoryError: Task was killed "
                                            "due to the node running low on memory.")
    assert failure_message("Traceback…\nDataError: x.png: bad") == "DataError: x.png: bad"
    # a worker that never ran (seen against a cluster started without token authentication)
    never = ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this "
             "task.\nThe actor never ran - it was cancelled before it started running.")
    assert "token authentication" in failure_message(never)
    assert failure_message(None) == ("its worker stopped before it reported anything; --resume "
                                     "retries it")
