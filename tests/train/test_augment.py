"""Batched on-device augmentation: shapes, value range, per-sample randomness, presets."""

from dataclasses import replace

import pytest
import torch

from plantid.config import AugmentConfig
from plantid.data.tensors import to_unit_float
from plantid.train.augment import PRESETS, AugmentSpec, BatchAugment, build_augment


def _batch(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


def test_to_unit_float_layout_and_range():
    images = _batch()
    x = to_unit_float(images)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[2, 1], images[2, :, :, 1].float() / 255)
    assert to_unit_float(images, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_seed_preset_keeps_shape_and_range_and_changes_pixels():
    torch.manual_seed(0)
    x = to_unit_float(_batch())
    y = build_augment(AugmentConfig(preset="seed", strength=1.0))(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.allclose(y, x)
    # Each sample gets its own parameters: two identical inputs come out different.
    same = x[:1].repeat(4, 1, 1, 1)
    out = build_augment(AugmentConfig(preset="seed"))(same)
    assert not torch.allclose(out[0], out[1])


def test_none_preset_is_identity_and_strength_zero_disables():
    x = to_unit_float(_batch())
    assert torch.equal(build_augment(AugmentConfig(preset="none"))(x), x)
    spec = PRESETS["seed"].scaled(0.0)
    assert spec.rotate_deg == 0 and spec.shift == 0 and spec.cutout_prob == 0


def test_flips_are_exact_mirrors():
    torch.manual_seed(1)
    x = to_unit_float(_batch(n=64))
    y = BatchAugment(AugmentSpec(hflip=True))(x)
    mirrored = torch.isclose(y, x.flip(-1), atol=1e-5).flatten(1).all(1)
    unchanged = torch.isclose(y, x, atol=1e-5).flatten(1).all(1)
    assert bool((mirrored | unchanged).all())
    assert 10 < int(mirrored.sum()) < 54  # about half the samples are flipped


def _symmetry_index(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample: which of the square's 8 symmetries of x[i] y[i] is, or -1 for none of them."""
    t = x.transpose(-2, -1)
    views = [x, x.flip(-1), x.flip(-2), x.flip((-2, -1)), t, t.flip(-1), t.flip(-2), t.flip((-2, -1))]
    hits = torch.stack([torch.isclose(y, v, atol=1e-5).flatten(1).all(1) for v in views])  # 8 x N
    return torch.where(hits.any(0), hits.float().argmax(0), torch.full_like(hits[0], -1, dtype=torch.long))


def _exact_flips(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample: is y[i] one of the four flips of x[i] (no resampling)?"""
    return (_symmetry_index(x, y) >= 0) & (_symmetry_index(x, y) < 4)


def test_warp_prob_leaves_the_other_samples_sharp():
    torch.manual_seed(3)
    x = to_unit_float(_batch(n=200))
    warp = dict(shift=0.1, rotate_deg=20.0, zoom=0.15, hflip=True, vflip=True)
    always = BatchAugment(AugmentSpec(**warp))(x)
    assert int(_exact_flips(x, always).sum()) == 0  # every sample is resampled
    half = build_augment(AugmentConfig(preset="seed", strength=1.0, warp_prob=0.5))
    sharp = _exact_flips(x, BatchAugment(replace(half.spec, brightness=0.0, contrast=0.0, cutout_prob=0.0))(x))
    assert 70 <= int(sharp.sum()) <= 130  # about half keep their exact pixels (flipped or not)
    never = BatchAugment(AugmentSpec(**warp, warp_prob=0.0))(x)
    assert bool(_exact_flips(x, never).all())


def test_cutout_erases_a_rectangle_with_the_mean_colour():
    torch.manual_seed(2)
    x = to_unit_float(_batch(n=16))
    y = BatchAugment(AugmentSpec(cutout_prob=1.0, cutout_frac=0.5))(x)
    changed = (y != x).any(1)  # N x H x W
    for i in range(16):
        rows = changed[i].any(1).nonzero()
        cols = changed[i].any(0).nonzero()
        if len(rows) == 0:
            continue
        box = changed[i][rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.9  # the changed pixels form a rectangle


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_on_odd_sizes(preset):
    x = torch.rand(3, 3, 37, 41)
    y = build_augment(AugmentConfig(preset=preset))(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_progressive_resizing_sizes_per_epoch():
    from plantid.config import ResizePhase
    from plantid.train.augment import train_image_size

    phases = [ResizePhase(epochs=2, image_size=64), ResizePhase(epochs=1, image_size=96)]
    assert [train_image_size(phases, 128, e) for e in range(5)] == [64, 64, 96, 128, 128]
    assert train_image_size([], 128, 0) == 128
    assert train_image_size(phases, 80, 0) == 64 and train_image_size(phases, 80, 2) == 80  # capped at the final size


def test_resize_batch_shrinks_and_keeps_layout_and_range():
    from plantid.train.augment import resize_batch

    x = to_unit_float(torch.randint(0, 256, (3, 48, 48, 3), dtype=torch.uint8), channels_last=True)
    assert resize_batch(x, 48) is x  # already at size: untouched
    small = resize_batch(x, 24)
    assert small.shape == (3, 3, 24, 24)
    assert small.is_contiguous(memory_format=torch.channels_last)
    assert 0.0 <= float(small.min()) and float(small.max()) <= 1.0
    # a flat image stays flat whatever the size
    flat = torch.full((1, 3, 48, 48), 0.25)
    assert torch.allclose(resize_batch(flat, 20), torch.full((1, 3, 20, 20), 0.25), atol=1e-6)


def test_transpose_with_flips_gives_every_symmetry_of_the_square_exactly():
    torch.manual_seed(2)
    x = to_unit_float(_batch(n=160))
    y = build_augment(AugmentConfig(preset="flip", transpose=True))(x)
    which = _symmetry_index(x, y)
    assert bool((which >= 0).all())  # every sample is an exact symmetry: nothing resampled
    counts = torch.bincount(which, minlength=8)
    assert bool((counts >= 8).all()), counts  # all eight turn up, each about 20 times

    without = _symmetry_index(x, build_augment(AugmentConfig(preset="flip"))(x))
    assert bool((without >= 0).all()) and int(without.max()) < 4  # flips alone never transpose


def test_vflip_false_keeps_every_photo_upright_and_none_keeps_the_presets_flips():
    torch.manual_seed(4)
    x = to_unit_float(_batch(n=120))
    upright = _symmetry_index(x, build_augment(AugmentConfig(preset="flip", vflip=False))(x))
    assert set(upright.tolist()) == {0, 1}  # the photo or its mirror, never upside down
    preset = _symmetry_index(x, build_augment(AugmentConfig(preset="flip"))(x))
    assert set(preset.tolist()) == {0, 1, 2, 3}
    added = _symmetry_index(x, build_augment(AugmentConfig(preset="none", vflip=True))(x))
    assert set(added.tolist()) == {0, 2}


def test_transpose_keeps_warped_samples_warped_and_the_rest_exact():
    torch.manual_seed(3)
    x = to_unit_float(_batch(n=64))
    cfg = AugmentConfig(preset="seed", strength=1.0, warp_prob=0.5, transpose=True)
    spec = replace(build_augment(cfg).spec, brightness=0.0, contrast=0.0, cutout_prob=0.0)
    which = _symmetry_index(x, BatchAugment(spec)(x))
    assert 10 < int((which >= 0).sum()) < 54  # the unwarped half, and only they, are exact
    assert int((which >= 4).sum()) > 3  # and some of those are transposed
