"""`python -m raycity.sweep --space lr.yaml`: configurations trained on every fold and ranked by
their fold mean ± std — drawn up front (random), laid on a grid (grid), or proposed one at a
time by Optuna's TPE from the fold means of those already finished (optuna). Writes the CV files
plus leaderboard.parquet / leaderboard.md, searcher.json and figures/sweep.png."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from raycity.cli import add_common_args, fail, guarded, keep_token_auth_quietly, tracker_for
from raycity.config import Config, RunOptions, fold_trials, heaviest
from raycity.run import RunDir

if TYPE_CHECKING:
    from raycity.run import RunState

SEARCHES = ("random", "grid", "optuna")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raycity.sweep",
        description="Hyperparameter sweep judged by K-fold cross-validation: each configuration "
                    "runs as K Ray Tune trials with identical values and is judged by its fold "
                    "mean.")
    p.add_argument("--space",
                   help="search space YAML: a path, or a name in search_spaces/ (e.g. lr.yaml)")
    p.add_argument("--search", choices=SEARCHES, default=None,
                   help="random: draws made up front; grid: every listed value, drawn domains "
                        "cut into points; optuna: TPE proposes each next configuration from the "
                        "fold means of the finished ones (default: the space's `search:`, else "
                        "random if it draws values, grid if it only lists them)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="random: draws per grid point; grid: cells of the drawn part; optuna: "
                        "configurations (default: the space's num_samples)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="configurations in flight at once (default: enough to keep every trial "
                        "slot of the cluster busy); fewer lets a model-based search learn more")
    p.add_argument("--max-configurations", type=int, default=None,
                   help="refuse a plan of more configurations than this (default: 10000)")
    add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    keep_token_auth_quietly()
    args = parser().parse_args(argv)
    return guarded(args, "python -m raycity.sweep", functools.partial(run_sweep, args))


def run_sweep(args: argparse.Namespace, cfg: Config, explicit: dict[str, Any],
              opts: RunOptions) -> int:
    from raycity.report import write_report
    from raycity.tune.experiment import run_experiment

    if args.resume:
        fixed = [flag for flag, value in (("--space", args.space), ("--search", args.search),
                                          ("--num-samples", args.num_samples),
                                          ("--max-concurrent", args.max_concurrent),
                                          ("--max-configurations", args.max_configurations))
                 if value is not None]
        if fixed:
            from raycity.tune.space import SpaceError

            raise SpaceError(f"--resume {args.resume}: {', '.join(fixed)} cannot change "
                             f"(the search continues as it started); drop them")
    plan_ = resumed_plan(Path(opts.run_dir)) if args.resume else plan(args, cfg, explicit)
    tracker = tracker_for(opts)
    run_dir, summary = run_experiment("sweep", cfg, opts, plan_["variants"],
                                      hparams=plan_["hparams"], metric=plan_["metric"],
                                      scheduler=plan_["scheduler"], search=plan_["search"],
                                      explicit=explicit, tracker=tracker)
    if summary is None:
        return fail(f"{run_dir}: no trial reported a single epoch")
    board = write_leaderboard(run_dir, summary)
    write_report(run_dir)
    if tracker is not None:
        tracker.finish(summary, board)
    print()
    files = RunDir(run_dir)
    print(files.leaderboard_md.read_text())
    print(files.summary_md.read_text())
    print(f"results: {run_dir}\n  pandas: pd.read_parquet('{files.leaderboard}')\n"
          f"  search: {files.sweep_figure}")
    return 1 if summary["status"].str.startswith("failed").any() else 0


def plan(args: argparse.Namespace, cfg, explicit: dict) -> dict:
    """Space → variants, search, scheduler, tuned fields, metric; every error before anything
    runs."""
    from raycity.run import Variant
    from raycity.tune.searcher import config_name
    from raycity.tune.space import (
        MAX_CONFIGURATIONS,
        SpaceError,
        check_against,
        check_plan_size,
        load_space,
    )

    if not args.space:
        raise SpaceError("--space is required (except with --resume)")
    space = load_space(args.space)
    clash = sorted(set(space.params) & set(explicit))
    if clash:
        raise SpaceError(f"{space.path}: {clash} are tuned by the space and also fixed by a "
                         f"flag; drop the flag or the field")
    for flag, value in (("--num-samples", args.num_samples),
                        ("--max-concurrent", args.max_concurrent)):
        if value is not None and value < 1:
            raise SpaceError(f"{flag} {value}: expected an integer ≥ 1")
    check_plan_size(space, args.search or space.method, args.num_samples, fold_trials(cfg),
                    args.max_configurations or MAX_CONFIGURATIONS)
    search, drawn, scheduler = searching(space, args.search, args.num_samples,
                                         args.max_concurrent, cfg)
    if scheduler is not None and not scheduler.rungs:
        last = heaviest(cfg, drawn or space.extremes()).epochs
        raise SpaceError(f"{space.path}: scheduler.asha.grace_period "
                         f"{space.scheduler['grace_period']}: no early-stopping rung lies below "
                         f"the last epoch ({last}); use a grace_period below the epochs, or "
                         f"drop the scheduler")
    # every configuration (for optuna: every value at the limits of its domain) must make a
    # valid Config before anything launches
    check_against(cfg, drawn or space.extremes(), space.path)
    variants = [Variant(config_name(i + 1, len(drawn)), values) for i, values in enumerate(drawn)]
    print(f"sweep {space.path}: {search.method} search, {search.configurations} configurations "
          f"× {fold_trials(cfg)} folds" + (f" ({cfg.repeats} repeats of {cfg.folds})"
                                            if cfg.repeats > 1 else ""))
    for v in variants:
        print(f"  {v.config_id}: {v.overrides}")
    return {"variants": variants, "hparams": list(space.params), "metric": space.metric,
            "scheduler": scheduler, "search": search}


def searching(space, method: str | None, num_samples: int | None, max_concurrent: int | None,
              cfg) -> tuple:
    """(search plan, configurations drawn up front, fold-mean ASHA or None) for a space."""
    from raycity.tune.scheduler import FoldMeanASHA
    from raycity.tune.searcher import plan_search

    search, drawn = plan_search(space, method, num_samples, max_concurrent)
    # a tuned `epochs`: the last rung lies below the longest configuration's end
    max_t = heaviest(cfg, drawn or space.extremes()).epochs
    scheduler = FoldMeanASHA(space.metric, "max", folds=fold_trials(cfg), max_t=max_t,
                             **space.scheduler) if space.scheduler else None
    return search, drawn, scheduler


def resumed_plan(run_dir: Path) -> dict:
    """--resume: the search and scheduler as the run was started with, rebuilt from run.json.
    Ray Tune's saved state (what the searcher and scheduler had heard) wins where there is one;
    these start the search of a sweep stopped before Tune had saved anything."""
    from raycity.run import RunDir
    from raycity.tune.space import parse_space

    plan_ = {"variants": [], "search": None, "scheduler": None, "hparams": [],
             "metric": "miou_full"}
    files = RunDir(run_dir)
    if not files.is_run():
        return plan_  # run_experiment says what is missing
    state = files.state()
    if not state.search.get("space"):
        return plan_
    space = parse_space(state.search["space"], str(files.run_json))
    plan_["search"], _, plan_["scheduler"] = searching(
        space, state.search["method"], state.search.get("num_samples"),
        state.search.get("max_concurrent"), state.config)
    return plan_


def tuned_values(state: RunState, epochs: pd.DataFrame, told: list[dict]) -> pd.DataFrame:
    """config_id → the values each configuration was trained with (its hp_* columns): from the
    epochs where it has any, else from what the searcher proposed or the variants listed — a
    configuration whose every fold failed before its first epoch still has its row."""
    from raycity.runtables import hp_column, tuned

    values = {v.config_id: tuned(state, v.overrides) for v in state.variants}
    values.update({r["config_id"]: tuned(state, r["values"]) for r in told})
    frame = pd.DataFrame.from_dict(values, orient="index",
                                   columns=[hp_column(h) for h in state.hparams])
    columns = list(frame.columns)
    if len(epochs) and all(c in epochs for c in columns):
        frame = epochs.groupby("config_id")[columns].first().combine_first(frame)
    return frame


def write_leaderboard(run_dir: Path, summary: pd.DataFrame) -> pd.DataFrame:
    """leaderboard.{parquet,md}, the best configuration's Table 1 as summary.md, the search as
    figures/sweep.png and TensorBoard's hparams view."""
    from raycity.comparison import compare, comparison_markdown
    from raycity.data.layout import first_label_size
    from raycity.figures import sweep_figure
    from raycity.results import (
        NothingRankedError,
        atomic_write_parquet,
        atomic_write_text,
        best_config,
        leaderboard,
        leaderboard_markdown,
        table1_markdown,
    )
    from raycity.run import RunDir
    from raycity.runtables import hp_column
    from raycity.searchview import (
        importance,
        importance_figure,
        importance_markdown,
        parallel_coordinates,
    )
    files = RunDir(run_dir)
    state = files.state()
    epochs = pd.read_parquet(files.epochs)
    told = json.loads(files.searcher.read_text()) if files.searcher.is_file() else []
    columns = [hp_column(h) for h in state.hparams]
    values = tuned_values(state, epochs, told)
    # a tuned `epochs` decides when each configuration's folds are complete
    lengths = values[hp_column("epochs")].astype(int).to_dict() if "epochs" in state.hparams \
        else state.config.epochs
    board = leaderboard(summary, columns, values, lengths, state.metric)
    atomic_write_parquet(board, files.leaderboard)
    log_scaled = state.search.get("log_scaled", [])
    mattered = importance(board, state.hparams, log_scaled, state.metric)
    atomic_write_parquet(mattered, files.importance)
    if not mattered.empty:
        importance_figure(mattered, files.importance_figure)
    parallel_coordinates(board, state.hparams, log_scaled, state.metric, files.parallel_figure)
    markdown = leaderboard_markdown(board, columns, state.metric)
    if not mattered.empty:
        markdown += "\n" + importance_markdown(mattered)
    try:
        best = best_config(board, run_dir)
    except NothingRankedError as err:
        atomic_write_text(files.leaderboard_md, markdown)
        atomic_write_text(files.summary_md, f"No best configuration: {err}\n")
    else:
        table = compare(summary, best, files.folds())
        atomic_write_parquet(table, files.comparison)
        atomic_write_text(files.leaderboard_md,
                          f"{markdown}\n{comparison_markdown(table, state.metric, summary)}")
        table = table1_markdown(summary[summary["config_id"] == best], state.config.image_size,
                                first_label_size(state.data_root))
        atomic_write_text(files.summary_md, f"Best configuration: {best}\n\n{table}")
    sweep_figure(board, told, state.hparams, log_scaled, state.metric, files.sweep_figure)
    tensorboard_hparams(run_dir, board, state.hparams, state.metric)
    return board


def tensorboard_hparams(run_dir: Path, board: pd.DataFrame, hparams: list[str],
                        metric: str) -> None:
    """One hparams entry per configuration, for TensorBoard's HPARAMS tab."""
    from tensorboardX import SummaryWriter

    from raycity.run import RunDir
    from raycity.runtables import hp_column

    with SummaryWriter(str(RunDir(run_dir).tensorboard / "hparams")) as writer:
        for row in board.to_dict("records"):
            writer.add_hparams({h: row[hp_column(h)] for h in hparams},
                               {f"{metric}_mean": row[f"{metric}_mean"],
                                f"{metric}_std": row[f"{metric}_std"]},
                               name=row["config_id"])


if __name__ == "__main__":
    raise SystemExit(main())
