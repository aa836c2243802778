"""`python -m raycity.predict`: full-resolution label PNGs that cityscapesScripts evaluates.

Writes OUT/labelIds/<city>/<city>_<seq>_<frame>_pred_labelIds.png (trainIds mapped back to
label ids) and, with --color, OUT/color/<city>/…_pred_color.png. The two live in separate trees
because cityscapesScripts takes every PNG matching <city>_<seq>_<frame>*.png under its
prediction path as a candidate; point it at OUT/labelIds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from raycity.cli import fail, user_errors
from raycity.constants import TRAIN_TO_LABEL
from raycity.data import find_samples
from raycity.data.layout import Sample, read_png
from raycity.engine import pick_device
from raycity.figures import colorize
from raycity.inference import (
    TTA,
    load_model_meta,
    predict_batch,
    readable_batches,
    threads_like_training,
)
from raycity.run import RunDir


def export_predictions(checkpoint: Path, data_root: str, split: str, out: Path, *,
                       color: bool = False, tta: TTA = TTA(), progress: bool = True) -> tuple[int, int]:
    """(written, skipped): PNGs for every readable image, batched as validation batches."""
    device = pick_device()
    model, cfg, meta = load_model_meta(checkpoint, device)
    with threads_like_training(meta, device):
        return _export(model, cfg, data_root, split, out, color, tta, progress, device)


def _export(model: torch.nn.Module, cfg, data_root: str, split: str, out: Path, color: bool,
            tta: TTA, progress: bool, device: torch.device) -> tuple[int, int]:
    samples = find_samples(data_root, split)
    written = skipped = 0
    bar = tqdm(total=len(samples), desc=f"predict {split}", unit="img", disable=not progress)
    for kept, pairs, bad in readable_batches(samples, cfg.batch_size, cfg.skip_bad_samples,
                                             reader=read_image):
        skipped += bad
        bar.update(len(kept) + bad)
        if not kept:
            continue
        preds = predict_batch([model], [image for image, _ in pairs], cfg, tta, device)
        for sample, pred in zip(kept, preds):
            train_ids = pred.classes_full.cpu().numpy()
            target = out / "labelIds" / sample.city / f"{sample.name}_pred_labelIds.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(TRAIN_TO_LABEL[train_ids]).save(target)
            if color:
                target = out / "color" / sample.city / f"{sample.name}_pred_color.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(colorize(train_ids.astype("uint8"))).save(target)
            written += 1
    bar.close()
    return written, skipped


def read_image(sample: Sample) -> tuple[torch.Tensor, None]:
    """Prediction needs no label (the test split has none worth reading)."""
    from torchvision.io import ImageReadMode

    return read_png(sample.image_path, ImageReadMode.RGB), None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raycity.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a finished run, e.g. results/<name> (with --fold)")
    source.add_argument("--checkpoint", help="a raycity checkpoint file")
    p.add_argument("--fold", type=int, default=1, help="which fold's best model (default 1)")
    p.add_argument("--data-root", help="Cityscapes folder (default: the run's)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--color", action="store_true", help="also write colour PNGs")
    p.add_argument("--tta", default="none", help="e.g. flip or flip,0.75,1.0,1.25")
    args = p.parse_args(argv)
    try:
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
            if not args.data_root:
                raise FileNotFoundError("--checkpoint needs --data-root")
            data_root = args.data_root
        else:
            checkpoints = RunDir(args.run).models()
            if f"fold{args.fold}" not in checkpoints:
                raise FileNotFoundError(f"{args.run}: no checkpoint for --fold {args.fold}; "
                                        f"have {', '.join(checkpoints)}")
            checkpoint = checkpoints[f"fold{args.fold}"]
            data_root = RunDir(args.run).data_root(args.data_root)
        n, skipped = export_predictions(checkpoint, data_root, args.split, Path(args.out),
                                        color=args.color, tta=TTA.parse(args.tta))
    except (ValueError, *user_errors()) as err:
        return fail(err)
    print(f"{n} predictions in {Path(args.out) / 'labelIds'}"
          + (f"; skipped {skipped} unreadable image(s) (--skip-bad-samples)" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
