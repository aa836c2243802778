"""The `--compile` smoke fold in a process of its own: `python -m tests.compiled_fold OUT DATA`.

Inductor's cold compile of the model (training graph, its backward, the evaluation graph) takes
≈ 2.5 min on 2 cores, nearly all of it Python and g++ on one graph; conftest starts this at the
beginning of the session, when the test that reads it is collected, so that it overlaps the
Ray tests, which mostly wait on processes. It runs the real fold recipe: `run_fold` with
`compile=True` under the forced GPU recipe (bf16 autocast, channels-last).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: str, data: str) -> None:
    from raycity.config import preset
    from raycity.data import find_samples, write_synthetic_cityscapes
    from raycity.folds import FoldSplit
    from raycity.training import run_fold

    root = str(write_synthetic_cityscapes(Path(data), {"train": 3, "val": 1}, (64, 128), seed=3))
    cfg = preset("smoke", data_root=root, amp="on", channels_last="on", epochs=1, compile=True)
    keys = [s.key for s in find_samples(root, "train")]
    said: list[dict] = []
    run_fold(cfg, FoldSplit(1, tuple(keys[:2]), tuple(keys[2:3])), root,
             lambda metrics, saved: said.append(metrics), cpus=1)
    plain = [{k: v for k, v in m.items() if isinstance(v, (bool, int, float, str))} for m in said]
    Path(out).write_text(json.dumps(plain))


if __name__ == "__main__":
    main(*sys.argv[1:3])
