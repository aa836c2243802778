"""The GPU recipe's switches, run on the CPU: autocast precision, channels-last, loss scaling, and
the host copies and resumes they must survive (a resumed channels-last fold on CUDA could not
take its first step: its Adam moments came back in another layout). Every real run of the
suite (CV, kill and resume, the ASHA sweep whose folds pause and resume through Tune, evaluate =
Table 1) trains with `--channels-last on` (conftest.FORCED_LAYOUT); bf16 and fp16 autocast run
here, in-process."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch

from raycity.config import Config, preset
from raycity.data import find_samples
from raycity.folds import FoldSplit
from raycity.foldstates import FoldCheckpoints
from raycity.hostcopy import HostBuffers
from raycity.speed import match_layouts, resolve_speed
from raycity.training import build_model, build_optimizer, run_fold

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("amp, layout, device, precision, channels_last", [
    ("auto", "auto", CPU, "fp32", False),  # the default on the CPU: as before
    ("on", "on", CPU, "bf16", True),  # the GPU's branches, forced on the CPU
    ("off", "off", GPU, "fp32", False),
])
def test_switches_resolve_per_device(amp, layout, device, precision, channels_last):
    speed = resolve_speed(amp, layout, False, device)
    assert (speed.precision, speed.channels_last) == (precision, channels_last)


@pytest.mark.parametrize("native, precision", [(True, "bf16"), (False, "fp16")])
def test_gpus_without_native_bf16_get_fp16_with_loss_scaling(monkeypatch, native, precision):
    """T4 / V100 emulate bf16; there autocast is fp16 with a GradScaler (torch.cuda stood in)."""
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    speed = resolve_speed("auto", "auto", False, GPU)
    assert speed.precision == precision and speed.channels_last
    assert speed.scaled is (precision == "fp16")
    assert asked == {"including_emulation": False}  # emulated bf16 does not count


def test_configs_written_before_the_switches_still_load():
    assert Config.from_dict({"amp": True, "channels_last": False}).amp == "auto"
    assert Config.from_dict({"amp": False, "channels_last": False}).channels_last == "off"
    with pytest.raises(ValueError, match="amp='fast'"):
        Config(amp="fast")


def test_cli_switches_and_the_old_flags():
    from raycity import cv
    from raycity.cli import build_config

    def parsed(*flags):
        return build_config(cv.parser().parse_args(["--preset", "smoke", *flags]))[0]

    assert (parsed().amp, parsed().channels_last) == ("auto", "auto")
    assert (parsed("--amp", "on", "--channels-last", "on").amp) == "on"
    assert (parsed("--no-amp").amp, parsed("--no-channels-last").channels_last) == ("off", "off")


def test_host_copies_and_files_keep_each_tensors_layout():
    weight = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    state = {"w": weight, "moments": [weight * 2], "step": torch.tensor(3.0)}
    copied = HostBuffers().copy(state)
    assert copied["w"].stride() == weight.stride() == (27, 1, 9, 3)
    assert copied["moments"][0].stride() == weight.stride()
    stream = io.BytesIO()
    torch.save(copied, stream)
    stream.seek(0)
    loaded = torch.load(stream, weights_only=True)
    assert loaded["moments"][0].stride() == weight.stride()
    assert torch.equal(loaded["moments"][0], weight * 2)


def test_a_resumed_optimizers_moments_take_their_parameters_layout(tmp_path):
    """Written by a state that lost them (or trained with another layout), moments are given
    their parameter's strides again: CUDA's fused Adam refuses a mismatch."""
    cfg = preset("smoke")
    speed = resolve_speed("on", "on", False, CPU)
    model = build_model(cfg, speed)
    optimizer = build_optimizer(cfg, model)
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    saved = optimizer.state_dict()
    for moments in saved["state"].values():  # as a state written before the fix came back
        for key in ("exp_avg", "exp_avg_sq"):
            moments[key] = moments[key].contiguous()
    resumed = build_optimizer(cfg, model)
    resumed.load_state_dict(saved)
    assert match_layouts(resumed) > 0
    for group in resumed.param_groups:
        for p in group["params"]:
            for key in ("exp_avg", "exp_avg_sq"):
                assert resumed.state[p][key].stride() == p.stride(), key
    assert match_layouts(resumed) == 0


@pytest.fixture
def forced(tiny_cityscapes):
    """The GPU recipe forced on the CPU, on one batch per epoch: this CPU (AVX2, no bf16 in
    oneDNN) runs bf16 convolutions on slow reference kernels, ≈ 9 s a step of the seed model."""
    root = str(tiny_cityscapes)
    cfg = preset("smoke", data_root=root, amp="on", channels_last="on", epochs=3)
    keys = [s.key for s in find_samples(root, "train")]
    return cfg, FoldSplit(1, tuple(keys[:2]), tuple(keys[2:3]))


def test_fp16_with_loss_scaling_trains_and_resumes_its_scale(forced, tmp_path, monkeypatch):
    """The fp16 branch (GPUs without native bf16) run on the CPU: the GradScaler steps, and its
    scale travels in the state."""
    import raycity.training as training
    from raycity.speed import Speed

    cfg, fold = forced
    monkeypatch.setattr(training, "fold_speed",
                        lambda cfg, device: Speed(device, "fp16", channels_last=True))

    class Stop(Exception):
        pass

    said = []

    def stop_after_epoch_1(metrics, saved):
        said.append(metrics)
        raise Stop

    with pytest.raises(Stop):
        run_fold(cfg.replace(epochs=2), fold, cfg.data_root, stop_after_epoch_1,
                 checkpoints=FoldCheckpoints(str(tmp_path)), sync_epochs={1}, cpus=1)
    assert said[0]["precision"] == "fp16" and np.isfinite(said[0]["train_loss"])
    state = FoldCheckpoints(str(tmp_path)).resume()
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]


INDUCTOR = os.environ.get("RAYCITY_TEST_INDUCTOR") == "1"


@pytest.mark.parametrize("codegen", [
    "none",
    pytest.param("inductor", marks=pytest.mark.skipif(
        not INDUCTOR, reason="a cold inductor compile of the seed model takes ≈ 2 min on 2 "
        "cores: RAYCITY_TEST_INDUCTOR=1 runs it")),
])
def test_compiled_fold_on_the_cpu(forced, monkeypatch, codegen):
    """--compile with the forced GPU recipe: the training forward, its backward and the
    validation forward are each captured whole (no graph break) and run compiled, and the epoch
    is recorded as compiled. What could break in our code is the capture (Dynamo) and the
    autograd split (AOTAutograd), which both run here; inductor's own code generation only
    replaces the graphs' kernels, and costs ≈ 2 min cold on 2 cores, so it runs when asked."""
    from torch._dynamo.backends.debugging import aot_eager, boxed_nop
    from torch._dynamo.utils import counters

    cfg, fold = forced
    compiled, real_compile = [], torch.compile

    def recorded(kind):
        def compiler(graph, inputs):
            compiled.append(kind)
            return boxed_nop(graph, inputs)
        return compiler

    def without_codegen(graph, inputs):
        return aot_eager(graph, inputs, fw_compiler=recorded("forward"),
                         bw_compiler=recorded("backward"))

    def compile_(model, **kwargs):
        compiled.append(type(model).__name__)
        backend = "inductor" if codegen == "inductor" else without_codegen
        return real_compile(model, backend=backend, **kwargs)

    def reset(real_reset=torch._dynamo.reset):  # each fold compiles afresh, in any process
        compiled.append("reset")
        real_reset()

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(torch._dynamo, "reset", reset)
    counters.clear()
    said = []
    run_fold(cfg.replace(epochs=1, compile=True), fold, cfg.data_root,
             lambda m, s: said.append(m), cpus=1)
    assert said[0]["compiled"] and said[0]["precision"] == "bf16" and said[0]["channels_last"]
    assert np.isfinite(said[0]["train_loss"]) and 0 <= said[0]["miou_full"] <= 1
    assert compiled[:2] == ["reset", "UNetResNet50"] and not counters["graph_break"], counters
    assert counters["stats"]["unique_graphs"] == 2  # train and eval; nothing recompiled
    if codegen == "none":
        assert sorted(compiled[2:]) == ["backward", "forward", "forward"]


