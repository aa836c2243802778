"""Result tables: the per-epoch schema, atomic writes, the per-fold summary and Table 1.

Every file is written to a temporary name and moved into place with `os.replace`, so a run that
is stopped at any moment leaves each table either as it was or complete.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from raycity.constants import CLASS_KEYS, CONFUSION
from raycity.errors import UserError, storage_error

KEY_COLUMNS = ["config_id", "fold", "epoch"]
REPEAT = "repeat"  # repeated K-fold: the split a fold belongs to (1-based; folds are numbered through)
METRIC_COLUMNS = ["lr", "train_loss", "val_loss", "miou_low", "miou_full"]
IOU_LOW = [f"iou_low_{k}" for k in CLASS_KEYS]
IOU_FULL = [f"iou_full_{k}" for k in CLASS_KEYS]
TIME_COLUMNS = ["epoch_seconds", "train_seconds", "eval_seconds", "train_images_per_s",
                "skipped_samples", "checkpoint_seconds", "checkpoint_bytes"]
# Where the epoch ran: the Ray node, the GPUs Ray granted, the torch device used, and how its
# CPUs were split (torch threads, DataLoader workers), and how it computed (autocast precision
# bf16/fp16/fp32, channels-last layout, torch.compile).
RUN_COLUMNS = ["node_id", "gpu_ids", "device", "torch_threads", "loader_workers", "precision",
               "channels_last", "compiled"]
PENDING = "pending (no epoch recorded)"
EPOCH_COLUMNS = (KEY_COLUMNS + [REPEAT] + METRIC_COLUMNS + IOU_LOW + IOU_FULL + TIME_COLUMNS + RUN_COLUMNS
                 + [CONFUSION])
BEST_BY = "miou_low"  # the seed picks each fold's best epoch by its low-res val mIoU
_UMASK = os.umask(0)  # read once: files get the permissions the user's umask allows
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from collaborators
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and (full := storage_error(err, path)) is not None:
            raise full from err
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def epochs_frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Tidy per-epoch table; a re-reported (config, fold, epoch), e.g. after a retry, counts once."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=EPOCH_COLUMNS)
    for col in EPOCH_COLUMNS:
        if col not in df:
            df[col] = None if col == CONFUSION else np.nan
    df[REPEAT] = df[REPEAT].fillna(1).astype("int64")  # tables from before repeats: one
    if CONFUSION in df:  # a list per epoch; null where the epoch predates it (old tables)
        df[CONFUSION] = [[int(v) for v in m] if isinstance(m, (list, tuple, np.ndarray)) else None
                         for m in df[CONFUSION]]
    extra = [c for c in df.columns if c not in EPOCH_COLUMNS]
    df = df[KEY_COLUMNS + extra + EPOCH_COLUMNS[len(KEY_COLUMNS):]]
    df = df.drop_duplicates(KEY_COLUMNS, keep="last")
    df["fold"] = df["fold"].astype("int64")
    df["epoch"] = df["epoch"].astype("int64")
    return df.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)


def summarize(epochs: pd.DataFrame, status: Mapping[tuple[str, int], str] | None = None, *,
              folds: int | None = None, config_ids: Iterable[str] = (),
              repeats: int = 1) -> pd.DataFrame:
    """One row per (config, fold) at the fold's best epoch by val `miou_low`.

    `status` marks folds as e.g. "failed: …"; a failed fold keeps its row (what it reached) but is
    left out of every mean by `table1`. With `folds` (K), every configuration seen (or listed in
    `config_ids`) has K rows: a fold with no epoch recorded is marked pending, never silently
    dropped from a table that still says K-fold. With `repeats`, `folds` counts every
    repeat's folds (R × K), numbered through.
    """
    k = folds // repeats if folds else None
    if "config_id" not in epochs:
        epochs = epochs.assign(config_id="cv")
    status = dict(status or {})
    if folds:
        seen = set(epochs["config_id"]) | {c for c, _ in status} | set(config_ids)
        for config_id in seen:
            for fold in range(1, folds + 1):
                done = ((epochs["config_id"] == config_id) & (epochs["fold"] == fold)).any()
                if not done and (config_id, fold) not in status:
                    status[(config_id, fold)] = PENDING
    rows = []
    for (config_id, fold), group in epochs.groupby(["config_id", "fold"], sort=True):
        ranked = group[group[BEST_BY].notna()]
        best = ranked.loc[ranked[BEST_BY].idxmax()] if len(ranked) else group.iloc[-1]
        repeat = best.get(REPEAT, 1)
        row = {"config_id": config_id, "fold": int(fold),
               REPEAT: 1 if pd.isna(repeat) else int(repeat), "best_epoch": int(best["epoch"]),
               "epochs_done": int(group["epoch"].max()),
               "miou_low": float(best["miou_low"]), "miou_full": float(best["miou_full"]),
               "status": status.get((config_id, int(fold)), "ok")}
        for col in IOU_LOW + IOU_FULL:
            if col in group:
                row[col] = float(best[col])
        if "epoch_seconds" in group:
            row["wall_seconds"] = float(group["epoch_seconds"].sum())
        rows.append(row)
    for (config_id, fold), state in status.items():  # folds that failed before any epoch
        if not any(r["config_id"] == config_id and r["fold"] == fold for r in rows):
            rows.append({"config_id": config_id, "fold": fold,
                         REPEAT: (fold - 1) // k + 1 if k else 1, "best_epoch": 0, "epochs_done": 0,
                         "miou_low": np.nan, "miou_full": np.nan, "status": state})
    return pd.DataFrame(rows).sort_values(["config_id", "fold"]).reset_index(drop=True)


def repeats_of(summary: pd.DataFrame) -> int:
    return int(summary[REPEAT].max()) if REPEAT in summary and len(summary) else 1


def table1(summary: pd.DataFrame) -> pd.DataFrame:
    """The seed's Table 1: a row per fold, then Mean and Std (ddof=0) over the folds that
    finished. With repeated K-fold, a row per (repeat, fold) — `Fold` numbered within its
    repeat — Mean and Std over all of them, and the std of the R repeat means: how much the
    estimate itself moves from one split of the data to another."""
    repeats = repeats_of(summary)
    k = int(summary["fold"].max()) // repeats if len(summary) else 0
    rows = []
    for r in summary.itertuples():
        repeat = getattr(r, REPEAT, 1)
        rows.append({**({"Repeat": str(repeat)} if repeats > 1 else {}),
                     "Fold": str(r.fold - (repeat - 1) * k), "Low-Res mIoU": r.miou_low,
                     "Full-Res mIoU": r.miou_full})
    blank = {"Repeat": ""} if repeats > 1 else {}
    low, full = fold_stats(summary, "miou_low"), fold_stats(summary, "miou_full")
    rows.append({**blank, "Fold": "Mean", "Low-Res mIoU": low[0], "Full-Res mIoU": full[0]})
    rows.append({**blank, "Fold": "Std", "Low-Res mIoU": low[1], "Full-Res mIoU": full[1]})
    if repeats > 1:
        ok = summary[summary["status"] == "ok"]
        means = ok.groupby(REPEAT)[["miou_low", "miou_full"]].mean()
        rows.append({**blank, "Fold": "Std of repeat means",
                     "Low-Res mIoU": mean_std(means["miou_low"])[1],
                     "Full-Res mIoU": mean_std(means["miou_full"])[1]})
    return pd.DataFrame(rows)


def fold_stats(summary: pd.DataFrame, column: str) -> tuple[float, float]:
    """(mean, std) of `column` over the folds that finished."""
    return mean_std(summary.loc[summary["status"] == "ok", column])


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and std with ddof=0, as the seed study reports them (the folds are the population
    described, not a sample), skipping NaN (a class absent from a fold's images). The one place
    Table 1, the leaderboard, the per-class table and the searcher take a mean ± std."""
    array = np.asarray(list(values), dtype=float)
    array = array[~np.isnan(array)]
    if not len(array):
        return float("nan"), float("nan")
    return float(array.mean()), float(array.std(ddof=0))


