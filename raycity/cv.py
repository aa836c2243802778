"""`python -m raycity.cv`: K-fold cross-validation of the seed model as parallel Ray Tune trials.

Writes results/<name>/{config.json, folds.json, epochs.parquet, summary.parquet, summary.md}
and TensorBoard logs; prints Table 1 at the end.
"""

from __future__ import annotations

import argparse

from raycity.cli import (
    add_common_args,
    build_config,
    build_options,
    fail,
    interrupted,
    keep_token_auth_quietly,
    user_errors,
)
from raycity.tune.driver import Interrupted


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raycity.cv",
        description="Cross-validate the UNet-ResNet50 of the seed study on Cityscapes; each fold "
                    "is a Ray Tune trial. Without --data-root it runs a demo on synthetic scenes.")
    add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    keep_token_auth_quietly()
    args = parser().parse_args(argv)
    opts = None
    try:
        cfg, explicit, preset_name = build_config(args)
        opts = build_options(args, preset_name)
        from raycity.tune.experiment import Variant, run_experiment

        run_dir, summary = run_experiment("cv", cfg, opts, [Variant("cv")], explicit=explicit)
        if summary is None:
            return fail(f"{run_dir}: no fold reported a single epoch")
        from raycity.report import write_report

        write_report(run_dir)
    except user_errors() as err:
        return fail(err)
    except Interrupted as stopped:
        return interrupted(opts, stopped.signum, "python -m raycity.cv")
    except KeyboardInterrupt:  # before the run's own signal handling was in place
        return interrupted(opts, command="python -m raycity.cv")
    print()
    print((run_dir / "summary.md").read_text())
    print(f"results: {run_dir}\n  pandas: pd.read_parquet('{run_dir}/epochs.parquet')\n"
          f"  report: {run_dir}/report.md, figures in {run_dir}/figures/\n"
          f"  tensorboard --logdir {run_dir}/tensorboard")
    failed = summary[summary["status"] != "ok"]
    for row in failed.itertuples():
        print(f"fold {row.fold} {row.status}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
