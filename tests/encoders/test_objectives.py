"""The S1 objective plug-ins: registry, heads, config layout (nested and legacy flat)."""

from __future__ import annotations

import pytest
import torch

from visctr.config import from_dict, to_dict
from visctr.encoders import S1Config, S1ObjectiveConfig, S2Config, build_encoder
from visctr.encoders.objectives import (
    OBJECTIVES,
    S1Objective,
    TwoViews,
    build_objective,
    head_spec,
    register,
)
from visctr.encoders.stages import finetune, pretrain
from visctr.errors import ConfigError

from .conftest import TINY_ENCODER


def _encoder():
    torch.manual_seed(0)
    return build_encoder(TINY_ENCODER, 1, 28)


def _views(enc, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.rand(b, 1, 28, 28, generator=g), torch.rand(b, 1, 28, 28, generator=g)
    e = enc(torch.cat([x1, x2]))
    return TwoViews(x1, x2, e[:b], e[b:])


def test_builtin_objectives_are_registered():
    assert {"simsiam", "infonce", "byol"} <= set(OBJECTIVES)
    for name, cls in OBJECTIVES.items():
        assert issubclass(cls, S1Objective) and cls.name == name


@pytest.mark.parametrize(
    "method,keys",
    [
        ("simsiam", {"projector.0.weight", "projector.4.weight", "predictor.3.bias"}),
        ("infonce", {"projector.0.weight", "projector.3.bias"}),
    ],
)
def test_heads_keep_their_state_dict_names(method, keys):
    # encoder.pt files written before the objectives were plug-ins hold these names
    obj = build_objective(S1ObjectiveConfig(method=method, proj_dim=8, pred_dim=4), _encoder())
    assert keys <= set(obj.state_dict())
    assert all(k.startswith(("projector.", "predictor.")) for k in obj.state_dict())


@pytest.mark.parametrize("method", ["simsiam", "infonce"])
def test_objective_loss_backpropagates_into_encoder_and_heads(method):
    enc = _encoder()
    obj = build_objective(S1ObjectiveConfig(method=method, proj_dim=8, pred_dim=4), enc)
    loss = obj(_views(enc))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in obj.projector.parameters())
    assert next(enc.parameters()).grad is not None


def test_registry_is_open():
    @register("toy")
    class Toy(S1Objective):
        head_fields = ()

        def __init__(self, cfg, embed_dim, encoder):
            super().__init__(cfg, embed_dim, encoder)
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, views):
            return self.scale * torch.cosine_similarity(views.e1, views.e2).mean()

    try:
        cfg = from_dict(S1Config, {"objective": {"method": "toy"}})
        enc = _encoder()
        obj = build_objective(cfg.objective, enc)
        assert isinstance(obj, Toy) and torch.isfinite(obj(_views(enc)))
        assert head_spec(obj.spec()) == {"method": "toy"}
    finally:
        OBJECTIVES.pop("toy")


def test_unknown_objective_names_the_field_and_the_choices(tmp_path):
    """The name is checked where the objective is built (the registry's modules import the
    config), and by a run before any work."""
    from visctr.pipeline.config import resolve_run_config

    cfg = from_dict(S1Config, {"objective": {"method": "nope"}}, "s1")
    with pytest.raises(
        ConfigError, match=r"s1\.objective\.method: .*'nope'.*registered: .*infonce"
    ):
        build_objective(cfg.objective, _encoder(), "s1.objective.method")
    with pytest.raises(ConfigError, match=r"s1\.objective\.method: .*'nope'"):
        pretrain(None, cfg, tmp_path / "s1", 0)  # before the world is read
    with pytest.raises(ConfigError, match=r"s2\.s1\.method: .*'nope'.*registered: .*infonce"):
        finetune(None, from_dict(S2Config, {"s1": {"method": "nope"}}), tmp_path / "s2", 0)
    yaml = tmp_path / "run.yaml"
    yaml.write_text("s2:\n  s1:\n    method: nope\n")
    with pytest.raises(ConfigError, match=r"s2\.s1\.method: .*'nope'"):
        resolve_run_config("tiny", yaml)
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        from_dict(S2Config, {"s1": {"temperature": 0}})


