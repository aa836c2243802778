"""`python -m raycity.compare RUN_A RUN_B`: did B beat A, fold by fold? The usual use: rerun the
CV after a code change and ask whether it helped. A run is a CV run's folder, a sweep's folder
(its best configuration) or `SWEEP:c3` (one configuration). Both must have been cut into the
same folds; the tests are those of `raycity.comparison`, B against A."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from raycity.comparison import ROPE, compare, comparison_markdown
from raycity.errors import UserError
from raycity.folds import FoldSplit
from raycity.results import atomic_write_parquet, best_config
from raycity.run import RunDir


class CompareError(UserError, ValueError):
    """Two runs that cannot be paired fold by fold."""


def load_side(spec: str) -> tuple[str, RunDir, pd.DataFrame, list[FoldSplit]]:
    """(label, run, its summary rows for the configuration meant, its folds)."""
    from raycity.report import read_tables

    path, config_id = spec, ""
    if ":" in spec and not Path(spec).exists():  # SWEEP:c3
        path, _, config_id = spec.rpartition(":")
    files = RunDir(path)
    state = files.state()  # names the folder when it is not a run
    _, summary = read_tables(files.path)
    if state.kind == "sweep" and not config_id:
        config_id = best_config(pd.read_parquet(files.leaderboard), files.path)
    config_id = config_id or "cv"
    rows = summary[summary["config_id"] == config_id]
    if rows.empty:
        raise CompareError(f"{spec}: no configuration {config_id!r} in {files.path} (has "
                           f"{', '.join(sorted(set(summary['config_id'])))})")
    label = files.path.name + (f":{config_id}" if state.kind == "sweep" else "")
    return label, files, rows, files.folds()


def rope_width(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a width in mIoU, 0 or more")
    return value


def same_split(a: list[FoldSplit], b: list[FoldSplit]) -> bool:
    return [(f.fold, sorted(f.val)) for f in a] == [(f.fold, sorted(f.val)) for f in b]


def main(argv: list[str] | None = None) -> int:
    from raycity.cli import fail, user_errors

    p = argparse.ArgumentParser(prog="python -m raycity.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="RUN_A", help="the reference, e.g. results/before")
    p.add_argument("b", metavar="RUN_B", help="the candidate, e.g. results/after or results/lr:c3")
    p.add_argument("--metric", choices=["miou_full", "miou_low"], default="miou_full",
                   help="what the printed section shows (both are written)")
    p.add_argument("--rope", type=rope_width, default=ROPE,
                   help=f"region of practical equivalence, in mIoU (default {ROPE})")
    args = p.parse_args(argv)
    try:
        label_a, _, rows_a, folds_a = load_side(args.a)
        label_b, files_b, rows_b, folds_b = load_side(args.b)
        if not same_split(folds_a, folds_b):
            raise CompareError(f"{args.a} and {args.b} were cut into different folds (their "
                               f"folds.json differ): a paired comparison needs the same split; "
                               f"rerun one with the other's --seed, --folds, --group-by and data")
        if label_a == label_b:
            label_b += " (B)"
        both = pd.concat([rows_a.assign(config_id=label_a), rows_b.assign(config_id=label_b)])
        table = compare(both, label_a, folds_a, rope=args.rope)
        out = files_b.comparison_with(label_a)
        atomic_write_parquet(table, out)
    except (ValueError, *user_errors()) as err:
        return fail(err)
    text = comparison_markdown(table, args.metric, both).replace("the best configuration", "A")
    print(f"B = {label_b} against A = {label_a}\n\n{text}\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
