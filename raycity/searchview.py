"""A search you can read: which tuned value mattered to the fold-mean objective (Optuna's fANOVA
evaluator over the ranked configurations), and every configuration as one line through its
values to its fold mean (parallel coordinates). Ray-free, from the leaderboard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

MIN_CONFIGURATIONS = 3  # fewer cannot say anything about which value mattered
EVALUATOR = "fanova"


def tuned_names(board: pd.DataFrame, hparams: list[str]) -> list[str]:
    """The tuned fields that took more than one value among the ranked configurations."""
    ranked = board[board["rank"].notna()]
    return [h for h in hparams if ranked[f"hp_{h}"].nunique() > 1]


def importance(board: pd.DataFrame, hparams: list[str], log_scaled: list[str],
               metric: str, seed: int = 0) -> pd.DataFrame:
    """importance.parquet: one row per tuned field, its share of the fold-mean objective's
    variance (fANOVA; the shares sum to 1). Empty with fewer than 2 varying fields or
    `MIN_CONFIGURATIONS` ranked configurations: nothing to apportion."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    columns = ["param", "importance", "evaluator", "configurations", "metric"]
    names = tuned_names(board, hparams)
    ranked = board[board["rank"].notna() & board[f"{metric}_mean"].notna()]
    if len(names) < 2 or len(ranked) < MIN_CONFIGURATIONS:
        return pd.DataFrame(columns=columns)
    distributions = {}
    for name in names:
        values = ranked[f"hp_{name}"]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            low, high = float(values.min()), float(values.max())
            distributions[name] = FloatDistribution(low, high, log=name in log_scaled and low > 0)
        else:
            distributions[name] = CategoricalDistribution(sorted(values.astype(str).unique()))
    trials = []
    for row in ranked.to_dict("records"):
        params = {n: (float(row[f"hp_{n}"]) if isinstance(d, FloatDistribution)
                      else str(row[f"hp_{n}"])) for n, d in distributions.items()}
        trials.append(optuna.trial.create_trial(params=params, distributions=distributions,
                                                value=float(row[f"{metric}_mean"])))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    shares = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    return pd.DataFrame([{"param": k, "importance": float(v), "evaluator": EVALUATOR,
                          "configurations": len(trials), "metric": metric}
                         for k, v in shares.items()], columns=columns)


def importance_figure(table: pd.DataFrame, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(table)))
    ordered = table.sort_values("importance")
    ax.barh(ordered["param"], ordered["importance"], color="#4878a8")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of the variance of the fold-mean {table['metric'].iloc[0]} (fANOVA)")
    ax.set_title(f"What mattered ({int(table['configurations'].iloc[0])} configurations)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parallel_coordinates(board: pd.DataFrame, hparams: list[str], log_scaled: list[str],
                         metric: str, path: str | Path) -> bool:
    """One line per configuration through its tuned values (log axes where sampled on one) to
    its fold mean, coloured by it. False (nothing drawn) without a tuned field that varies."""
    import matplotlib.pyplot as plt

    names = tuned_names(board, hparams)
    shown = board[board[f"{metric}_mean"].notna()]
    if not names or shown.empty:
        return False
    axes_values, labels = [], []
    for name in [*names, None]:
        raw = shown[f"{metric}_mean"] if name is None else shown[f"hp_{name}"]
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            values = raw.astype(float)
            logged = name in log_scaled and (values > 0).all()
            scaled = np.log10(values) if logged else values
            low, high = float(scaled.min()), float(scaled.max())
            position = (scaled - low) / (high - low) if high > low else scaled * 0 + 0.5
            ends = (f"{raw.min():.3g}", f"{raw.max():.3g}")
        else:
            order = sorted(raw.astype(str).unique())
            position = raw.astype(str).map({v: i / max(len(order) - 1, 1)
                                            for i, v in enumerate(order)})
            ends = (order[0], order[-1])
        axes_values.append(position.to_numpy(dtype=float))
        suffix = " (log)" if name is not None and name in log_scaled else ""
        labels.append((f"{name}{suffix}" if name else f"{metric} (fold mean)", ends))
    scores = shown[f"{metric}_mean"].to_numpy(dtype=float)
    span = (scores.max() - scores.min()) or 1.0
    colours = plt.cm.viridis((scores - scores.min()) / span)
    fig, ax = plt.subplots(figsize=(2.2 * len(labels) + 1.5, 4.2))
    xs = np.arange(len(labels))
    for i in np.argsort(scores):  # the best drawn last, on top
        ax.plot(xs, [a[i] for a in axes_values], color=colours[i], lw=2, alpha=0.85)
    for x, (_, (low, high)) in zip(xs, labels):
        ax.axvline(x, color="0.6", lw=0.8)
        ax.text(x, -0.08, low, ha="center", va="top", fontsize=8)
        ax.text(x, 1.08, high, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [label for label, _ in labels])
    ax.set_yticks([])
    ax.set_ylim(-0.2, 1.2)
    ax.set_title(f"Configurations through their values to their fold mean ({len(shown)})")
    sm = plt.cm.ScalarMappable(cmap="viridis",
                               norm=plt.Normalize(scores.min(), scores.min() + span))
    fig.colorbar(sm, ax=ax, label=f"fold-mean {metric}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def importance_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    lines = [f"What mattered to the fold-mean {table['metric'].iloc[0]}: each tuned value's "
             f"share of its variance (Optuna's fANOVA over {int(table['configurations'].iloc[0])} "
             f"ranked configurations; with few configurations, a rough guide).", "",
             "| tuned | importance |", "|---|---|"]
    lines += [f"| {r.param} | {r.importance:.2f} |" for r in table.itertuples()
              if math.isfinite(r.importance)]
    return "\n".join(lines) + "\n"
