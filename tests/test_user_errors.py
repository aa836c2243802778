"""Every mistake costs one line: caught before anything launches, naming the flag or file and
what was expected — never a traceback, never a retry, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raycity import cv
from raycity.data.__main__ import main as data_main
from raycity.data.layout import LABEL_SUFFIX


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def first_label(root):
    return sorted((root / "gtFine" / "train").glob(f"*/*{LABEL_SUFFIX}"))[0]


def run(args, out):
    return cv.main(["--preset", "smoke", "--output", str(out), *args])


def wide_resnet_weights() -> dict:
    """A ResNet-50's names with other shapes, as a Wide ResNet-50 or ResNeXt-50 file has."""
    import torch
    from torchvision.models import resnet50

    state = resnet50(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    return state


@pytest.mark.parametrize("weights, expected", [
    ("/nonexistent.pth", "--pretrained '/nonexistent.pth': no such file"),
    ("NOTES", "not a loadable state dict"),
    (["a list", "of strings"], "holds a list, not a state dict of tensors"),
    ("WIDE", "not a ResNet-50 state dict (Error(s) in loading state_dict"),
])
def test_bad_weights_are_refused_before_launch(tmp_path, capsys, weights, expected):
    import torch

    if weights == "NOTES":
        weights = str(tmp_path / "notes.txt")
        (tmp_path / "notes.txt").write_text("my notes, not weights")
    elif not isinstance(weights, str) or weights == "WIDE":
        path = tmp_path / "weights.pth"
        torch.save(wide_resnet_weights() if weights == "WIDE" else weights, path)
        weights = str(path)
    assert run(["--pretrained", weights], tmp_path / "out") == 2
    assert expected in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_imagenet_weights_offline_say_where_to_put_them(tmp_path, capsys, monkeypatch):
    from torchvision.models import ResNet50_Weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    assert run(["--pretrained", "imagenet"], tmp_path / "out") == 2
    line = one_line(capsys)
    assert "resnet50-" in line and "checkpoints" in line and "--pretrained none" in line
    assert not (tmp_path / "out").exists()


def test_a_jpeg_label_is_named_before_launch(tree, tmp_path, capsys):
    label = first_label(tree)
    Image.open(label).convert("RGB").save(label, format="JPEG")
    assert run(["--data-root", str(tree)], tmp_path / "out") == 2
    line = one_line(capsys)
    assert str(label) in line and "a JPEG" in line
    assert not (tmp_path / "out").exists()


def test_a_colour_label_is_named_before_launch(tree, tmp_path, capsys):
    label = first_label(tree)
    Image.open(label).convert("RGB").save(label)
    assert run(["--data-root", str(tree)], tmp_path / "out") == 2
    assert str(label) in one_line(capsys)


def test_a_16_bit_label_above_255_is_one_line_in_check(tree, capsys):
    label = first_label(tree)
    ids = np.array(Image.open(label)).astype(np.uint16)
    ids[0, 0] = 300
    Image.fromarray(ids).save(label)
    assert data_main(["check", "--data-root", str(tree)]) == 2
    line = one_line(capsys)
    assert label.name in line and "16-bit" in line and "300" in line


@pytest.mark.parametrize("args, expected", [
    (["--lr", "inf"], "lr=inf: expected a finite learning rate"),
    (["--lr", "1e30"], "lr=1e+30: expected a finite learning rate in (0, 1]"),
    (["--lr", "nan"], "lr=nan"),
    (["--max-failures", "-1"], "--max-failures -1: expected a number ≥ 0"),
    (["--name", "../escaped"], "--name '../escaped': expected a plain folder name"),
    (["--name", "a/b"], "--name 'a/b'"),
    (["--gpus-per-trial", "2"], "--gpus-per-trial 2: expected 0 (CPU), 1"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial 0: expected a number > 0"),
    (["--plateau-metric", "accuracy"], "plateau_metric='accuracy': expected val_loss or miou_low"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, args, expected):
    assert run(args, tmp_path / "out") == 2
    assert expected in one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_one_line(tmp_path, capsys):
    # /sys takes no new files, even for root (permission bits would say it does)
    assert run([], "/sys/raycity-results") == 2
    assert "--output /sys/raycity-results: cannot write in /sys" in one_line(capsys)
    (tmp_path / "file").write_text("x")
    assert run([], tmp_path / "file" / "results") == 2
    assert "is a file, not a folder" in one_line(capsys)


def test_an_unwritable_demo_cache_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAYCITY_CACHE", "/sys/raycity-cache")
    assert run(["--synthetic-train", "5"], tmp_path / "out") == 2
    line = one_line(capsys)
    assert "cannot write the demo's synthetic scenes into /sys/raycity-cache" in line
    assert "$RAYCITY_CACHE" in line and not (tmp_path / "out").exists()


def test_a_truncated_cache_falls_back_to_the_pngs_with_one_warning(tree):
    from raycity.data.cache import build_cache, cached_reader

    directory = build_cache(tree, (32, 64), 0.2, progress=False)
    images = directory / "images.npy"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    with pytest.warns(UserWarning, match="images.npy is damaged.*reading PNGs instead") as seen:
        assert cached_reader(tree, (32, 64), 0.2) is None
    assert len(seen) == 1


def test_a_damaged_cache_is_said_on_the_console_before_launch(tree, tmp_path, capsys,
                                                             ray_session):
    """The trials fall back to the PNGs and warn in the run's log; the user reads it here, once,
    before anything launches (the run then stops on a request no node can hold)."""
    from raycity.data.cache import build_cache

    images = build_cache(tree, (32, 64), 0.2, progress=False) / "images.npy"  # smoke's size
    images.write_bytes(images.read_bytes()[:100])
    assert run(["--data-root", str(tree), "--cpus-per-trial", "64"], tmp_path / "out") == 2
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "images.npy is damaged" in out, out


def test_the_dashboard_says_where_its_login_token_is(capsys, monkeypatch):
    from types import SimpleNamespace

    import ray

    from raycity.config import RunOptions
    from raycity.tune.driver import connect_ray

    calls = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.update(kw) or SimpleNamespace(
        dashboard_url="127.0.0.1:8265"))
    assert connect_ray(RunOptions(name="x", dashboard=True)) is True
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8265" in out and "ray get-auth-token" in out
    assert calls["dashboard_host"] == "127.0.0.1" and calls["include_dashboard"] is True


def test_token_authentication_stays_on_and_quiet():
    """Set before Ray is imported (as `python -m raycity.cv` does), RAY_AUTH_MODE=token keeps
    authentication on without Ray's console notice; set after, it is left alone."""
    import subprocess
    import sys

    code = ("import os\nfrom raycity.cli import keep_token_auth_quietly\n"
            "keep_token_auth_quietly()\nprint(os.environ.get('RAY_AUTH_MODE'))\n"
            "import ray\nos.environ.pop('RAY_AUTH_MODE')\nkeep_token_auth_quietly()\n"
            "print(os.environ.get('RAY_AUTH_MODE'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_AUTH_MODE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120).stdout.split()
    assert out == ["token", "None"]


def test_another_librarys_error_is_said_in_words_that_say_something():
    """Inside our one line, a foreign error keeps its own words, or names its type where they
    say nothing: torch.load of a text file raised `KeyError(174812789)`, which a user read as
    `not a loadable state dict (174812789)`."""
    from raycity.errors import brief

    assert brief(KeyError(174812789)) == "KeyError: 174812789"
    assert brief(EOFError()) == "EOFError"
    assert brief(ValueError("first line\nsecond")) == "first line"
    assert brief(RuntimeError("x" * 200), 10) == "x" * 9 + "…"
