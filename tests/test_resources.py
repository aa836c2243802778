"""What each fold asks Ray for: placement on the GPUs Ray grants, CPU shares from how many
trials really run at once, and requests no node can hold refused up front."""

from __future__ import annotations

import math

import pytest
import torch

from raycity.config import preset
from raycity.run import RunError
from raycity.tune.resources import (
    GIB,
    WORKER_BYTES,
    Node,
    check_placeable,
    default_gpus_per_trial,
    fold_plan,
    loader_host_bytes,
    plan_trials,
    state_host_bytes,
    trial_memory_bytes,
)
from raycity.tune.trainable import device_for

GPU_TRIAL = 4 * GIB  # what a GPU trial asks of host memory, roughly


@pytest.mark.parametrize("shape, nodes, gpus, memory, cpus, concurrent", [
    # a laptop: 2 CPUs, no GPU, 3 folds that fit in memory together: a third of the CPUs each
    ("CPU-only", [Node("laptop", 2, 0, 24 * GIB)], 0, 5 * GIB, 0.666, 3),
    # one GPU, a fold per GPU: one fold at a time, and that fold gets every CPU
    ("1 GPU × 3 folds", [Node("box", 16, 1, 128 * GIB)], 1, GPU_TRIAL, 16, 1),
    # three GPUs: three folds at once, the CPUs split three ways
    ("3 GPUs × 3 folds", [Node("box", 16, 3, 128 * GIB)], 1, GPU_TRIAL, 5, 3),
    # two folds packed on one GPU: two at once, half the CPUs each
    ("0.5 GPU packing", [Node("box", 16, 1, 128 * GIB)], 0.5, GPU_TRIAL, 8, 2),
    # a CPU-only head in front of a worker with 2 GPUs: the head takes no fold
    ("2-node cluster", [Node("head", 4, 0, 16 * GIB), Node("worker", 16, 2, 128 * GIB)], 1,
     GPU_TRIAL, 8, 2),
    # memory decides too: 2 CPUs, but only two trials fit in memory
    ("memory-bound", [Node("laptop", 2, 0, 11 * GIB)], 0, 5 * GIB, 1, 2),
])
def test_cpu_share_follows_real_concurrency(shape, nodes, gpus, memory, cpus, concurrent):
    plan = plan_trials(nodes, 3, gpus, memory)
    assert (plan.cpus, plan.concurrent) == (cpus, concurrent), shape
    assert plan.gpus == gpus and plan.memory == memory


def test_flag_overrides_the_share():
    plan = plan_trials([Node("box", 16, 3, 128 * GIB)], 3, 1, GPU_TRIAL, cpus=2)
    assert (plan.cpus, plan.concurrent) == (2, 3)


def test_default_gpus_come_from_the_cluster_not_the_driver():
    assert default_gpus_per_trial([Node("head", 4, 0, GIB), Node("worker", 8, 2, GIB)]) == 1
    assert default_gpus_per_trial([Node("laptop", 2, 0, GIB)]) == 0


def test_unplaceable_requests_name_the_flag():
    cpu_nodes = [Node("a", 2, 0, 16 * GIB), Node("b", 2, 0, 16 * GIB)]
    with pytest.raises(RunError, match=r"--gpus-per-trial 1: no Ray node has a GPU"):
        check_placeable(cpu_nodes, 1, 1, GIB)
    with pytest.raises(RunError, match=r"--cpus-per-trial 64: the largest Ray node has 2 CPUs"):
        check_placeable(cpu_nodes, 64, 0, GIB)
    with pytest.raises(RunError, match=r"GiB of host memory .* offers 16.0 GiB"):
        check_placeable(cpu_nodes, 1, 0, 20 * GIB)
    # each fits somewhere, but not together on one node
    mixed = [Node("gpu", 1, 1, 16 * GIB), Node("cpu", 8, 0, 16 * GIB)]
    with pytest.raises(RunError, match="no single Ray node offers --cpus-per-trial 4, "
                                       "--gpus-per-trial 1"):
        check_placeable(mixed, 4, 1, GIB)
    check_placeable(mixed, 1, 1, GIB)  # this one fits


def seed_blocks():
    with torch.device("meta"):
        from raycity.model import UNetResNet50

        model = UNetResNet50()
    weights = [t.numel() * t.element_size() for t in model.state_dict().values()]
    params = [p.numel() * 4 for p in model.parameters()]
    return weights, params


def test_a_gpu_folds_pinned_buffers_count_as_the_allocator_rounds_them():
    """The checkpoints' host copies of a GPU fold are pinned, block by block, and torch's
    pinned allocator rounds every block up to a power of two: the seed model's state + best
    weights (2.36 GB) take 3.90 GB. A CPU fold's copies are not rounded."""
    weights, params = seed_blocks()
    blocks = weights + params + params + [4] * len(params) + weights  # state, then best
    assert sum(blocks) == pytest.approx(2.36e9, rel=1e-3)
    rounded = sum(2 ** math.ceil(math.log2(b)) for b in blocks)
    assert rounded == pytest.approx(3.904e9, rel=1e-3)
    assert state_host_bytes(preset("seed"), on_gpu=True) == rounded
    assert state_host_bytes(preset("seed"), on_gpu=False) == sum(blocks)