def test_nested_objective_config_round_trips():
    cfg = from_dict(S2Config, {"s1": {"method": "infonce", "proj_dim": 32}})
    assert cfg.s1 == S1ObjectiveConfig(method="infonce", proj_dim=32)
    assert from_dict(S2Config, to_dict(cfg)) == cfg
    d = to_dict(S1Config())
    assert "method" not in d and d["objective"]["method"] == "simsiam"


def test_legacy_flat_keys_still_load():
    s1 = from_dict(S1Config, {"method": "infonce", "temperature": 0.5, "proj_dim": 32})
    assert s1.objective == S1ObjectiveConfig(method="infonce", temperature=0.5, proj_dim=32)
    s2 = from_dict(
        S2Config, {"s1_method": "infonce", "s1_temperature": 0.3, "proj_dim": 8, "pred_dim": 4}
    )
    assert s2.s1 == S1ObjectiveConfig(method="infonce", temperature=0.3, proj_dim=8, pred_dim=4)
    assert s2.temperature == S2Config().temperature  # the click loss's own setting
    # a flat key from a user file wins over the nested one of a preset it is merged onto
    both = from_dict(S1Config, {"objective": {"method": "infonce"}, "method": "simsiam"})
    assert both.objective.method == "simsiam"


def test_run_presets_and_old_run_files(tmp_path):
    from visctr.pipeline.config import resolve_run_config

    cfg = resolve_run_config("tiny")
    assert cfg.s1.objective.method == "infonce" and cfg.s2.s1.method == "infonce"
    old = tmp_path / "old.yaml"
    old.write_text("s1: {method: simsiam}\ns2: {s1_method: simsiam, proj_dim: 128}\n")
    cfg = resolve_run_config("small", old)
    assert cfg.s1.objective.method == "simsiam" and cfg.s2.s1.method == "simsiam"
    assert cfg.s2.s1.proj_dim == 128


# --- BYOL ----------------------------------------------------------------------------


def _byol(momentum=0.9):
    enc = _encoder()
    cfg = S1ObjectiveConfig(method="byol", proj_dim=8, pred_dim=4, momentum=momentum)
    return enc, build_objective(cfg, enc)


def test_byol_target_starts_as_a_frozen_copy_of_the_online_networks():
    enc, obj = _byol()
    online = {**enc.state_dict(), **obj.projector.state_dict()}
    target = {**obj.target_encoder.state_dict(), **obj.target_projector.state_dict()}
    assert set(online) == set(target) and all(torch.equal(online[k], target[k]) for k in online)
    frozen = [*obj.target_encoder.parameters(), *obj.target_projector.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    loss = obj(_views(enc))
    assert 0 <= loss.item() <= 8
    loss.backward()
    assert all(p.grad is None for p in frozen)
    assert next(enc.parameters()).grad is not None and obj.predictor[0].weight.grad is not None
    assert obj.target_encoder is not enc and head_spec(obj.spec())["method"] == "byol"


def test_byol_ema_moves_the_target_toward_the_online_networks_by_the_momentum():
    enc, obj = _byol(momentum=0.9)
    with torch.no_grad():
        for p in [*enc.parameters(), *obj.projector.parameters()]:
            p.add_(torch.randn_like(p))
    pairs = [(enc, obj.target_encoder), (obj.projector, obj.target_projector)]
    before = [[t.detach().clone() for t in tgt.parameters()] for _, tgt in pairs]
    obj.after_optimizer_step(enc)
    for (online, target), old in zip(pairs, before, strict=True):
        for po, pt, p0 in zip(online.parameters(), target.parameters(), old, strict=True):
            torch.testing.assert_close(pt, 0.9 * p0 + 0.1 * po)
            assert not torch.equal(pt, p0)
    _, still = _byol(momentum=1.0)  # momentum 1: the target never moves
    t0 = [t.clone() for t in still.target_encoder.parameters()]
    still.after_optimizer_step(enc)
    assert all(
        torch.equal(a, b) for a, b in zip(t0, still.target_encoder.parameters(), strict=True)
    )
