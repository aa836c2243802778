"""Placement that obeys Ray, on a local Ray started with fake GPU resources: the device each
trial picks is the GPU Ray granted it. (None granted means the CPU even on a GPU node, and a CPU
fold's memory request: tests/test_resources.py, from what Ray hands a trial.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys

DRIVER = """
import json, sys
import pandas as pd
import ray
from ray import cloudpickle
from tests import standins
cloudpickle.register_pickle_by_value(standins)
ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
from raycity.config import RunOptions, preset
from raycity.tune.experiment import Variant, run_experiment
opts = RunOptions(name="default", output=sys.argv[1], max_failures=0)
lines = []
run_dir, _ = run_experiment("cv", preset("smoke", epochs=1, folds=2), opts, [Variant("cv")],
                            fold_fn=standins.standin_fold, echo=lines.append)
epochs = pd.read_parquet(run_dir / "epochs.parquet").fillna("")
seen = {"device": sorted(epochs["device"]), "gpu_ids": sorted(epochs["gpu_ids"]),
        "plan": [l for l in lines if "trial(s)" in l][0]}
ray.shutdown()
print(json.dumps(seen))
"""


def test_each_fold_trains_on_the_gpu_ray_granted_it(tmp_path):
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    # the default comes from the cluster's GPUs: one per fold; two folds on two GPUs at once
    assert "2 at a time; each 1 CPU(s), 1 GPU(s)" in seen["plan"]
    # each trial sees only the GPU Ray granted it, so it is that process's cuda:0
    assert seen["device"] == ["cuda:0", "cuda:0"]
    assert set(seen["gpu_ids"]) <= {"0", "1"} and "" not in seen["gpu_ids"]
    # and asks for a GPU trial's host memory: its pinned checkpoint buffers (1 CPU: no loader
    # workers), not the weights, gradients, Adam moments and activations a CPU trial holds
    from raycity.config import preset
    from raycity.tune.resources import trial_memory_bytes

    cfg = preset("smoke", epochs=1, folds=2)
    gib = float(re.search(r"([\d.]+) GiB", seen["plan"])[1])
    assert gib == round(trial_memory_bytes(cfg, True, workers=0) / 2**30, 1), seen
