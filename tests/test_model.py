import pytest
import torch
from torchvision.models import resnet50

from raycity.constants import NUM_CLASSES
from raycity.model import (
    DECODER_CHANNELS,
    ENCODER_CHANNELS,
    PretrainedWeightsError,
    UNetResNet50,
    load_encoder_weights,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNetResNet50().eval()


@pytest.mark.parametrize("size", [(64, 128), (250, 510), (97, 131)])
def test_logits_match_any_input_size(model, size):
    with torch.inference_mode():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, NUM_CLASSES, *size)


def test_stage_channels_and_scales(model):
    x = torch.randn(1, 3, 128, 256)
    with torch.inference_mode():
        feats = model.encoder(x)
        assert [f.shape[1] for f in feats] == list(ENCODER_CHANNELS)
        assert [f.shape[-1] for f in feats] == [256 // s for s in (2, 4, 8, 16, 32)]
        y = model.bottleneck(feats[-1])
        assert y.shape[1] == 2048
        outs = []
        for stage, skip in zip(model.decoder, reversed(feats[:-1])):
            y = stage(y, skip)
            outs.append(y)
    assert [o.shape[1] for o in outs] == list(DECODER_CHANNELS)
    assert [o.shape[-1] for o in outs] == [256 // s for s in (16, 8, 4, 2)]
    assert model.head.up.out_channels == 32
    assert model.head.classify.out_channels == NUM_CLASSES


def conv_block(c_in: int, c_out: int) -> int:
    """Two 3×3 convolutions without bias, each followed by BatchNorm (weight + bias)."""
    return c_in * c_out * 9 + 2 * c_out + c_out * c_out * 9 + 2 * c_out


def decoder_stage(c_in: int, skip: int, c_out: int) -> int:
    """2× transposed conv halving the channels (with bias), concat with the skip, ConvBlock."""
    up = c_in // 2
    return c_in * up * 4 + up + conv_block(up + skip, c_out)


def test_parameter_count_is_the_seed_architecture_exactly(model):
    """Counted from the layer shapes the seed study describes, not from our modules: the
    ResNet-50 encoder without its classifier (torchvision's), the 2048-channel bottleneck, four
    decoder stages to 1024, 512, 256 and 64 channels, and the head (2× transposed conv to 32
    channels, 1×1 conv to 19 classes)."""
    backbone = resnet50()
    encoder = sum(p.numel() for n, p in backbone.named_parameters() if not n.startswith("fc."))
    bottleneck = conv_block(2048, 2048)
    decoder = (decoder_stage(2048, 1024, 1024) + decoder_stage(1024, 512, 512)
               + decoder_stage(512, 256, 256) + decoder_stage(256, 64, 64))
    head = 64 * 32 * 4 + 32 + 32 * NUM_CLASSES + NUM_CLASSES
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    assert sum(p.numel() for p in model.bottleneck.parameters()) == bottleneck
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder
    assert sum(p.numel() for p in model.head.parameters()) == head
    assert sum(p.numel() for p in model.parameters()) == encoder + bottleneck + decoder + head
    assert encoder + bottleneck + decoder + head == 147_479_379  # as the closing note reports


def test_a_narrow_decoder_keeps_the_stages_and_shapes():
    """`decoder_channels` (the smoke preset's): the same encoder, stages and output, with the
    widths asked for — counted from the layer shapes as above; a width that cannot halve is
    refused naming the field."""
    from raycity.config import ConfigError, preset

    widths = preset("smoke").decoder_channels
    assert widths == (256, 128, 64, 32, 16)
    narrow = UNetResNet50(decoder_channels=widths).eval()
    with torch.inference_mode():
        assert narrow(torch.randn(1, 3, 64, 96)).shape == (1, NUM_CLASSES, 64, 96)
    b, d1, d2, d3, d4 = widths
    assert sum(p.numel() for p in narrow.bottleneck.parameters()) == conv_block(2048, b)
    assert sum(p.numel() for p in narrow.decoder.parameters()) == (
        decoder_stage(b, 1024, d1) + decoder_stage(d1, 512, d2) + decoder_stage(d2, 256, d3)
        + decoder_stage(d3, 64, d4))
    assert narrow.head.up.in_channels == d4
    with pytest.raises(ConfigError, match="decoder_channels"):
        preset("smoke", decoder_channels=(256, 128, 64, 32, 15))


def test_dropout_only_when_asked():
    narrow = (256, 128, 64, 32, 16)  # the bottleneck's dropout, without 2 × 147 M weights
    off = UNetResNet50(dropout=0.0, decoder_channels=narrow)
    on = UNetResNet50(dropout=0.3, decoder_channels=narrow)
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in off.modules())
    drops = [m for m in on.bottleneck.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert len(drops) == 1 and drops[0].p == 0.3
    on.train()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = on(x), on(x)
    assert not torch.equal(a, b)  # training mode drops channels at random
    on.eval()
    with torch.no_grad():
        assert torch.equal(on(x), on(x))


def test_pretrained_from_path(tmp_path):
    ref = resnet50()
    path = tmp_path / "r50.pth"
    torch.save(ref.state_dict(), path)
    model = UNetResNet50(pretrained=str(path))
    assert torch.equal(model.encoder.stages[3][0].conv1.weight, ref.layer4[0].conv1.weight)
    assert torch.equal(model.encoder.stem[0].weight, ref.conv1.weight)


def test_pretrained_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        UNetResNet50(pretrained=str(tmp_path / "missing.pth"))
    bad = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(PretrainedWeightsError, match="not a ResNet-50"):
        UNetResNet50(pretrained=str(bad))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    from torchvision.models import ResNet50_Weights

    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsError) as err:
        load_encoder_weights(resnet50(), "imagenet")
    message = str(err.value)
    assert "resnet50-" in message and "checkpoints" in message and "--pretrained none" in message
