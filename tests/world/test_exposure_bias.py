"""Visual exposure bias: hidden item appeal and style-correlated popularity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from visctr.world.simulate import (
    ClickModelConfig,
    appeal_multiplier,
    appeal_scores,
    click_probability,
    simulate_arrays,
    zipf_popularity,
)

from ..conftest import synthetic_catalog, tiny_sim_config


def test_appeal_is_standardised_and_smooth_in_the_image():
    cat = synthetic_catalog(200)
    a = appeal_scores(cat.images, seed=0)
    assert a.shape == (200,) and abs(a.mean()) < 1e-9 and abs(a.std() - 1) < 1e-9
    rng = np.random.default_rng(0)
    noisy = np.clip(cat.images.astype(int) + rng.integers(-3, 4, cat.images.shape), 0, 255)
    b = appeal_scores(noisy.astype(np.uint8), seed=0)
    near = np.abs(a - b).mean()  # the same image, slightly perturbed
    far = np.abs(a - a[rng.permutation(200)]).mean()  # other images
    assert near < 0.25 * far
    assert not np.allclose(a, appeal_scores(cat.images, seed=1))  # projection per world seed


def test_style_correlation_ties_popularity_to_looks():
    rng = np.random.default_rng(0)
    style = rng.standard_normal(2000)
    assert abs(np.corrcoef(style, np.log(zipf_popularity(2000, 1.1, rng)))[0, 1]) < 0.1
    for rho in (0.5, 0.9):
        pop = zipf_popularity(2000, 1.1, np.random.default_rng(1), style, rho)
        assert pop.sum() == pytest.approx(1.0)
        corr = np.corrcoef(style, np.log(pop))[0, 1]
        assert corr > 0.6 * rho, (rho, corr)
    # correlation 0 is the first world's random order, draw for draw
    a = zipf_popularity(500, 1.1, np.random.default_rng(3))
    b = zipf_popularity(500, 1.1, np.random.default_rng(3), style[:500], 0.0)
    assert np.array_equal(a, b)


def test_appeal_multiplies_click_probability():
    appeal = np.array([-1.0, 0.0, 1.0, 2.0])
    assert np.array_equal(appeal_multiplier(appeal, 0.0), np.ones(4))
    m = appeal_multiplier(appeal, 0.5)
    assert m.mean() == pytest.approx(1.0) and np.all(np.diff(m) > 0)
    shown = np.array([[0, 1, 2, 3]])
    inputs = dict(
        positions=np.zeros((1, 4)),
        targets=np.array([0]),
        user_aff=np.full((1, 2), 0.5),
        categories=np.zeros(4, dtype=int),
        likeness=np.zeros((1, 4)),
        cfg=ClickModelConfig(),
    )
    base = click_probability(shown, **inputs)
    assert np.allclose(click_probability(shown, **inputs, appeal=m), base * m[shown])


def test_knobs_at_zero_keep_the_world_and_on_they_bias_exposure():
    cat = synthetic_catalog(300)
    cfg = tiny_sim_config()
    w0 = simulate_arrays(cfg, 0, cat)
    assert w0.summary["appeal_strength"] == 0 and w0.summary["style_correlation"] == 0
    biased = dataclasses.replace(cfg, appeal_strength=1.0, style_correlation=0.9)
    w1 = simulate_arrays(biased, 0, cat)
    assert w1.summary["appeal_popularity_correlation"] > 0.5
    assert abs(w0.summary["appeal_popularity_correlation"]) < 0.3
    # clicked items look more appealing than shown ones when appeal matters
    tr = w1.impressions["train"]
    rows = np.searchsorted(cat.item_ids, tr["item_id"])
    clicked = tr["clicked"].astype(bool)
    assert w1.appeal[rows[clicked]].mean() > w1.appeal[rows].mean()
    with pytest.raises(ValueError, match="style_correlation"):
        dataclasses.replace(cfg, style_correlation=1.5)
