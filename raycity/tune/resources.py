"""What each fold trial asks Ray for, and how many can run at once: plain arithmetic over the
nodes' resources (unit-tested without Ray), plus reading those resources from Ray."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from raycity.config import Config
from raycity.model import parameter_count, tensor_bytes
from raycity.run import RunError
from raycity.training import CUDA_PREFETCH, cpu_split

GIB = 2**30
RUNTIME_BYTES = GIB // 2  # torch, the Ray worker and the loader, measured ≈ 0.5 GiB of RSS
ACTIVATIONS_512x1024_B2 = 4.86 * GIB  # saved for backward in fp32 (benchmarks/memory.py)
# one loader worker's own memory: 59-90 MiB private (smaps_rollup) measured per worker decoding
# 2048×1024 pairs for the seed's 512×1024 (the rest of its ≈ 500 MiB RSS is torch, shared)
WORKER_BYTES = 128 * 2**20
FULL_LABEL = (1024, 2048)  # Cityscapes' label size


@dataclass(frozen=True)
class Node:
    """What one alive Ray node offers (resources, not what is free right now)."""

    name: str
    cpus: float
    gpus: float
    memory: float


@dataclass(frozen=True)
class TrialPlan:
    """The resources every fold trial asks for, and how many can run at once."""

    cpus: float
    gpus: float
    memory: int
    concurrent: int


def cluster_nodes() -> list[Node]:
    import ray

    return [Node(n.get("NodeManagerAddress", n["NodeID"][:8]), n["Resources"].get("CPU", 0.0),
                 n["Resources"].get("GPU", 0.0), n["Resources"].get("memory", 0.0))
            for n in ray.nodes() if n.get("Alive")]


def default_gpus_per_trial(nodes: list[Node]) -> float:
    """One GPU per fold when the cluster has GPUs, else the CPU — decided by the cluster's
    resources, not by whether the driver's own process sees CUDA (a CPU head in front of GPU
    workers is the usual cluster)."""
    return 1.0 if any(n.gpus >= 1 for n in nodes) else 0.0


def pinned(nbytes: int) -> int:
    """What torch's pinned-memory allocator takes for a block: the next power of two."""
    return 1 << max(0, (nbytes - 1).bit_length())


def state_host_bytes(cfg: Config, on_gpu: bool) -> int:
    """Host buffers a fold's checkpoints are written from: its full state (weights, BatchNorm
    statistics, Adam's two moments and step per parameter) and its best weights. For a GPU
    fold they are pinned, block by block, each rounded up by the allocator: the seed model's
    2.36 GB take 3.90 GB."""
    weights, params = tensor_bytes(tuple(cfg.decoder_channels))
    blocks = weights + params + params + [4] * len(params) + weights
    return sum(pinned(b) if on_gpu else b for b in blocks)


def loader_host_bytes(cfg: Config, workers: int) -> int:
    """A GPU fold's two pools of persistent loader workers (training and validation), and the
    batches they keep in flight: `prefetch` per worker in shared memory, each pinned once more
    (rounded) by the loader's pin-memory thread. Validation batches carry the full-size labels."""
    if workers == 0:
        return 0
    h, w = cfg.image_size
    full_h, full_w = cfg.synthetic_size if cfg.data_root is None else FULL_LABEL
    train = cfg.batch_size * (3 * h * w * 4 + h * w * 8)  # fp32 images, int64 labels
    val = train + cfg.batch_size * full_h * full_w  # and the uint8 labels at full size
    in_flight = workers * CUDA_PREFETCH
    return (2 * workers * WORKER_BYTES
            + in_flight * (train + pinned(train)) + in_flight * (val + pinned(val)))


def trial_memory_bytes(cfg: Config, on_gpu: bool, workers: int = 0) -> int:
    """Host memory one trial needs, requested from Ray so that it never starts more trials than
    fit (pinned memory cannot be swapped out). Every trial holds the host buffers its
    checkpoints are written from and its runtime; a GPU trial its loader workers and their
    batches; a trial training on the CPU also holds weights, gradients and Adam moments (4 fp32
    copies of the parameters) and its activations, scaled from the seed's 512×1024, batch 2 by
    pixels × batch."""
    need = RUNTIME_BYTES + state_host_bytes(cfg, on_gpu)
    if on_gpu:
        need += loader_host_bytes(cfg, workers)
    else:
        h, w = cfg.image_size
        need += 4 * 4 * parameter_count(tuple(cfg.decoder_channels)) + int(
            ACTIVATIONS_512x1024_B2 * h * w * cfg.batch_size / (512 * 1024 * 2))
    return int(need)


