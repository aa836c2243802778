"""Training throughput: `engine.train_one_epoch` against a minimal plain-PyTorch loop on the same
model, optimizer and batches, alternated in one run. On CUDA also the achieved TFLOP/s (FLOPs
counted by torch.utils.flop_counter for one forward+backward) and the share of the bf16 peak.

    python benchmarks/train_step.py                       # CPU: 64×128, a few steps
    python benchmarks/train_step.py --image-size 512x1024 --steps 30 --peak-tflops 989   # H100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

from raycity.cli import image_size  # noqa: E402
from raycity.config import SEED_DECODER, preset  # noqa: E402
from raycity.engine import pick_device, train_one_epoch  # noqa: E402
from raycity.speed import SWITCH, Speed  # noqa: E402
from raycity.training import build_model, build_optimizer, fold_speed  # noqa: E402


def batches(n: int, batch: int, size: tuple[int, int], device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, *size, generator=g)
        y = torch.randint(0, 19, (batch, *size), generator=g)
        out.append({"image": x.to(device), "mask": y.to(device), "skipped": 0})
    return out


def plain_loop(model, optimizer, data, speed: Speed) -> None:
    model.train()
    for b in data:
        x = speed.layout(b["image"])
        with speed.autocast():
            loss = F.cross_entropy(model(x).float(), b["mask"], ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()  # one sync at the end, as the engine reads its loss only every 50 steps


def seed_flop_per_image(size: tuple[int, int] = (512, 1024)) -> float:
    """Forward + backward FLOPs of one image at the seed's size, counted without computing."""
    cfg = preset("smoke", decoder_channels=SEED_DECODER)
    model = build_model(cfg, fold_speed(cfg, torch.device("cpu")))
    model = model.to("meta")
    x = torch.randn(1, 3, *size, device="meta")
    y = torch.randint(0, 19, (1, *size), device="meta")
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y, ignore_index=255).backward()
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--image-size", type=image_size, default=None)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--amp", choices=SWITCH, default="auto")
    p.add_argument("--channels-last", choices=SWITCH, default="auto")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak (H100 SXM: 989)")
    args = p.parse_args()
    device = pick_device()
    size = args.image_size or ((512, 1024) if device.type == "cuda" else (64, 128))
    steps = args.steps or (20 if device.type == "cuda" else 4)
    cfg = preset("smoke", decoder_channels=SEED_DECODER, image_size=size, batch_size=args.batch_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    speed = fold_speed(cfg.replace(amp=args.amp, channels_last=args.channels_last), device)
    model = build_model(cfg, speed)
    optimizer = build_optimizer(cfg, model)
    data = batches(steps, args.batch_size, size, device)
    plain_loop(model, optimizer, data[:2], speed)  # warm-up (cuDNN autotuning, allocator)
    sync(device)
    times = {"engine.train_one_epoch": [], "plain PyTorch loop": []}
    for _ in range(args.rounds):  # alternate, so drift hits both equally
        for name in times:
            sync(device)
            start = time.perf_counter()
            if name == "plain PyTorch loop":
                plain_loop(model, optimizer, data, speed)
            else:
                train_one_epoch(model, data, optimizer, speed)
            sync(device)
            times[name].append(time.perf_counter() - start)
    rate = {k: steps * args.batch_size / statistics.median(v) for k, v in times.items()}
    rows = [[k, f"{v:.2f}", f"{v / rate['plain PyTorch loop']:.3f}"] for k, v in rate.items()]
    print(f"## Train step ({size[0]}×{size[1]}, batch {args.batch_size}, {steps} steps × "
          f"{args.rounds} rounds, {device.type}, {speed.precision}, channels-last {speed.channels_last})\n")
    print(table(["loop", "images/s", "vs plain"], rows))
    with FlopCounterMode(display=False) as counter:
        x = data[0]["image"]
        with speed.autocast():
            loss = F.cross_entropy(model(speed.layout(x)).float(), data[0]["mask"],
                                   ignore_index=255)
        loss.backward()
    flop_per_image = counter.get_total_flops() / args.batch_size
    achieved = flop_per_image * rate["engine.train_one_epoch"] / 1e12
    print(f"\ntraining FLOP per image (forward + backward, flop_counter): "
          f"{flop_per_image / 1e12:.3f} TFLOP; achieved {achieved:.2f} TFLOP/s")
    print(f"training FLOP per image at the seed's 512×1024 (flop_counter on the meta device): "
          f"{seed_flop_per_image() / 1e12:.2f} TFLOP")
    if args.peak_tflops:
        print(f"share of the {args.peak_tflops:.0f} TFLOP/s bf16 peak: "
              f"{100 * achieved / args.peak_tflops:.1f} %")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