def table1_markdown(summary: pd.DataFrame, image_size: tuple[int, int] | None = None,
                    full_size: tuple[int, int] | None = None) -> str:
    low = f"{image_size[0]}×{image_size[1]}" if image_size else "low-res"
    full = f"{full_size[0]}×{full_size[1]}" if full_size else "full-res"
    table = table1(summary)
    keyed = "Repeat" in table
    lines = [f"Table 1: Cross-Validation mIoU ({low} / {full})", "",
             "| Repeat " * keyed + "| Fold | Low-Res mIoU | Full-Res mIoU |",
             "|---" * keyed + "|---|---|---|"]
    states = list(summary["status"])
    for i, r in enumerate(table.to_dict("records")):
        state = states[i] if i < len(states) else "ok"
        note = "" if state == "ok" else " (failed)" if state.startswith("failed") else f" ({state})"
        lead = f"| {r['Repeat']} " if keyed else ""
        lines.append(f"{lead}| {r['Fold']}{note} | {_fmt(r['Low-Res mIoU'])} | "
                     f"{_fmt(r['Full-Res mIoU'])} |")
    failed = summary["status"].str.startswith("failed").sum()
    pending = (summary["status"] == PENDING).sum()
    if failed or pending:
        what = " and ".join(part for part in (f"{failed} failed" if failed else "",
                                              f"{pending} pending" if pending else "") if part)
        lines += ["", f"Mean and Std leave out {what} fold(s) of {len(summary)}.",
                  *failure_lines(summary)]
    return "\n".join(lines) + "\n"