def node_slots(node: Node, gpus: float, memory: int, cpus: float | None = None) -> int:
    """How many trials fit on `node` at once, counting CPUs only when `cpus` is given."""
    if node.cpus <= 0:
        return 0
    limits = [int(node.memory // memory)]
    if gpus > 0:
        limits.append(int(node.gpus / gpus + 1e-9))
    if cpus is not None:
        limits.append(int(node.cpus / cpus + 1e-9))
    return max(0, min(limits))


def plan_trials(nodes: list[Node], trials: int, gpus: float, memory: int,
                cpus: float | None = None) -> TrialPlan:
    """CPUs per trial from how many trials can really run at once.

    GPUs and memory decide how many trials run together (with 1 GPU and 3 folds at 1 GPU each,
    one at a time); those share the CPUs: each gets the largest share that still lets them all
    run, as whole CPUs (whole torch threads, whole loader workers), or fractions of one CPU
    when they outnumber the CPUs. `cpus` (--cpus-per-trial) overrides the share.
    """
    if cpus is not None:
        concurrent = min(trials, sum(node_slots(n, gpus, memory, cpus) for n in nodes))
        return TrialPlan(cpus, gpus, memory, concurrent)
    parallel = min(trials, sum(node_slots(n, gpus, memory) for n in nodes))
    if parallel == 0:
        return TrialPlan(1.0, gpus, memory, 0)

    def fits(share: float) -> bool:
        return sum(node_slots(n, gpus, memory, share) for n in nodes) >= parallel

    whole = [c for c in range(int(max(n.cpus for n in nodes)), 0, -1) if fits(c)]
    if whole:
        return TrialPlan(float(whole[0]), gpus, memory, parallel)
    low, high = 0.001, 1.0  # fractional: the largest share (to 1/1000) with which all fit
    while high - low > 0.0005:
        mid = (low + high) / 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return TrialPlan(math.floor(low * 1000) / 1000, gpus, memory, parallel)


def fold_plan(cfg: Config, nodes: list[Node], trials: int, gpus: float,
              cpus: float | None = None) -> TrialPlan:
    """`plan_trials` for the fold recipe: a GPU fold's loader workers are its CPUs less one, so
    its memory depends on its CPU share, which depends on how many folds fit in memory;
    settled by repeating the plan, and the request then counts the workers of the share."""
    memory = trial_memory_bytes(cfg, gpus > 0)
    plan = plan_trials(nodes, trials, gpus, memory, cpus)
    if gpus == 0:
        return plan
    for _ in range(4):
        workers = cpu_split(plan.cpus, torch.device("cuda"), cfg.num_workers)[1]
        memory = max(memory, trial_memory_bytes(cfg, True, workers))
        settled = plan_trials(nodes, trials, gpus, memory, cpus)
        if settled == plan:
            break
        plan = settled
    workers = cpu_split(plan.cpus, torch.device("cuda"), cfg.num_workers)[1]
    return dataclasses.replace(plan, memory=max(memory, trial_memory_bytes(cfg, True, workers)))


def check_placeable(nodes: list[Node], cpus: float, gpus: float, memory: int) -> None:
    """A trial that no node can hold would wait forever; say which flag asks too much."""
    if any(n.cpus >= cpus and n.gpus >= gpus and n.memory >= memory for n in nodes):
        return
    most_gpus = max((n.gpus for n in nodes), default=0)
    most_cpus = max((n.cpus for n in nodes), default=0)
    most_memory = max((n.memory for n in nodes), default=0)
    if gpus > most_gpus:
        where = "no Ray node has a GPU" if most_gpus == 0 else \
            f"the Ray node with the most GPUs has {most_gpus:g}"
        raise RunError(f"--gpus-per-trial {gpus:g}: {where}; use --gpus-per-trial 0 to train "
                       f"on CPUs, or add GPU nodes to the cluster")
    if cpus > most_cpus:
        raise RunError(f"--cpus-per-trial {cpus:g}: the largest Ray node has {most_cpus:g} CPUs; "
                       f"ask for at most that (or omit the flag for a fair share)")
    if memory > most_memory:
        raise RunError(f"one trial needs about {memory / GIB:.1f} GiB of host memory and the "
                       f"largest Ray node offers {most_memory / GIB:.1f} GiB; lower --batch-size "
                       f"or --image-size, or train on a GPU")
    raise RunError(f"no single Ray node offers --cpus-per-trial {cpus:g}, --gpus-per-trial "
                   f"{gpus:g} and {memory / GIB:.1f} GiB of memory together; lower one of them")