def test_a_gpu_folds_request_counts_its_loader_workers_and_their_batches():
    """Seed recipe, 15 loader workers: two persistent pools (training, validation), 4 batches
    ahead per worker, each in shared memory and pinned again; validation batches carry the
    1024×2048 labels."""
    cfg = preset("seed", data_root="/data")
    train = 2 * (3 * 512 * 1024 * 4 + 512 * 1024 * 8)
    val = train + 2 * 1024 * 2048
    pin = lambda b: 2 ** math.ceil(math.log2(b))  # noqa: E731
    loader = 2 * 15 * WORKER_BYTES + 15 * 4 * (train + pin(train) + val + pin(val))
    assert loader_host_bytes(cfg, 15) == loader
    gpu = trial_memory_bytes(cfg, True, workers=15)
    assert gpu == GIB // 2 + state_host_bytes(cfg, True) + loader
    # before: runtime + 4 unrounded fp32 copies of the parameters, and no loader at all
    before = GIB // 2 + 16 * sum(p // 4 for p in seed_blocks()[1])
    assert before / GIB == pytest.approx(2.70, abs=0.01) and gpu / GIB > 2 * before / GIB


def test_a_cpu_folds_request_counts_training_and_activations():
    cpu = trial_memory_bytes(preset("seed"), False)
    params = sum(seed_blocks()[1]) // 4
    assert cpu - GIB // 2 - state_host_bytes(preset("seed"), False) - 16 * params == int(
        4.86 * GIB)
    assert trial_memory_bytes(preset("smoke"), False) < cpu  # activations scale with pixels


def test_the_request_follows_the_configured_decoder():
    """The smoke preset's narrow decoder: its state and training copies are what its own
    parameters take, not the seed's (a request for 147 M parameters would place 4.7× fewer
    smoke folds than fit)."""
    smoke = preset("smoke")
    with torch.device("meta"):
        from raycity.model import UNetResNet50

        model = UNetResNet50(decoder_channels=smoke.decoder_channels)
    weights = [t.numel() * t.element_size() for t in model.state_dict().values()]
    params = [p.numel() * 4 for p in model.parameters()]
    assert 30e6 < sum(params) / 4 < 32e6
    assert state_host_bytes(smoke, False) == sum(weights + params + params + weights) + 4 * len(
        params)
    assert state_host_bytes(smoke, False) < state_host_bytes(preset("seed"), False) / 4.5


def test_the_plan_settles_workers_and_memory_together():
    """One GPU, 16 CPUs: the one fold at a time gets 16 CPUs, 15 of them loader workers, and
    asks for their memory; on a node whose memory holds fewer such folds than its GPUs, fewer
    run at once (pinned memory cannot swap)."""
    cfg = preset("seed", data_root="/data")
    plan = fold_plan(cfg, [Node("box", 16, 1, 128 * GIB)], 3, 1)
    assert (plan.cpus, plan.concurrent) == (16, 1)
    assert plan.memory == trial_memory_bytes(cfg, True, workers=15)
    small = fold_plan(cfg, [Node("box", 16, 3, 24 * GIB)], 3, 1)
    assert small.concurrent * small.memory <= 24 * GIB
    assert small.memory == trial_memory_bytes(cfg, True,
                                              workers=int(small.cpus) - 1)


def test_a_fold_granted_no_gpu_on_a_gpu_node_plans_as_a_cpu_fold():
    """--gpus-per-trial 0 on a node with GPUs: the request holds no GPU, and the memory a CPU
    fold needs (its weights, gradients, Adam moments and activations), not a GPU fold's pinned
    buffers; Ray then grants no GPU id, and the trial trains on the CPU (below)."""
    cfg = preset("smoke", epochs=1, folds=2)
    plan = fold_plan(cfg, [Node("box", 2, 2, 24 * GIB)], 2, 0)
    assert plan.gpus == 0 and plan.concurrent == 2
    assert plan.memory == trial_memory_bytes(cfg, False) > trial_memory_bytes(cfg, True, 0)


@pytest.mark.parametrize("gpu_ids, visible, device", [
    ([], None, "cpu"),  # granted none: the CPU, even on a node with GPUs
    ([], "0,1", "cpu"),
    ([3], "3", "cuda:0"),  # Ray hides the others: GPU 3 is the first one this process sees
    ([2], "0,1,2,3", "cuda:2"),
    (["1"], None, "cuda:1"),  # without CUDA_VISIBLE_DEVICES, the id is the index
])
def test_device_is_the_granted_gpu(gpu_ids, visible, device):
    assert device_for(gpu_ids, visible) == torch.device(device)
