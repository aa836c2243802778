"""What each fold trial asks Ray for, and how many can run at once: plain arithmetic over the
nodes' resources (unit-tested without Ray), plus reading those resources from Ray."""

from __future__ import annotations

import math
from dataclasses import dataclass

from raycity.config import Config
from raycity.model import seed_parameter_count
from raycity.tune.rundir import RunError

GIB = 2**30
RUNTIME_BYTES = GIB // 2  # torch, the Ray worker and the loader, measured ≈ 0.5 GiB of RSS
ACTIVATIONS_512x1024_B2 = 4.86 * GIB  # saved for backward in fp32 (benchmarks/memory.py)


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


def trial_memory_bytes(cfg: Config, on_gpu: bool) -> int:
    """Host memory one trial needs, requested from Ray so that it never starts more trials than
    fit. Every trial holds the host buffers its checkpoints are written from (weights + Adam
    moments, and the best weights: 4 copies of the parameters in fp32) and its runtime; a trial
    training on the CPU also holds weights, gradients and Adam moments (4 more copies) and its
    activations, scaled from the seed's 512×1024, batch 2 by pixels × batch."""
    params = 4 * seed_parameter_count()  # bytes of one fp32 copy of the parameters
    need = RUNTIME_BYTES + 4 * params
    if not on_gpu:
        h, w = cfg.image_size
        need += 4 * params + int(ACTIVATIONS_512x1024_B2 * h * w * cfg.batch_size
                                 / (512 * 1024 * 2))
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
