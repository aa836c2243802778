"""`python -m raycity.sweep --space lr.yaml`: every sampled configuration trained on every fold,
ranked by its fold mean ± std. Writes the CV files plus leaderboard.parquet / leaderboard.md."""

from __future__ import annotations

import argparse

import pandas as pd

from raycity.cli import (
    add_common_args,
    build_config,
    build_options,
    fail,
    interrupted,
    user_errors,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raycity.sweep",
        description="Hyperparameter sweep judged by K-fold cross-validation: each configuration "
                    "drawn from --space runs as K Ray Tune trials with identical values.")
    p.add_argument("--space",
                   help="search space YAML: a path, or a name in search_spaces/ (e.g. lr.yaml)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="configurations to draw per grid point (default: the space's num_samples)")
    add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from raycity.space import SpaceError

    opts = None
    try:
        cfg, explicit, preset_name = build_config(args)
        opts = build_options(args, preset_name)
        from raycity.experiment import run_experiment

        # with --resume, configurations, metric and scheduler state come from the saved run
        variants, scheduler, hparams, metric = [], None, [], "miou_full"
        if not args.resume:
            if not args.space:
                raise SpaceError("--space is required (except with --resume)")
            variants, scheduler, hparams, metric = plan(args, cfg, explicit)
        run_dir, summary = run_experiment("sweep", cfg, opts, variants, hparams=hparams,
                                          metric=metric, scheduler=scheduler, explicit=explicit)
        if summary is None:
            return fail(f"{run_dir}: no trial reported a single epoch")
        write_leaderboard(run_dir, summary)
        from raycity.report import write_report

        write_report(run_dir)
    except (SpaceError, *user_errors()) as err:
        return fail(err)
    except KeyboardInterrupt:
        return interrupted(opts)
    print()
    print((run_dir / "leaderboard.md").read_text())
    print((run_dir / "summary.md").read_text())
    print(f"results: {run_dir}\n  pandas: pd.read_parquet('{run_dir}/leaderboard.parquet')")
    return 1 if (summary["status"] != "ok").any() else 0


def plan(args: argparse.Namespace, cfg, explicit: dict):
    """Space → (variants, scheduler, tuned fields, metric); every error before anything runs."""
    from raycity.experiment import Variant
    from raycity.scheduler import FoldMeanASHA
    from raycity.space import SpaceError, check_against, load_space, sample_configurations

    space = load_space(args.space)
    clash = sorted(set(space.params) & set(explicit))
    if clash:
        raise SpaceError(f"{space.path}: {clash} are tuned by the space and also fixed by a "
                         f"flag; drop the flag or the field")
    if args.num_samples is not None and args.num_samples < 1:
        raise SpaceError("--num-samples must be ≥ 1")
    configurations = sample_configurations(space, args.num_samples)
    check_against(cfg, configurations, space.path)
    width = len(str(len(configurations)))
    variants = [Variant(f"c{i + 1:0{width}d}", values) for i, values in enumerate(configurations)]
    scheduler = None
    if space.scheduler:
        scheduler = FoldMeanASHA(space.metric, "max", folds=cfg.folds, max_t=cfg.epochs,
                                 **space.scheduler)
    print(f"sweep {space.path}: {len(variants)} configurations × {cfg.folds} folds")
    for v in variants:
        print(f"  {v.config_id}: {v.overrides}")
    return variants, scheduler, list(space.params), space.metric


def write_leaderboard(run_dir, summary: pd.DataFrame) -> pd.DataFrame:
    """leaderboard.{parquet,md} and the best configuration's Table 1 as summary.md."""
    from raycity.experiment import RunState
    from raycity.results import (
        atomic_write_parquet,
        atomic_write_text,
        leaderboard,
        leaderboard_markdown,
        table1_markdown,
    )

    state = RunState.load(run_dir)
    values = pd.DataFrame([{"config_id": v.config_id, **v.overrides} for v in state.variants])
    board = leaderboard(summary, state.hparams, values.set_index("config_id"),
                        state.config.epochs, state.metric)
    atomic_write_parquet(board, run_dir / "leaderboard.parquet")
    atomic_write_text(run_dir / "leaderboard.md",
                      leaderboard_markdown(board, state.hparams, state.metric))
    best = board.iloc[0]["config_id"]
    table = table1_markdown(summary[summary["config_id"] == best], state.config.image_size)
    atomic_write_text(run_dir / "summary.md", f"Best configuration: {best}\n\n{table}")
    return board


if __name__ == "__main__":
    raise SystemExit(main())
