import re
from dataclasses import dataclass, field

import pytest

from visctr.config import from_dict
from visctr.errors import ConfigError
from visctr.world.presets import resolve_world_config


@dataclass
class Inner:
    lr: float = 0.1
    name: str = "a"


@dataclass
class Outer:
    epochs: int = 1
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_from_dict_builds_nested():
    cfg = from_dict(Outer, {"epochs": 3, "inner": {"lr": 1}, "maybe": None})
    assert cfg.epochs == 3 and cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)


@pytest.mark.parametrize(
    "data,match",
    [
        ({"epoch": 3}, "unknown key 'epoch'"),
        ({"inner": {"lrr": 1}}, r"config.inner: unknown key 'lrr'"),
        ({"epochs": "3"}, "config.epochs: expected an integer"),
        ({"epochs": 2.5}, "expected an integer"),
        ({"inner": {"lr": "fast"}}, "config.inner.lr: expected a number"),
        ({"inner": 3}, "expected a mapping"),
    ],
)
def test_from_dict_rejects_typos_and_wrong_types(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_world_config_from_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("world:\n  n_users: 7\n  logging:\n    top_k: 5\n")
    cfg = resolve_world_config("tiny", p)
    assert cfg.n_users == 7 and cfg.logging.top_k == 5 and cfg.catalog.max_items == 600
    p.write_text("world:\n  n_user: 7\n")
    with pytest.raises(ConfigError, match="unknown key 'n_user'"):
        resolve_world_config("tiny", p)


def test_run_refuses_multi_device_with_a_pointer_to_stage_verbs():
    import pytest

    from visctr.errors import ConfigError
    from visctr.pipeline.config import resolve_run_config

    with pytest.raises(ConfigError, match="stage verbs"):
        resolve_run_config("tiny", trainer_overrides={"devices": 2})
    with pytest.raises(ConfigError, match="num_nodes=2"):
        resolve_run_config("tiny", trainer_overrides={"num_nodes": 2})
    assert resolve_run_config("tiny", trainer_overrides={"devices": 1}).trainer["devices"] == 1


@pytest.mark.parametrize(
    "section,match",
    [
        ({"log_propensity": "guess"}, "log_propensity must be deterministic or exposure"),
        ({"examination": "flat"}, "examination must be power or free"),
        ({"bootstrap": 3}, "bootstrap must be >= 10"),
    ],
)
def test_ope_section_refuses_unknown_choices(section, match):
    from visctr.pipeline.config import OPEConfig

    with pytest.raises((ConfigError, ValueError), match=match):
        from_dict(OPEConfig, section)


@pytest.mark.parametrize(
    "text,match",
    [
        ("s1:\n  lr: .inf\n", "config.s1.lr: expected a finite number, got inf"),
        ("ctr:\n  lr: .nan\n", "config.ctr.lr: expected a finite number, got nan"),
        ("s1:\n  lr: 1.0e+400\n", "config.s1.lr: expected a finite number, got inf"),
        ("s1:\n  weight_decay: -.inf\n", "expected a finite number, got -inf"),
        ("world:\n  catalog: {image_size: 100000}\n", r"image_size must be in 8\.\.1024"),
        ("abtest:\n  queries: 100000000\n", r"queries must be in 0\.\.1,000,000"),
    ],
)
def test_config_numbers_are_finite_and_bounded_up_front(tmp_path, text, match):
    """inf/NaN in YAML, an image size or a traffic size that cannot fit: one config error
    before anything runs (inf lr once trained an encoder.pt full of NaN)."""
    from click.testing import CliRunner

    from visctr.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    res = CliRunner().invoke(main, ["config", "show", "--config", str(cfg)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert re.search(match, res.output.strip().splitlines()[-1]), res.output
