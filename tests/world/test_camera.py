"""The camera model that turns catalog photos into query photos."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from visctr.world.camera import CameraConfig, photograph

OFF = CameraConfig(
    rotation_deg=0.0,
    scale_min=1.0,
    scale_max=1.0,
    translate=0.0,
    perspective=0.0,
    gain_min=1.0,
    gain_max=1.0,
    gamma_min=1.0,
    gamma_max=1.0,
    illumination_gradient=0.0,
    blur_sigma_max=0.0,
    noise_std=0.0,
    occlusion_prob=0.0,
)


def _images(n: int = 16, c: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, c, 28, 28), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(4, 12, size=2)
        x[i, :, y0 : y0 + 12, x0 : x0 + 10] = rng.integers(120, 255)
    return x


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shape_dtype_and_seeded_reproducibility():
    imgs = _images(c=3)
    a = photograph(imgs, CameraConfig(), _g(1))
    b = photograph(imgs, CameraConfig(), _g(1))
    c = photograph(imgs, CameraConfig(), _g(2))
    assert a.shape == imgs.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_all_distortions_off_is_the_identity():
    imgs = _images()
    out = photograph(imgs, OFF, _g())
    assert np.abs(out.astype(int) - imgs.astype(int)).max() <= 1


def test_default_camera_changes_the_photo_substantially():
    """Query photos are not catalog photos: the mean pixel change is large."""
    imgs = _images(64)
    out = photograph(imgs, CameraConfig(), _g())
    diff = np.abs(out.astype(float) - imgs.astype(float)).mean(axis=(1, 2, 3))
    assert (diff > 3).mean() > 0.9, diff


def test_each_distortion_acts_alone():
    imgs = _images(32)
    base = photograph(imgs, OFF, _g())
    for change in (
        {"rotation_deg": 20.0},
        {"translate": 0.1},
        {"perspective": 0.1},
        {"gain_min": 0.5, "gain_max": 0.6},
        {"gamma_min": 1.5, "gamma_max": 1.6},
        {"illumination_gradient": 0.5},
        {"blur_sigma_max": 1.0},
        {"noise_std": 0.05},
        {"occlusion_prob": 1.0},
    ):
        out = photograph(imgs, dataclasses.replace(OFF, **change), _g())
        assert np.abs(out.astype(int) - base.astype(int)).mean() > 0.5, change


def test_occlusion_paints_a_flat_rectangle():
    imgs = np.full((8, 1, 28, 28), 200, np.uint8)
    cfg = dataclasses.replace(OFF, occlusion_prob=1.0, occlusion_max_share=0.2)
    out = photograph(imgs, cfg, _g())
    for o in out[:, 0]:
        ys, xs = np.nonzero(o != 200)
        assert ys.size > 0
        patch = o[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert (patch == patch.flat[0]).all()  # one shade, one rectangle
