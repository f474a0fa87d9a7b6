"""The method table: encoder order, config-derived descriptions, adding a method."""

from __future__ import annotations

import dataclasses

import pytest

from visctr.encoders import S1ObjectiveConfig
from visctr.pipeline import methods as mt
from visctr.pipeline.config import resolve_run_config


def test_every_method_refers_to_known_recipes_and_variants():
    for m in mt.METHODS.values():
        assert m.encoder in mt.ENCODERS and m.ctr in mt.CTR_VARIANTS
        assert m.reference is None or m.reference in mt.ENCODERS
    assert len({m.slug for m in mt.METHODS.values()}) == len(mt.METHODS)


def test_encoders_train_after_their_init():
    order = [r.name for r in mt.encoder_order()]
    for r in mt.ENCODERS.values():
        if r.init:
            assert order.index(r.init) < order.index(r.name)


def test_encoder_cycle_is_an_error(monkeypatch):
    a = mt.EncoderRecipe("a", "finetune", init="b")
    b = mt.EncoderRecipe("b", "finetune", init="a")
    monkeypatch.setattr(mt, "ENCODERS", {"a": a, "b": b})
    with pytest.raises(ValueError, match="cycle"):
        mt.encoder_order({"M": mt.Method("M", "m", "a")})


def test_recipes_apply_their_overrides():
    cfg = resolve_run_config("tiny")
    assert mt.ENCODERS["s2"].config(cfg).lambda_s1 == 0
    assert mt.ENCODERS["s1_s2"].config(cfg).lambda_s1 == cfg.s2.lambda_s1 > 0
    assert mt.CTR_VARIANTS["debias"](cfg.ctr).debias.enabled
    assert not mt.CTR_VARIANTS["plain"](cfg.ctr).debias.enabled
    ips = mt.CTR_VARIANTS["ips"](cfg.ctr)
    assert ips.ips.enabled and not ips.debias.enabled
    assert not mt.CTR_VARIANTS["debias"](cfg.ctr).ips.enabled
    assert mt.METHODS["S1+S2+IPS"].ctr == "ips" and mt.METHODS["S1+S2+IPS"].encoder == "s1_s2"


def test_descriptions_follow_the_config():
    cfg = resolve_run_config("tiny")
    for method, label in (("simsiam", "SimSiam"), ("infonce", "InfoNCE"), ("byol", "BYOL")):
        cfg.s1 = dataclasses.replace(cfg.s1, objective=S1ObjectiveConfig(method=method))
        assert label in mt.descriptions(cfg)["S1"]


def test_a_new_method_is_one_table_entry(monkeypatch):
    extra = mt.Method("S1+D", "s1_d", "s1", ctr="debias", reference="s1", describe=lambda c: "x")
    monkeypatch.setitem(mt.METHODS, "S1+D", extra)
    assert mt.descriptions(resolve_run_config("tiny"))["S1+D"] == "x"
    assert "s1" in [r.name for r in mt.encoder_order()]
