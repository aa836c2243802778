"""Figures a person reads at a glance: prediction panels and training curves (matplotlib, Agg)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from raycity.constants import CLASS_COLORS, CLASS_NAMES, IGNORE_INDEX  # noqa: E402
from raycity.results import atomic_write_bytes  # noqa: E402

IGNORED_GREY = np.array([128, 128, 128], dtype=np.uint8)
WRONG = np.array([255, 255, 255], dtype=np.uint8)  # white: no Cityscapes class uses it
PANEL_COLUMNS = ("image", "ground truth", "prediction", "errors")
GAP = 4  # pixels between cells


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """trainIds → Cityscapes colours; ignored pixels black."""
    out = np.zeros((*train_ids.shape, 3), dtype=np.uint8)
    valid = train_ids != IGNORE_INDEX
    out[valid] = CLASS_COLORS[train_ids[valid]]
    return out


def error_map(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Correct pixels dark, wrong pixels white, pixels with ignored truth grey."""
    out = np.full((*truth.shape, 3), 30, dtype=np.uint8)
    out[(pred != truth) & (truth != IGNORE_INDEX)] = WRONG
    out[truth == IGNORE_INDEX] = IGNORED_GREY
    return out


def panel_grid(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list]:
    """Exact-pixel grid of (image, truth, prediction) rows → (RGB array, cell boxes).

    The grid is not resampled, so the prediction cells hold exactly the model's argmax colours;
    `boxes[r][c]` = (top, left, height, width) of each cell.
    """
    h = max(r[0].shape[0] for r in rows)
    w = max(r[0].shape[1] for r in rows)
    grid = np.full((len(rows) * (h + GAP) - GAP, 4 * (w + GAP) - GAP, 3), 255, dtype=np.uint8)
    boxes = []
    for i, (image, truth, pred) in enumerate(rows):
        cells = (image, colorize(truth), colorize(pred), error_map(pred, truth))
        row_boxes = []
        for j, cell in enumerate(cells):
            top, left = i * (h + GAP), j * (w + GAP)
            grid[top:top + cell.shape[0], left:left + cell.shape[1]] = cell
            row_boxes.append((top, left, cell.shape[0], cell.shape[1]))
        boxes.append(row_boxes)
    return grid, boxes


def _render(fig: plt.Figure) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return np.asarray(Image.open(buf).convert("RGB"))


def _strip(width_px: int, height_px: int, draw) -> np.ndarray:
    fig = plt.figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    draw(fig)
    return _render(fig)[:height_px, :width_px]


def prediction_panel(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], title: str,
                     names: list[str]) -> tuple[np.ndarray, list]:
    """Header (title, column names) + exact-pixel grid + class legend; returns (RGB, boxes)."""
    grid, boxes = panel_grid(rows)
    width = max(grid.shape[1], 640)
    cell_w = boxes[0][0][3]

    def header(fig):
        fig.text(0.01, 0.7, title, fontsize=11, weight="bold", va="center")
        for j, col in enumerate(PANEL_COLUMNS):
            fig.text((j * (cell_w + GAP) + cell_w / 2) / width, 0.2, col, ha="center", fontsize=9)

    def legend(fig):
        handles = [Patch(color=CLASS_COLORS[k] / 255, label=n) for k, n in enumerate(CLASS_NAMES)]
        handles += [Patch(color=WRONG / 255, label="wrong"),
                    Patch(color=IGNORED_GREY / 255, label="ignored")]
        fig.legend(handles=handles, loc="center", ncol=7, fontsize=7, frameon=False)
        fig.text(0.01, 0.04, "rows: " + ", ".join(names), fontsize=6)

    top = _strip(width, 44, header)
    bottom = _strip(width, 90, legend)
    body = np.full((grid.shape[0], width, 3), 255, dtype=np.uint8)
    body[:, : grid.shape[1]] = grid
    panel = np.concatenate([top, body, bottom])
    boxes = [[(t + top.shape[0], left, h, w) for (t, left, h, w) in r] for r in boxes]
    return panel, boxes


