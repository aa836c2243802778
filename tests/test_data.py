
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import Cityscapes

from raycity.constants import IGNORE_INDEX, LABEL_COLORS
from raycity.data import (
    DataError,
    SegmentationDataset,
    collate,
    find_samples,
    read_sample,
    to_train_ids,
    train_transform,
    val_transform,
    write_synthetic_cityscapes,
)
from raycity.data.__main__ import main as data_main
from raycity.data.layout import IMAGE_SUFFIX, LABEL_SUFFIX


def write_pair(root, split, city, name, image, label_ids):
    for kind, suffix, array in (("leftImg8bit", IMAGE_SUFFIX, image), ("gtFine", LABEL_SUFFIX, label_ids)):
        d = root / kind / split / city
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(d / f"{name}{suffix}")


def test_the_label_table_is_cityscapesscripts_and_torchvisions_entry_by_entry():
    from cityscapesscripts.helpers.labels import labels as official

    from raycity.constants import LABELS

    ours = [(c.name, c.id, c.train_id, tuple(c.color)) for c in LABELS]
    assert ours == [(c.name, c.id, c.train_id, tuple(c.color)) for c in Cityscapes.classes]
    assert ours == [(c.name, c.id, c.trainId, tuple(c.color)) for c in official]


def test_to_train_ids_follows_torchvision_table():
    ids = np.arange(256, dtype=np.uint8)
    mapped = to_train_ids(ids)
    table = {c.id: c.train_id for c in Cityscapes.classes if c.id >= 0}
    for label_id in range(256):
        expected = table.get(label_id, IGNORE_INDEX)
        expected = IGNORE_INDEX if expected in (-1, 255) else expected
        assert mapped[label_id] == expected, label_id
    assert sorted(set(mapped.tolist()) - {IGNORE_INDEX}) == list(range(19))


def test_reader_maps_every_label_id_of_the_table(tmp_path):
    ids = np.array(sorted({c.id for c in Cityscapes.classes if c.id >= 0}), dtype=np.uint8)
    label = np.repeat(ids[None, :], 4, axis=0)  # every id of the table, 4 rows of them
    image = LABEL_COLORS[label]
    write_pair(tmp_path, "train", "aachen", "aachen_000000_000019", image, label)
    (sample,) = find_samples(tmp_path, "train")
    assert sample.key == "train/aachen/aachen_000000_000019"
    img, mask = read_sample(sample)
    assert img.shape == (3, 4, len(ids)) and img.dtype == torch.uint8
    assert mask.numpy().tolist() == to_train_ids(label).tolist()


def first(root, kind):
    suffix = IMAGE_SUFFIX if kind == "leftImg8bit" else LABEL_SUFFIX
    return sorted((root / kind / "train").glob(f"*/*{suffix}"))[0]


def test_missing_partner_is_named(tree):
    label = first(tree, "gtFine")
    label.unlink()
    with pytest.raises(DataError, match=label.name):
        find_samples(tree, "train")


def test_size_mismatch_is_named(tree):
    label = first(tree, "gtFine")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(label)
    sample = next(s for s in find_samples(tree, "train") if s.label_path == label)
    with pytest.raises(DataError, match=f"{label.name}.*differs"):
        read_sample(sample)


def test_corrupt_png_is_named(tree):
    image = first(tree, "leftImg8bit")
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    sample = next(s for s in find_samples(tree, "train") if s.image_path == image)
    with pytest.raises(DataError, match=f"{image.name}.*corrupt"):
        read_sample(sample)


def test_label_ids_outside_the_table(tree):
    label = first(tree, "gtFine")
    arr = np.array(Image.open(label))
    arr[0, 0] = 200
    Image.fromarray(arr).save(label)
    sample = next(s for s in find_samples(tree, "train") if s.label_path == label)
    with pytest.raises(DataError, match=rf"{label.name}.*\[200\]"):
        read_sample(sample)


