"""`python -m raycity.report results/<name>`: figures and report.md from the saved files alone.

The run calls the same code when it ends, so a report rebuilt later is the one it wrote.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from raycity.constants import CLASS_NAMES
from raycity.data.layout import Sample, first_label_size
from raycity.results import (
    IOU_FULL,
    IOU_LOW,
    NothingRankedError,
    atomic_write_text,
    best_config,
    fold_stats,
    table1_markdown,
)
from raycity.run import RunDir
from raycity.runtables import confusion_frame, load_epochs, load_status, write_tables

PANEL_IMAGES = 3  # fixed validation images per panel: the first keys of the fold's val list
PANEL_WIDTH = 384  # display width of a panel cell


def display(array: np.ndarray, width: int = PANEL_WIDTH) -> np.ndarray:
    """Nearest-neighbour downscale to `width` (labels stay labels, pixels stay exact)."""
    h, w = array.shape[:2]
    if w <= width:
        return array
    rows = (np.arange(round(h * width / w)) * h / round(h * width / w)).astype(int)
    cols = (np.arange(width) * w / width).astype(int)
    return array[rows][:, cols]


def panel_samples(run_dir: Path, fold: int) -> list[Sample]:
    """The fold's validation samples in folds.json order: a panel shows the first readable ones,
    so the same images appear in every run on this split."""
    files = RunDir(run_dir)
    root = files.data_root()
    split = next(f for f in files.folds() if f.fold == fold)
    return [Sample(root, *key.split("/")) for key in split.val]


def fold_panel(checkpoint: Path, samples: list[Sample], device: torch.device | None = None):
    """(panel RGB, boxes, predictions, samples shown) for a fold's best checkpoint on the first
    PANEL_IMAGES readable samples; unreadable ones are skipped when the run skipped them, and a
    fold none of whose validation images is readable has no panel (None)."""
    from raycity.figures import prediction_panel
    from raycity.inference import (
        load_model_meta,
        predict_batch,
        readable_batches,
        threads_like_training,
    )

    device = device or torch.device("cpu")
    model, cfg, meta = load_model_meta(checkpoint, device)  # read once: weights and title
    shown, pairs = [], []
    for kept, batch, _ in readable_batches(samples, 1, cfg.skip_bad_samples):
        shown += kept
        pairs += batch
        if len(shown) == PANEL_IMAGES:
            break
    if not pairs:
        return None
    rows, preds = [], []
    with threads_like_training(meta, device):
        for image, truth in pairs:
            pred = predict_batch([model], [image], cfg, device=device)[0].classes_full
            pred = pred.cpu().numpy().astype(np.uint8)
            preds.append(pred)
            rows.append((display(image.permute(1, 2, 0).numpy()), display(truth.numpy()),
                         display(pred)))
    title = (f"Prediction, fold {meta['fold']}, best epoch {meta['epoch']} "
             f"(val mIoU low {meta['metrics'].get('miou_low', float('nan')):.3f})")
    panel, boxes = prediction_panel(rows, title, [s.name for s in shown])
    return panel, boxes, preds, shown


def write_figures(run_dir: Path, epochs: pd.DataFrame, config_id: str | None = None) -> list[str]:
    from raycity.figures import cv_history, fold_history, save_png

    files = RunDir(run_dir)
    written = []
    for fold in sorted(int(f) for f in epochs["fold"].unique()):
        path = files.fold_figure(fold, "history")
        fold_history(epochs, fold, path)
        written.append(path.name)
        checkpoint = files.checkpoint(fold, config_id)
        drawn = fold_panel(checkpoint, panel_samples(run_dir, fold)) \
            if checkpoint.is_file() else None
        if drawn is not None:
            panel = drawn[0]
            path = files.fold_figure(fold, "prediction")
            save_png(panel, path)
            written.append(path.name)
            tensorboard_image(run_dir, f"{config_id or 'cv'}_fold{fold}", panel)
    if len(epochs):
        cv_history(epochs, files.cv_figure)
        written.append(files.cv_figure.name)
    return written


def tensorboard_image(run_dir: Path, name: str, panel: np.ndarray) -> None:
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(RunDir(run_dir).tensorboard / name)) as writer:
        writer.add_image("prediction", panel, dataformats="HWC")


def summed_confusion(epochs: pd.DataFrame, summary: pd.DataFrame) -> np.ndarray | None:
    """The full-resolution confusion matrix summed over the folds that finished, each at its
    best epoch (None: the run's epochs predate the matrices in the tables)."""
    frame = confusion_frame(epochs, summary)
    if frame.empty:
        return None
    n = len(CLASS_NAMES)  # each fold's block: n × n rows, true class by true class
    return frame["pixels"].to_numpy().reshape(-1, n, n).sum(axis=0)


def confusion_section(matrix: np.ndarray, files: RunDir) -> list[str]:
    from raycity.figures import most_confused

    pairs = most_confused(matrix)
    said = "; ".join(f"{t} → {p} ({100 * share:.1f} % of {t})" for t, p, share in pairs)
    lines = ["## Confusion (full resolution, summed over folds at their best epochs)", "",
             f"Most confused: {said}." if said else "No pixel was confused.", ""]
    if files.confusion_figure.is_file():
        lines += [f"![confusion]({files.relative(files.confusion_figure)})", ""]
    return lines + [f"Pixels by true and predicted class: `{files.relative(files.confusion)}`.",
                    ""]


def per_class_table(summary: pd.DataFrame) -> str:
    lines = ["| class | IoU low-res | IoU full-res |", "|---|---|---|"]
    for name, low, full in zip(CLASS_NAMES, IOU_LOW, IOU_FULL):
        if low not in summary:
            continue
        stats = [fold_stats(summary, c) for c in (low, full)]
        cells = ["—" if np.isnan(mean) else f"{mean:.4f} ± {std:.4f}" for mean, std in stats]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def read_tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """epochs.parquet and summary.parquet; a missing or damaged one is rebuilt from the record
    each fold keeps of its epochs, as `--resume` does, and said in one line."""
    files = RunDir(run_dir)
    try:
        return pd.read_parquet(files.epochs), pd.read_parquet(files.summary)
    except (OSError, ValueError):
        state = files.state()
        epochs = load_epochs(run_dir, state, lambda line: print(line, file=sys.stderr))
        if epochs.empty:
            raise FileNotFoundError(f"{files.epochs}: missing or damaged, and no "
                                    f"fold recorded an epoch to rebuild it from") from None
        return epochs, write_tables(run_dir, state, epochs, load_status(run_dir))


def write_report(run_dir: str | Path, figures: bool = True) -> Path:
    """report.md (and, with `figures`, the figures) from the run's Parquet tables and checkpoints."""
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    state = files.state()
    config = state.config.to_dict()
    epochs, summary = read_tables(run_dir)
    best, heading = None, "Cross-validation"
    if files.leaderboard.is_file():
        try:
            best = best_config(pd.read_parquet(files.leaderboard), run_dir)
        except NothingRankedError as err:  # the search so far, and how to complete it
            atomic_write_text(files.report, f"# {run_dir.name}: Sweep report\n\n{err}\n\n"
                              f"## Search\n\n" + files.leaderboard_md.read_text())
            return files.report
        heading = f"Sweep, best configuration {best}"
        epochs = epochs[epochs["config_id"] == best]
        summary = summary[summary["config_id"] == best]
    if figures:
        write_figures(run_dir, epochs, best)
    confusion = summed_confusion(epochs, summary)
    if figures and confusion is not None:
        from raycity.figures import confusion_figure

        confusion_figure(confusion, files.confusion_figure,
                         f"Full-res confusion, {best or 'cross-validation'}: rows normalised")
    sizes = tuple(config["image_size"]), first_label_size(state.data_root)
    lines = [f"# {run_dir.name}: {heading} report", "",
             f"UNet-ResNet50, {config['folds']}-fold cross-validation"
             + (f" repeated {config['repeats']} times (independent splits)"
                if config.get("repeats", 1) > 1 else "") + " on the train split of "
             f"`{state.data_root}`" + (" (synthetic demo scenes)" if state.synthetic else "")
             + ".", "", "## Results", "", table1_markdown(summary, *sizes)]
    lines += ["## Folds", "", "| fold | best epoch | epochs | wall time | status |",
              "|---|---|---|---|---|"]
    for r in summary.itertuples():
        wall = f"{r.wall_seconds / 60:.1f} min" if "wall_seconds" in summary and \
            np.isfinite(r.wall_seconds) else "—"
        lines.append(f"| {r.fold} | {r.best_epoch} | {r.epochs_done} | {wall} | {r.status} |")
    lines += ["", "## Per-class IoU (mean ± std over folds, at each fold's best epoch)", "",
              per_class_table(summary), ""]
    if confusion is not None:
        lines += confusion_section(confusion, files)
    if files.val.is_file():
        table = pd.read_parquet(files.val)
        lines += [f"## Official {table['split'].iloc[0]} split", "",
                  "| model | TTA | mIoU (full-res) |", "|---|---|---|"]
        lines += [f"| {r.model} | {r.tta} | {r.miou_full:.4f} |" for r in table.itertuples()]
        lines += ["", "Scored like cityscapesScripts: one confusion matrix over the split, at "
                      "each label's own resolution.", ""]
    if files.leaderboard_md.is_file():
        lines += ["## Search", "", files.leaderboard_md.read_text()]
        if files.sweep_figure.is_file():
            lines += ["Each configuration's fold mean ± std against each tuned value, and the best "
                      "fold mean so far as configurations finished:", "",
                      f"![the search]({files.relative(files.sweep_figure)})", ""]
        for figure, text in ((files.parallel_figure, "every configuration through its values"),
                             (files.importance_figure, "what mattered")):
            if figure.is_file():
                lines += [f"![{text}]({files.relative(figure)})", ""]
    lines += ["## Figures", ""]
    if files.cv_figure.is_file():
        lines += [f"![all folds]({files.relative(files.cv_figure)})", ""]
    for fold in summary["fold"]:
        for kind in ("prediction", "history"):
            if (figure := files.fold_figure(int(fold), kind)).is_file():
                lines += [f"**Fold {fold}, {kind}**", "",
                          f"![fold {fold} {kind}]({files.relative(figure)})", ""]
    lines += ["## Configuration", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(config.items())]
    atomic_write_text(files.report, "\n".join(lines) + "\n")
    return files.report


def main(argv: list[str] | None = None) -> int:
    from raycity.cli import fail, user_errors

    p = argparse.ArgumentParser(prog="python -m raycity.report", description=__doc__)
    p.add_argument("run", help="a run folder, e.g. results/<name>")
    args = p.parse_args(argv)
    try:
        path = write_report(args.run)
    except user_errors() as err:
        return fail(err)
    print(f"written: {path} and {Path(args.run) / 'figures'}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

