"""Is configuration B better than A? Paired tests over the folds, corrected for the overlap of
their training sets.

Each configuration is scored on the same folds; each pair is one fold's Table 1 value (the
fold's best epoch by `miou_low`) for both. K-fold training sets overlap, so fold differences
are correlated and the plain paired t-test is far too confident. Two answers:

- the **corrected resampled t-test** (Nadeau & Bengio, 2003): t = mean / sqrt((1/J + n_test /
  n_train) · var), J − 1 degrees of freedom, two-sided p;
- the **Bayesian correlated t-test** (Benavoli et al., 2017) with a region of practical
  equivalence (ROPE): the posterior of the mean difference is Student t(J − 1, mean, (1/J + ρ /
  (1 − ρ)) · var) with ρ = n_test / (n_test + n_train), giving P(better), P(equivalent),
  P(worse).

Ray-free, from the run's tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from raycity.constants import CLASS_KEYS
from raycity.folds import FoldSplit

ROPE = 0.005  # mIoU: differences smaller than this are practically equivalent
METRICS = ("miou_full", "miou_low")
COLUMNS = ["config_id", "baseline", "metric", "pairs", "diff_mean", "diff_std", "t", "p_value",
           "p_better", "p_equivalent", "p_worse", "rope", "test_train_ratio"]


def test_train_ratio(folds: Sequence[FoldSplit]) -> float:
    """n_test / n_train, averaged over the folds (1 / (K − 1) for equal folds)."""
    return float(np.mean([len(f.val) / len(f.train) for f in folds]))


def corrected_t_test(diffs: Sequence[float], ratio: float) -> tuple[float, float]:
    """(t, two-sided p) of the corrected resampled t-test; NaN where J < 2 or the differences
    do not vary (nothing to test against)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    var = d.var(ddof=1)
    if var == 0:
        return math.nan, math.nan
    t = d.mean() / math.sqrt((1 / len(d) + ratio) * var)
    return float(t), float(2 * stats.t.sf(abs(t), len(d) - 1))


def bayesian_correlated_t(diffs: Sequence[float], ratio: float,
                          rope: float = ROPE) -> tuple[float, float, float]:
    """(P(better), P(equivalent), P(worse)) of the mean difference, with ρ / (1 − ρ) =
    n_test / n_train."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2 or d.var(ddof=1) == 0:
        return math.nan, math.nan, math.nan
    scale = math.sqrt((1 / len(d) + ratio) * d.var(ddof=1))
    posterior = stats.t(len(d) - 1, loc=d.mean(), scale=scale)
    worse, below_rope_top = posterior.cdf(-rope), posterior.cdf(rope)
    return float(1 - below_rope_top), float(below_rope_top - worse), float(worse)


def compare(summary: pd.DataFrame, baseline: str, folds: Sequence[FoldSplit],
            rope: float = ROPE) -> pd.DataFrame:
    """Every configuration against `baseline`, paired by fold, for each metric. Only folds both
    finished ("ok") pair up."""
    ratio = test_train_ratio(folds)
    ok = summary[summary["status"] == "ok"]
    base = ok[ok["config_id"] == baseline].set_index("fold")
    rows = []
    for config_id, group in ok.groupby("config_id", sort=True):
        if config_id == baseline:
            continue
        paired = group.set_index("fold").join(base, rsuffix="_base", how="inner")
        for metric in METRICS:
            diffs = (paired[metric] - paired[f"{metric}_base"]).to_numpy(dtype=float)
            t, p = corrected_t_test(diffs, ratio)
            better, equivalent, worse = bayesian_correlated_t(diffs, ratio, rope)
            rows.append({"config_id": config_id, "baseline": baseline, "metric": metric,
                         "pairs": len(diffs),
                         "diff_mean": float(diffs.mean()) if len(diffs) else math.nan,
                         "diff_std": float(diffs.std(ddof=1)) if len(diffs) > 1 else math.nan,
                         "t": t, "p_value": p, "p_better": better, "p_equivalent": equivalent,
                         "p_worse": worse, "rope": rope, "test_train_ratio": ratio})
    return pd.DataFrame(rows, columns=COLUMNS)


def class_differences(summary: pd.DataFrame, config_id: str, baseline: str,
                      top: int = 3) -> list[tuple[str, float]]:
    """The classes whose full-res IoU moved most between `baseline` and `config_id`: the mean
    paired difference over the folds both finished, largest in size first."""
    ok = summary[summary["status"] == "ok"]
    a = ok[ok["config_id"] == config_id].set_index("fold")
    b = ok[ok["config_id"] == baseline].set_index("fold")
    folds = a.index.intersection(b.index)
    moved = []
    for key in CLASS_KEYS:
        column = f"iou_full_{key}"
        if column in a and column in b:
            diff = (a.loc[folds, column] - b.loc[folds, column]).mean()
            if np.isfinite(diff):
                moved.append((key, float(diff)))
    return sorted(moved, key=lambda kv: -abs(kv[1]))[:top]


def comparison_markdown(table: pd.DataFrame, metric: str = "miou_full",
                        summary: pd.DataFrame | None = None) -> str:
    """The section leaderboard.md and report.md show: names the tests, the pairs they rest on,
    and says plainly when there are too few to separate two configurations."""
    rows = table[table["metric"] == metric]
    if rows.empty:
        return ""
    first = rows.iloc[0]
    lines = [f"Against the best configuration ({first['baseline']}), {metric}, paired by fold "
             f"(each (repeat, fold) with --repeats): "
             f"the corrected resampled t-test (Nadeau & Bengio, 2003; n_test/n_train = "
             f"{first['test_train_ratio']:.3f}) and the Bayesian correlated t-test (Benavoli et "
             f"al., 2017; ROPE ± {first['rope']:g}).", "",
             "| config | pairs | diff mean ± std | t | p | P(better) | P(equivalent) | P(worse) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        lines.append(f"| {r.config_id} | {r.pairs} | {_num(r.diff_mean, '+.4f')} ± "
                     f"{_num(r.diff_std, '.4f')} | {_num(r.t, '.2f')} | {_num(r.p_value, '.3f')} | "
                     f"{_num(r.p_better, '.2f')} | {_num(r.p_equivalent, '.2f')} | "
                     f"{_num(r.p_worse, '.2f')} |")
    if summary is not None:
        lines.append("")
        for r in rows.itertuples():
            moved = class_differences(summary, r.config_id, r.baseline)
            if moved:
                lines.append(f"- {r.config_id}: largest per-class IoU differences (full-res): "
                             + ", ".join(f"{k.replace('_', ' ')} {v:+.4f}" for k, v in moved))
    few = int(rows["pairs"].min())
    if few < 3:
        lines += ["", f"Only {few} pair(s) per comparison: with so few folds the tests cannot "
                      f"separate two configurations unless they differ by much more than the "
                      f"folds do; more folds (or repeated K-fold) would."]
    return "\n".join(lines) + "\n"


def _num(value: float, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)