def test_wrong_and_empty_directories(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_samples(tmp_path / "nope", "train")
    with pytest.raises(DataError, match="not in the Cityscapes layout"):
        find_samples(tmp_path, "train")
    (tmp_path / "leftImg8bit" / "train" / "x").mkdir(parents=True)
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no \\*_leftImg8bit.png"):
        find_samples(tmp_path, "train")


def test_check_command_reports_and_fails(tree, capsys):
    assert data_main(["check", "--data-root", str(tree)]) == 0
    out = capsys.readouterr().out
    assert "train: 6 pairs in 3 cities" in out and "val: 2 pairs" in out and "road" in out
    label = first(tree, "gtFine")
    label.write_bytes(b"not a png")
    assert data_main(["check", "--data-root", str(tree)]) == 2
    assert label.name in capsys.readouterr().err


def test_synthetic_scenes_are_deterministic(tmp_path):
    a = write_synthetic_cityscapes(tmp_path / "a", {"train": 2}, (64, 128), seed=1)
    b = write_synthetic_cityscapes(tmp_path / "b", {"train": 2}, (64, 128), seed=1)
    for sa, sb in zip(find_samples(a, "train"), find_samples(b, "train")):
        ia, ma = read_sample(sa)
        ib, mb = read_sample(sb)
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    assert len(torch.unique(ma)) > 5  # a street, not a flat image


def test_augmentations_keep_image_and_mask_aligned():
    """Image channels carry the class id, so any misalignment shows as a mismatch."""
    torch.manual_seed(0)
    mask = torch.zeros(96, 192, dtype=torch.uint8)
    for k in range(6):  # 6 vertical bands of classes 0…5, each 32 px wide
        mask[:, 32 * k: 32 * (k + 1)] = k
    image = (mask * 40).expand(3, -1, -1).clone()
    tf = train_transform((48, 96), scale_jitter=0.2, color_jitter=0.0, hflip=True)
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    from torchvision import tv_tensors

    flips = pads = 0
    for _ in range(20):
        img, m = tf(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert img.shape == (3, 48, 96) and m.shape == (48, 96)
        values = ((img * std + mean) * 255 / 40).round()[0]
        valid = m != IGNORE_INDEX
        assert set(m.unique().tolist()) <= set(range(6)) | {IGNORE_INDEX}  # nearest only
        agree = (values[valid] == m[valid].float()).float().mean()
        assert agree > 0.9
        pads += int((~valid).sum())
        assert (values[~valid] == 0).all()  # where the mask was padded with 255, the image with 0
        flips += int(m[24, 2] == 5 or m[24, -3] == 0)
    assert 0 < flips < 20  # some draws flip, some do not
    assert pads > 0  # and some scale down, so padding was exercised


def test_val_transform_and_collate(tiny_cityscapes):
    samples = find_samples(tiny_cityscapes, "train")[:2]
    ds = SegmentationDataset(samples, val_transform((32, 64)), full_mask=True)
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 32, 64) and batch["mask"].shape == (2, 32, 64)
    assert batch["full_mask"].shape == (2, 64, 128)
    assert batch["skipped"] == 0


def test_skip_bad_samples_counts_them(tree):
    image = first(tree, "leftImg8bit")
    image.write_bytes(b"broken")
    samples = find_samples(tree, "train")
    bad = next(i for i, s in enumerate(samples) if s.image_path == image)
    strict = SegmentationDataset(samples, val_transform((32, 64)))
    with pytest.raises(DataError, match=image.name):
        strict[bad]
    lenient = SegmentationDataset(samples, val_transform((32, 64)), skip_bad=True)
    batch = collate([lenient[bad], lenient[(bad + 1) % len(samples)]])
    assert batch["skipped"] == 1 and batch["image"].shape[0] == 1


def test_colour_jitter_changes_the_image_never_the_mask():
    from torchvision import tv_tensors

    mask = torch.zeros(48, 96, dtype=torch.uint8)
    mask[:, 40:] = 7
    image = torch.randint(0, 255, (3, 48, 96), dtype=torch.uint8)
    jitter = train_transform((48, 96), scale_jitter=0.1, color_jitter=0.4, hflip=True)
    plain = train_transform((48, 96), scale_jitter=0.1, color_jitter=0.0, hflip=True)
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        img_j, mask_j = jitter(tv_tensors.Image(image), tv_tensors.Mask(mask))
        torch.manual_seed(seed)
        img_p, mask_p = plain(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert torch.equal(mask_j, mask_p)  # same geometry, labels untouched by colour
        changed += not torch.allclose(img_j, img_p)
    assert changed == 10


def test_the_seeded_sampler_derives_order_and_augmentation_from_seed_fold_and_epoch():
    """What makes a resumed fold, or one with other --num-workers, see the same batches: the
    order and each sample's augmentation seed are a function of (seed, fold, epoch, index)."""
    from raycity.data.dataset import SeededSampler
    from raycity.seeds import derive_seed

    def epoch_of(seed: int, fold: int, epoch: int) -> list[tuple[int, int]]:
        sampler = SeededSampler(20, derive_seed(seed, fold))  # as build_loaders makes it
        sampler.set_epoch(epoch)
        return list(sampler)

    first = epoch_of(0, 1, 1)
    assert sorted(i for i, _ in first) == list(range(20))  # a permutation of the samples
    assert first == epoch_of(0, 1, 1)  # equal inputs, equal draws
    for other in (epoch_of(0, 1, 2), epoch_of(0, 2, 1), epoch_of(1, 1, 1)):  # epoch, fold, seed
        assert [i for i, _ in other] != [i for i, _ in first]  # another order
        seeds = dict(other)
        assert all(seeds[i] != s for i, s in first)  # and other augmentation draws
    assert len({s for _, s in first}) == 20  # each sample its own draw
    val = SeededSampler(20, 5, shuffle=False)
    val.set_epoch(3)
    assert [i for i, _ in val] == list(range(20))
