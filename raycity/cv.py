"""`python -m raycity.cv`: K-fold cross-validation of the seed model as parallel Ray Tune trials.

Writes results/<name>/{config.json, folds.json, epochs.parquet, summary.parquet, summary.md}
and TensorBoard logs; prints Table 1 at the end.
"""

from __future__ import annotations

import argparse
from typing import Any

from raycity.cli import add_common_args, fail, guarded, keep_token_auth_quietly, tracker_for
from raycity.config import Config, RunOptions


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raycity.cv",
        description="Cross-validate the UNet-ResNet50 of the seed study on Cityscapes; each fold "
                    "is a Ray Tune trial. Without --data-root it runs a demo on synthetic scenes.")
    add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    keep_token_auth_quietly()
    return guarded(parser().parse_args(argv), "python -m raycity.cv", cross_validate)


def cross_validate(cfg: Config, explicit: dict[str, Any], opts: RunOptions) -> int:
    from raycity.report import write_report
    from raycity.run import RunDir
    from raycity.tune.experiment import Variant, run_experiment

    tracker = tracker_for(opts)
    run_dir, summary = run_experiment("cv", cfg, opts, [Variant("cv")], explicit=explicit,
                                      tracker=tracker)
    if summary is None:
        return fail(f"{run_dir}: no fold reported a single epoch")
    write_report(run_dir)
    if tracker is not None:
        tracker.finish(summary)
    print()
    files = RunDir(run_dir)
    print(files.summary_md.read_text())
    print(f"results: {run_dir}\n  pandas: pd.read_parquet('{files.epochs}')\n"
          f"  report: {files.report}, figures in {files.figures}/\n"
          f"  tensorboard --logdir {files.tensorboard}")
    failed = summary[summary["status"] != "ok"]
    return 1 if len(failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
