"""`python -m raycity.cv` and `python -m raycity.sweep` with the stand-in fold instead of the
model, for end-to-end tests of search, placement, kill and resume in seconds:
`python -m tests.standin_cli cv|sweep ARGS` takes the same arguments. (No prediction panels:
there is no model to draw them with.)"""

from __future__ import annotations

import functools
import sys

from ray import cloudpickle

import raycity.report
import raycity.tune.experiment
from raycity import cv, sweep
from tests import standins

cloudpickle.register_pickle_by_value(standins)  # Ray's workers cannot import tests/
raycity.tune.experiment.run_experiment = functools.partial(
    raycity.tune.experiment.run_experiment, fold_fn=standins.standin_fold)
raycity.report.write_report = functools.partial(raycity.report.write_report, figures=False)

if __name__ == "__main__":
    raise SystemExit({"cv": cv, "sweep": sweep}[sys.argv[1]].main(sys.argv[2:]))
