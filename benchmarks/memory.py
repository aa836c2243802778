"""Memory of one training trial at the seed's size: what decides `--gpus-per-trial 0.5`.

On CUDA: the measured peak (torch.cuda.max_memory_allocated) of training steps with bf16
autocast. On CPU (no GPU here): the bytes autograd saves for backward in one step, counted with
saved_tensors_hooks, plus weights, gradients and Adam state — the same quantities a GPU holds.

    python benchmarks/memory.py [--image-size 512x1024] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

from raycity.cli import image_size  # noqa: E402
from raycity.config import SEED_DECODER, preset  # noqa: E402
from raycity.engine import pick_device  # noqa: E402
from raycity.training import build_model, build_optimizer, fold_speed  # noqa: E402

GIB = 2**30


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--image-size", type=image_size, default=(512, 1024))
    p.add_argument("--batch-size", type=int, default=2)
    args = p.parse_args()
    device = pick_device()
    cfg = preset("smoke", decoder_channels=SEED_DECODER, image_size=args.image_size,
                 batch_size=args.batch_size)
    speed = fold_speed(cfg, device)
    model = build_model(cfg, speed)
    optimizer = build_optimizer(cfg, model)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    static = 4 * params  # weights, gradients, Adam's two moments
    x = torch.randn(args.batch_size, 3, *args.image_size, device=device)
    y = torch.randint(0, 19, (args.batch_size, *args.image_size), device=device)
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    rows = [["weights + gradients + Adam state", f"{static / GIB:.2f}"]]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), speed.autocast():
        loss = F.cross_entropy(model(speed.layout(x)).float(), y, ignore_index=255)
    rows.append([f"activations saved for backward ({speed.precision})",
                 f"{saved / GIB:.2f}"])
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        rows.append(["measured peak (max_memory_allocated)",
                     f"{torch.cuda.max_memory_allocated() / GIB:.2f}"])
    else:
        rows.append(["sum (a GPU adds cuDNN workspace and allocator slack)",
                     f"{(static + saved) / GIB:.2f}"])
    print(f"## Memory of one trial ({args.image_size[0]}×{args.image_size[1]}, batch "
          f"{args.batch_size}, {device.type})\n")
    print(table(["what", "GiB"], rows))
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
