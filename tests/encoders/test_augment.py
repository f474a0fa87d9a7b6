from __future__ import annotations

import pytest
import torch

from visctr.encoders.augment import AugmentConfig, augment, step_generator

OFF = dict(
    crop_min_scale=1.0,
    crop_max_aspect=1.0,
    flip_p=0.0,
    jitter_p=0.0,
    blur_p=0.0,
    erase_p=0.0,
    grayscale_p=0.0,
)


def _images(c=1, n=16, size=28):
    return torch.randint(
        0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize("c", [1, 3])
def test_shapes_range_and_determinism(c):
    x = _images(c)
    cfg = AugmentConfig(blur_p=0.5, erase_p=0.5)
    a = augment(x, cfg, step_generator(3, 10))
    b = augment(x, cfg, step_generator(3, 10))
    d = augment(x, cfg, step_generator(3, 11))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, d)


def test_everything_off_is_identity():
    x = _images()
    y = augment(x, AugmentConfig(**OFF), step_generator(0, 0))
    torch.testing.assert_close(y, x.float() / 255, atol=1e-5, rtol=0)


def test_flip_only_flips():
    x = _images()
    y = augment(x, AugmentConfig(**{**OFF, "flip_p": 1.0}), step_generator(0, 0))
    torch.testing.assert_close(y, x.flip(-1).float() / 255, atol=1e-5, rtol=0)


def test_views_of_one_image_differ_per_sample():
    x = _images(n=1).expand(8, -1, -1, -1)
    y = augment(x, AugmentConfig(), step_generator(0, 0))
    assert len({tuple(v.flatten()[:50].tolist()) for v in y}) > 1


def test_erase_and_blur():
    x = torch.full((4, 1, 28, 28), 200, dtype=torch.uint8)
    x[:, :, :, :14] = 0
    blur = augment(
        x, AugmentConfig(**{**OFF, "blur_p": 1.0, "blur_sigma_min": 1.0}), step_generator(0, 0)
    )
    edge = blur[:, 0, 14, 12:16]
    assert ((edge > 0.01) & (edge < 0.77)).any()  # the sharp edge got soft
    torch.testing.assert_close(blur.mean(), (x.float() / 255).mean(), atol=0.02, rtol=0)
    erased = augment(x, AugmentConfig(**{**OFF, "erase_p": 1.0}), step_generator(0, 0))
    changed = (erased != x.float() / 255).flatten(1).float().mean(1)
    assert (changed > 0).all() and (changed < 0.3).all()


def test_bad_config():
    with pytest.raises(ValueError):
        AugmentConfig(crop_min_scale=0.0)
    with pytest.raises(ValueError):
        AugmentConfig(blur_p=2.0)