def failure_lines(summary: pd.DataFrame) -> list[str]:
    """Each distinct failure once, with the folds it ended: one user error that failed every
    fold is one line ("all 3 folds"), not one per fold."""
    failed = summary[summary["status"].str.startswith("failed")]
    lines = []
    for message, group in failed.groupby("status", sort=False):
        folds = [str(f) for f in group["fold"]]
        who = f"all {len(summary)} folds" if len(group) == len(summary) > 1 else \
            ("fold " if len(folds) == 1 else "folds ") + ", ".join(folds)
        lines.append(f"{who} {message}")
    return lines


def _fmt(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.4f}"


def leaderboard(summary: pd.DataFrame, hparams: list[str], values: pd.DataFrame,
                epochs: int | Mapping[str, int], metric: str = "miou_full") -> pd.DataFrame:
    """One row per configuration: its hyperparameters and fold mean ± std (ddof=0) at each fold's
    best epoch; best first by the mean of `metric`. `epochs` is each configuration's length (a
    mapping where the sweep tunes it).

    Only configurations whose folds all ended (finished, or stopped by early stopping) are
    ranked: a mean over the 2 folds that survived is a different, biased estimate and must not
    beat a mean over all 3. The others follow, unranked (`rank` is NA), with what they lack.
    """
    rows = []
    for config_id, group in summary.groupby("config_id", sort=True):
        ok = group[group["status"] == "ok"]
        length = epochs[config_id] if isinstance(epochs, Mapping) else epochs
        failed = int(group["status"].str.startswith("failed").sum())
        missing = int((group["status"] != "ok").sum())
        row = {"config_id": config_id,
               **{h: values.loc[config_id, h] for h in hparams},
               "folds": len(group), "folds_completed": int((ok["epochs_done"] >= length).sum()),
               "folds_failed": missing,
               "stopped_early": bool((ok["epochs_done"] < length).any()),
               "comparable": missing == 0,
               "state": "complete" if missing == 0 else ", ".join(
                   part for part in (f"{failed} failed" if failed else "",
                                     f"{missing - failed} pending" if missing - failed else "")
                   if part)}
        for m in ("miou_low", "miou_full"):
            row[f"{m}_mean"], row[f"{m}_std"] = fold_stats(group, m)
        rows.append(row)
    board = pd.DataFrame(rows).sort_values(["comparable", f"{metric}_mean"],
                                           ascending=[False, False], na_position="last")
    ranked = int(board["comparable"].sum())
    board.insert(0, "rank", pd.array(list(range(1, ranked + 1)) + [None] * (len(board) - ranked),
                                     dtype="Int64"))
    return board.reset_index(drop=True)


class NothingRankedError(UserError, LookupError):
    """A sweep in which no configuration has all its folds has no best configuration yet."""


def best_config(board: pd.DataFrame, run_dir: str | Path = "") -> str:
    """The first ranked configuration, the one `evaluate`, `predict` and the report use."""
    ranked = board[board["rank"].notna()] if "rank" in board else board.iloc[:0]
    if not len(ranked):
        raise NothingRankedError(f"{run_dir or 'this sweep'}: no configuration has all its "
                                 f"folds yet, so none is ranked; --resume the sweep to "
                                 f"complete them")
    return str(ranked.iloc[0]["config_id"])


def leaderboard_markdown(board: pd.DataFrame, hparams: list[str], metric: str) -> str:
    head = ["rank", "config", *(h.removeprefix("hp_") for h in hparams), "folds done",
            "stopped early", "mIoU low", "mIoU full"]
    lines = [f"Leaderboard (ranked by {metric}, mean ± std over folds at each fold's best epoch)",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in board.to_dict("records"):
        done = f"{r['folds_completed']}/{r['folds']}"
        if not r.get("comparable", True):
            done += f" ({r['state']}: unranked; --resume can complete it)"
        cells = ["—" if pd.isna(r["rank"]) else str(r["rank"]), r["config_id"],
                 *(_hp(r[h]) for h in hparams), done, "yes" if r["stopped_early"] else "no",
                 f"{_fmt(r['miou_low_mean'])} ± {_fmt(r['miou_low_std'])}",
                 f"{_fmt(r['miou_full_mean'])} ± {_fmt(r['miou_full_std'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _hp(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
