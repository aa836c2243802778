"""`python -m raycity.data check|cache|synth`: validate, cache or generate a Cityscapes folder."""

from __future__ import annotations

import argparse
import os
import sys

from raycity.cli import image_size
from raycity.data.layout import DataError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raycity.data")
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="report pairs, sizes and class histogram; fail on bad files")
    cache = sub.add_parser("cache", help="decode images and labels once into memory-mapped arrays")
    synth = sub.add_parser("synth", help="write synthetic street scenes in the official layout")
    for q in (check, cache):
        q.add_argument("--data-root", default=os.environ.get("CITYSCAPES_DATASET"),
                       help="Cityscapes folder (default: $CITYSCAPES_DATASET)")
    cache.add_argument("--image-size", type=image_size, default=(512, 1024),
                       help="training size the cache serves (default 512x1024)")
    cache.add_argument("--scale-jitter", type=float, default=0.2)
    synth.add_argument("--out", required=True)
    synth.add_argument("--train", type=int, default=36)
    synth.add_argument("--val", type=int, default=6)
    synth.add_argument("--size", type=image_size, default=(1024, 2048))
    synth.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.command in ("check", "cache") and not args.data_root:
            raise DataError("--data-root is required (or set $CITYSCAPES_DATASET)")
        if args.command == "check":
            from raycity.data.check import check_dataset, format_report

            print(format_report(check_dataset(args.data_root, progress=sys.stdout.isatty())))
        elif args.command == "cache":
            from raycity.data.cache import build_cache

            print(build_cache(args.data_root, args.image_size, args.scale_jitter))
        else:
            from raycity.data.synthetic import write_synthetic_cityscapes

            print(write_synthetic_cityscapes(args.out, {"train": args.train, "val": args.val},
                                             args.size, args.seed))
    except (DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