def save_png(array: np.ndarray, path: str | Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def fold_history(epochs: pd.DataFrame, fold: int, path: str | Path, title: str = "") -> None:
    df = epochs[epochs["fold"] == fold].sort_values("epoch")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(df["epoch"], df["train_loss"], "o-", label="train")
    axes[0].plot(df["epoch"], df["val_loss"], "o-", label="val")
    axes[0].set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
    axes[1].plot(df["epoch"], df["miou_low"], "o-", label="low-res (training size)")
    axes[1].plot(df["epoch"], df["miou_full"], "o-", label="full-res (label size)")
    axes[1].set(title="Validation mIoU", xlabel="epoch", ylabel="mIoU")
    axes[2].plot(df["epoch"], df["lr"], "o-", color="tab:green")
    axes[2].set(title="Learning rate", xlabel="epoch", ylabel="lr", yscale="log")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Training history, fold {fold}{title}", weight="bold")
    fig.tight_layout()
    save_png(_render(fig), path)


def cv_history(epochs: pd.DataFrame, path: str | Path, title: str = "") -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, col, name in ((axes[0], "miou_low", "low-res"), (axes[1], "miou_full", "full-res")):
        wide = epochs.pivot_table(index="epoch", columns="fold", values=col)
        for fold in wide.columns:
            ax.plot(wide.index, wide[fold], "o-", alpha=0.6, label=f"fold {fold}")
        ax.plot(wide.index, wide.mean(axis=1), "k-", lw=2.5, label="mean")
        ax.set(title=f"Validation mIoU ({name})", xlabel="epoch", ylabel="mIoU")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.suptitle(f"Cross-validation: all folds{title}", weight="bold")
    fig.tight_layout()
    save_png(_render(fig), path)


def sweep_figure(board: pd.DataFrame, told: list[dict], hparams: list[str],
                 log_scaled: list[str], metric: str, path: str | Path) -> None:
    """The search as a picture: each configuration's fold mean ± std against each tuned value
    (log axis where it was sampled on one), and the best fold mean so far against the number of
    configurations finished — what a searcher that learns should push up early."""
    ok = board[board[f"{metric}_mean"].notna()]
    fig, axes = plt.subplots(1, len(hparams) + 1, figsize=(4.3 * (len(hparams) + 1), 3.8),
                             squeeze=False)
    axes = axes[0]
    for ax, name in zip(axes, hparams):
        column = f"hp_{name}"
        ax.errorbar(ok[column], ok[f"{metric}_mean"], yerr=ok[f"{metric}_std"], fmt="o",
                    capsize=3, alpha=0.75, label="configuration (fold mean ± std)")
        if len(ok):
            best = ok.iloc[0]
            ax.plot(best[column], best[f"{metric}_mean"], "*", color="tab:red", ms=15,
                    label=f"best ({best['config_id']})")
        ax.set(xlabel=name + (" (log scale)" if name in log_scaled else ""),
               ylabel=f"{metric}, mean over folds", xscale="log" if name in log_scaled else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    finished = [t.get("mean", np.nan) if not t.get("error") else np.nan for t in told] if told \
        else list(board.sort_values("config_id")[f"{metric}_mean"])
    ax = axes[-1]
    if finished:
        steps = np.arange(1, len(finished) + 1)
        ax.plot(steps, finished, "o", alpha=0.5, label="fold mean of each")
        # a failed configuration (NaN) changes nothing: the best so far carries on past it
        ax.step(steps, pd.Series(finished).cummax().ffill(), where="post", color="tab:red", lw=2,
                label="best so far")
    ax.set(xlabel="configurations finished", ylabel=f"{metric}, mean over folds",
           title="Search progress")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"Sweep: {len(ok)} configurations judged on all folds", weight="bold")
    fig.tight_layout()
    save_png(_render(fig), path)


def row_shares(matrix: np.ndarray) -> np.ndarray:
    """Each row (a true class) divided by its total: where that class's pixels went."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def confusion_figure(matrix: np.ndarray, path: str | Path, title: str) -> None:
    """Where each class's pixels went: the confusion matrix summed over folds, each row (a true
    class) normalised to 1, so that rare classes read as clearly as road; the diagonal is the
    recall. Shares above 5 % are printed in the cell."""
    totals, share = matrix.sum(axis=1), row_shares(matrix)
    fig, ax = plt.subplots(figsize=(9.5, 8.5))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, [f"{n} ({'—' if t == 0 else f'{t:.1e}'})"
                          for n, t in zip(CLASS_NAMES, totals)], fontsize=8)
    for i, j in zip(*np.nonzero(share >= 0.05)):
        ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=6,
                color="white" if share[i, j] > 0.6 else "black")
    ax.set(xlabel="predicted class", ylabel="true class (pixels)")
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the true class's pixels")
    fig.suptitle(title, weight="bold")
    fig.tight_layout()
    save_png(_render(fig), path)


def most_confused(matrix: np.ndarray, top: int = 3) -> list[tuple[str, str, float]]:
    """The largest off-diagonal shares of a row-normalised confusion matrix: (true, predicted,
    share of the true class's pixels)."""
    share = row_shares(matrix)
    np.fill_diagonal(share, 0)
    order = np.argsort(share, axis=None)[::-1][:top]
    return [(CLASS_NAMES[i], CLASS_NAMES[j], float(share[i, j]))
            for i, j in zip(*np.unravel_index(order, share.shape)) if share[i, j] > 0]