def test_a_cuda_device_torch_cannot_see_is_one_clear_error(monkeypatch):
    from raycity.speed import DeviceError, check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device(torch.device("cuda", 0))
    with pytest.raises(DeviceError, match="cuda:1 was requested .* sees 1 CUDA device"):
        check_device(torch.device("cuda", 1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="--gpus-per-trial 0"):
        check_device(torch.device("cuda", 0))


def test_in_process_commands_pick_the_gpu_when_there_is_one(monkeypatch):
    from raycity.engine import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == CPU


def test_the_writer_waits_for_the_device_copies_before_it_starts(tmp_path, monkeypatch):
    """Host copies from a GPU are asynchronous: the device is synchronised before the writer
    thread reads the buffers (torch.cuda stood in)."""
    import raycity.foldstates as foldstates

    order = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: order.append("synchronize"))
    ck = FoldCheckpoints(str(tmp_path))
    start = ck._start
    monkeypatch.setattr(ck, "_start", lambda job: (order.append("writer"), start(job)))
    weights = {"w": torch.ones(3)}
    ck.end_of_epoch(1, 0.5, lambda: weights, lambda: {"model": weights, "epoch": 1,
                                                       "meta": {}}, {}, sync=True)
    assert order == ["synchronize", "writer"]
    assert foldstates.FoldCheckpoints  # the module under test
