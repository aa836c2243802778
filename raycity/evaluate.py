"""`python -m raycity.evaluate`: each fold's best model and the fold ensemble on the official
split (val by default), scored as cityscapesScripts scores it; written to val.parquet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from raycity.cli import fail, user_errors
from raycity.constants import CLASS_KEYS, NUM_CLASSES
from raycity.data import find_samples, read_sample
from raycity.inference import TTA, load_model, predict_probs
from raycity.metrics import confusion_matrix, iou_per_class, mean_iou
from raycity.results import atomic_write_parquet


def run_checkpoints(run_dir: Path) -> dict[str, Path]:
    """model name (fold1…foldK) → checkpoint, for a CV run or the best configuration of a sweep."""
    board = run_dir / "leaderboard.parquet"
    prefix = f"{pd.read_parquet(board).iloc[0]['config_id']}_" if board.is_file() else ""
    found = {}
    for path in sorted((run_dir / "checkpoints").glob(f"{prefix}fold*.pt")):
        found[path.stem.removeprefix(prefix)] = path
    if not found:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no fold checkpoints (is this a finished "
                                f"raycity run?)")
    return dict(sorted(found.items(), key=lambda kv: int(kv[0].removeprefix("fold"))))


def run_data_root(run_dir: Path, data_root: str | None) -> str:
    if data_root:
        return data_root
    run = run_dir / "run.json"
    if not run.is_file():
        raise FileNotFoundError(f"{run}: missing; pass --data-root")
    return json.loads(run.read_text())["data_root"]


def evaluate_models(checkpoints: dict[str, Path], data_root: str, split: str, ttas: list[TTA],
                    ensemble: bool, device: torch.device | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """One pass over the split; per model, per TTA, and the ensemble's mean softmax."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = {name: load_model(path, device) for name, path in checkpoints.items()}
    image_size = next(iter(loaded.values()))[1].image_size
    names = list(loaded) + (["ensemble"] if ensemble else [])
    cms = {(n, t.name): torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64) for n in names
           for t in ttas}
    samples = find_samples(data_root, split)
    for sample in tqdm(samples, desc=f"evaluate {split}", unit="img", disable=not progress):
        image, truth = read_sample(sample)
        for tta in ttas:
            total = None
            for name, (model, _) in loaded.items():
                probs = predict_probs([model], image, image_size, tta, device)
                cms[(name, tta.name)] += confusion_matrix(probs.argmax(0).cpu(), truth)
                total = probs if total is None else total + probs
            if ensemble:
                cms[("ensemble", tta.name)] += confusion_matrix(total.argmax(0).cpu(), truth)
    rows = []
    for (name, tta_name), cm in cms.items():
        row = {"model": name, "tta": tta_name, "split": split, "images": len(samples),
               "miou_full": mean_iou(cm)}
        row.update({f"iou_full_{k}": float(v) for k, v in zip(CLASS_KEYS, iou_per_class(cm))})
        rows.append(row)
    return pd.DataFrame(rows)


def merge_val_table(path: Path, new: pd.DataFrame) -> pd.DataFrame:
    """Re-evaluating a (model, tta, split) replaces its row; others are kept."""
    if path.is_file():
        old = pd.read_parquet(path)
        new = pd.concat([old, new]).drop_duplicates(["model", "tta", "split"], keep="last")
    return new.reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raycity.evaluate", description=__doc__)
    p.add_argument("--run", required=True, help="a finished run, e.g. results/<name>")
    p.add_argument("--data-root", help="Cityscapes folder (default: the run's)")
    p.add_argument("--split", default="val")
    p.add_argument("--ensemble", action="store_true", help="also the folds' mean softmax")
    p.add_argument("--tta", default="none",
                   help="test-time augmentation, e.g. flip or flip,0.75,1.0,1.25 (scales of "
                        "image_size); the plain prediction is always scored too")
    args = p.parse_args(argv)
    try:
        run_dir = Path(args.run)
        tta = TTA.parse(args.tta)
        ttas = [TTA()] + ([tta] if tta != TTA() else [])
        table = evaluate_models(run_checkpoints(run_dir), run_data_root(run_dir, args.data_root),
                                args.split, ttas, args.ensemble)
        out = run_dir / "val.parquet"
        atomic_write_parquet(merge_val_table(out, table), out)
        from raycity.report import write_report

        write_report(run_dir, figures=False)
    except (ValueError, *user_errors()) as err:
        return fail(err)
    print(table[["model", "tta", "miou_full"]].to_string(index=False))
    print(f"written: {out} (and {run_dir / 'report.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
