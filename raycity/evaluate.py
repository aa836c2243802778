"""`python -m raycity.evaluate`: each fold's best model and the fold ensemble on the official
split (val by default), scored as cityscapesScripts scores it; written to val.parquet.

`--split folds` scores each fold's best model on that fold's own validation images instead: the
numbers of Table 1, recomputed from the exported checkpoints by the evaluation code path.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from raycity.cli import fail, user_errors
from raycity.constants import CLASS_KEYS, CONFUSION, NUM_CLASSES
from raycity.data import find_samples
from raycity.data.layout import Sample
from raycity.data.transforms import resize_mask
from raycity.engine import pick_device
from raycity.inference import (
    TTA,
    load_model_meta,
    predict_batch,
    readable_batches,
    threads_like_training,
)
from raycity.metrics import confusion_matrix, iou_per_class, mean_iou
from raycity.results import atomic_write_parquet
from raycity.run import RunDir

FOLDS = "folds"  # the pseudo-split: each fold's own validation images


def score_rows(cms: dict[tuple[str, str], dict[str, torch.Tensor]], split: str, images: int,
               skipped: int) -> pd.DataFrame:
    rows = []
    for (name, tta_name), by_res in cms.items():
        row = {"model": name, "tta": tta_name, "split": split, "images": images,
               "skipped": skipped}
        for res, cm in by_res.items():
            row[f"miou_{res}"] = mean_iou(cm)
            row.update({f"iou_{res}_{k}": float(v) for k, v in zip(CLASS_KEYS, iou_per_class(cm))})
        row[CONFUSION] = by_res["full"].flatten().tolist()  # rows true, columns predicted
        rows.append(row)
    return pd.DataFrame(rows)


def _zeros() -> torch.Tensor:
    return torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)


def evaluate_models(checkpoints: dict[str, Path], data_root: str, split: str, ttas: list[TTA],
                    ensemble: bool, device: torch.device | None = None, progress: bool = True,
                    samples: Sequence[Sample] | None = None) -> pd.DataFrame:
    """One pass over the split; per model, per TTA, and the ensemble's mean softmax."""
    device = device or pick_device()
    loaded = {name: load_model_meta(path, device) for name, path in checkpoints.items()}
    cfg, meta = next(iter(loaded.values()))[1:]
    with threads_like_training(meta, device):
        return _evaluate_models(loaded, cfg, data_root, split, ttas, ensemble, device, progress,
                                samples)


def _evaluate_models(loaded: dict, cfg, data_root: str, split: str, ttas: list[TTA],
                     ensemble: bool, device: torch.device, progress: bool,
                     samples: Sequence[Sample] | None) -> pd.DataFrame:
    names = list(loaded) + (["ensemble"] if ensemble else [])
    cms = {(n, t.name): {"full": _zeros()} for n in names for t in ttas}
    samples = list(samples) if samples is not None else find_samples(data_root, split)
    images = skipped = 0
    bar = tqdm(total=len(samples), desc=f"evaluate {split}", unit="img", disable=not progress)
    for kept, pairs, bad in readable_batches(samples, cfg.batch_size, cfg.skip_bad_samples):
        skipped += bad
        images += len(kept)
        bar.update(len(kept) + bad)
        if not kept:
            continue
        truths = [truth for _, truth in pairs]
        for tta in ttas:
            totals = None
            for name, (model, _, _) in loaded.items():
                preds = predict_batch([model], [image for image, _ in pairs], cfg, tta, device)
                for pred, truth in zip(preds, truths):
                    cms[(name, tta.name)]["full"] += confusion_matrix(pred.classes_full.cpu(),
                                                                      truth)
                totals = [p.full for p in preds] if totals is None else \
                    [t + p.full for t, p in zip(totals, preds)]
            if ensemble:
                for total, truth in zip(totals, truths):
                    cms[("ensemble", tta.name)]["full"] += confusion_matrix(
                        total.argmax(0).cpu(), truth)
    bar.close()
    return score_rows(cms, split, images, skipped)


def evaluate_folds(run_dir: Path, data_root: str, device: torch.device | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """Each fold's best model on its own validation images, at both resolutions, batched as
    validation batches them: equal to that fold's row of summary.parquet."""
    device = device or pick_device()
    files = RunDir(run_dir)
    folds = {split.fold: split.val for split in files.folds()}
    tables = []
    for name, path in files.models().items():
        model, cfg, meta = load_model_meta(path, device)
        samples = [Sample(data_root, *key.split("/")) for key in folds[int(name[4:])]]
        with threads_like_training(meta, device):
            tables.append(_score_fold(name, model, cfg, samples, device, progress))
    return pd.concat(tables, ignore_index=True)


def _score_fold(name: str, model: torch.nn.Module, cfg, samples: list[Sample],
                device: torch.device, progress: bool) -> pd.DataFrame:
    cms = {"low": _zeros(), "full": _zeros()}
    images = skipped = 0
    for kept, pairs, bad in tqdm(readable_batches(samples, cfg.batch_size,
                                                  cfg.skip_bad_samples),
                                 desc=f"evaluate {name}", disable=not progress):
        skipped += bad
        images += len(kept)
        if not kept:
            continue
        preds = predict_batch([model], [image for image, _ in pairs], cfg, device=device,
                              low_res=True)
        for pred, (_, truth) in zip(preds, pairs):
            cms["full"] += confusion_matrix(pred.classes_full.cpu(), truth)
            cms["low"] += confusion_matrix(pred.classes_low.cpu(),
                                           resize_mask(truth, cfg.image_size))
    return score_rows({(name, TTA().name): cms}, FOLDS, images, skipped)


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
    p.add_argument("--split", default="val",
                   help="val (default), another official split, or 'folds': each fold's model "
                        "on its own validation images (Table 1 recomputed)")
    p.add_argument("--ensemble", action="store_true", help="also the folds' mean softmax")
    p.add_argument("--tta", default="none",
                   help="test-time augmentation, e.g. flip or flip,0.75,1.0,1.25 (scales of "
                        "image_size); the plain prediction is always scored too")
    args = p.parse_args(argv)
    try:
        run_dir = Path(args.run)
        tta = TTA.parse(args.tta)
        data_root = RunDir(run_dir).data_root(args.data_root)
        if args.split == FOLDS:
            if args.ensemble or tta != TTA():
                raise ValueError("--split folds scores each fold's model without TTA, as "
                                 "Table 1 does; drop --ensemble and --tta")
            table = evaluate_folds(run_dir, data_root)
        else:
            ttas = [TTA()] + ([tta] if tta != TTA() else [])
            table = evaluate_models(RunDir(run_dir).models(), data_root, args.split, ttas,
                                    args.ensemble)
        out = RunDir(run_dir).val
        atomic_write_parquet(merge_val_table(out, table), out)
        from raycity.report import write_report

        write_report(run_dir, figures=False)
    except (ValueError, *user_errors()) as err:
        return fail(err)
    columns = ["model", "tta", *(c for c in ("miou_low", "miou_full") if c in table)]
    print(table[columns].to_string(index=False))
    if table["skipped"].sum():
        print(f"skipped {int(table['skipped'].max())} unreadable sample(s) (--skip-bad-samples)")
    print(f"written: {out} (and {run_dir / 'report.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
