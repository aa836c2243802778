"""The GPU recipe's switches, run on the CPU: autocast precision, channels-last, loss scaling, and
the host copies and resumes they must survive (a resumed channels-last fold on CUDA could not
take its first step: its Adam moments came back in another layout)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from raycity.config import Config, preset
from raycity.data import find_samples
from raycity.folds import FoldSplit
from raycity.hostcopy import HostBuffers
from raycity.snapshots import FoldCheckpoints
from raycity.speed import resolve_speed
from raycity.training import REPLAYED, build_model, build_optimizer, match_layouts, run_fold

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)
METRICS = ["train_loss", "val_loss", "miou_low", "miou_full"]


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


def test_forced_gpu_recipe_resumes_to_the_numbers_of_an_uninterrupted_fold(forced, tmp_path):
    """bf16 autocast, channels-last and fused Adam on the CPU: a fold stopped after epoch 1,
    its state written and read back, trains epochs 2 and 3 to the very numbers of a fold that
    ran through — which fails if the moments come back in the wrong layout."""
    cfg, fold = forced
    through = []
    run_fold(cfg, fold, cfg.data_root, lambda m, s: through.append(m), cpus=1)
    assert {m["precision"] for m in through} == {"bf16"} and all(m["channels_last"]
                                                                   for m in through)

    class Stop(Exception):
        pass

    def stop_after_epoch_1(metrics, saved):
        raise Stop

    with pytest.raises(Stop):
        run_fold(cfg, fold, cfg.data_root, stop_after_epoch_1, sync_epochs={1},
                 checkpoints=FoldCheckpoints(str(tmp_path)), cpus=1)
    resumed = []
    run_fold(cfg, fold, cfg.data_root, lambda m, s: resumed.append(m), sync_epochs={1},
             checkpoints=FoldCheckpoints(str(tmp_path)), cpus=1)
    assert [(m["epoch"], m.get(REPLAYED, False)) for m in resumed] == [
        (1, True), (2, False), (3, False)]
    for epoch in (2, 3):
        for key in METRICS:
            assert resumed[epoch - 1][key] == pytest.approx(through[epoch - 1][key], rel=1e-6), \
                (epoch, key)


def test_fp16_with_loss_scaling_trains_and_resumes_its_scale(forced, tmp_path, monkeypatch):
    """The fp16 branch (GPUs without native bf16) run on the CPU: the GradScaler steps, and its
    scale travels in the state."""
    import raycity.training as training
    from raycity.speed import Speed

    cfg, fold = forced
    monkeypatch.setattr(training, "fold_speed",
                        lambda cfg, device: Speed(device, "fp16", channels_last=True))
    said = []
    run_fold(cfg.replace(epochs=2), fold, cfg.data_root, lambda m, s: said.append(m),
             checkpoints=FoldCheckpoints(str(tmp_path), keep_states=True), sync_epochs={1, 2},
             cpus=1)
    assert [m["precision"] for m in said] == ["fp16", "fp16"]
    assert all(np.isfinite(m["train_loss"]) for m in said)
    state = FoldCheckpoints(str(tmp_path)).resume()
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]


def test_compiled_fold_on_the_cpu(forced):
    """--compile (inductor) on the CPU, with the forced GPU recipe: one epoch trains and is
    recorded as compiled."""
    cfg, fold = forced
    said = []
    run_fold(cfg.replace(epochs=1, compile=True), fold, cfg.data_root,
             lambda m, s: said.append(m), cpus=2)
    assert said[0]["compiled"] and np.isfinite(said[0]["train_loss"])
