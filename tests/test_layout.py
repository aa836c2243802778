"""Ray at the edges: the core and the outputs import and run without Ray (the GPU machine has
none); only raycity.tune and the sweep/cv drivers need it."""

from __future__ import annotations

import subprocess
import sys

CORE = ["raycity.config", "raycity.constants", "raycity.data", "raycity.data.cache",
        "raycity.folds", "raycity.model", "raycity.metrics", "raycity.engine", "raycity.training",
        "raycity.checkpoint", "raycity.snapshots", "raycity.hostcopy", "raycity.inference",
        "raycity.results", "raycity.figures", "raycity.report", "raycity.evaluate", "raycity.predict"]


def test_core_and_outputs_import_without_ray():
    code = ("import sys\nsys.modules['ray'] = None  # any `import ray` now fails\n"
            + "".join(f"import {m}\n" for m in CORE)
            + "from raycity.training import run_fold, FoldSteps\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_tune_package_is_where_ray_lives():
    code = ("import sys\nsys.modules['ray'] = None\n"
            "try:\n    import raycity.tune.trainable\nexcept ImportError:\n    print('needs ray')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.stdout.strip() == "needs ray", proc.stderr
