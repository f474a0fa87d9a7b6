from __future__ import annotations

import pytest

from visctr.config import from_dict, to_dict
from visctr.encoders import ClassifyConfig, S1Config, S2Config
from visctr.errors import ConfigError


@pytest.mark.parametrize("cls", [S1Config, S2Config, ClassifyConfig])
def test_defaults_round_trip_through_from_dict(cls):
    cfg = cls()
    assert from_dict(cls, to_dict(cfg)) == cfg


def test_nested_yaml_values_and_strictness():
    cfg = from_dict(
        S2Config,
        {
            "epochs": 2,
            "lambda_s1": 0,
            "encoder": {"backbone": "resnet18"},
            "augment": {"blur_p": 0.1},
            "trainer": {"devices": 2},
        },
    )
    assert cfg.lambda_s1 == 0.0 and cfg.encoder.backbone == "resnet18"
    assert cfg.augment.blur_p == 0.1 and cfg.trainer.devices == 2
    with pytest.raises(ConfigError, match="unknown key 'lamda_s1'"):
        from_dict(S2Config, {"lamda_s1": 0.1})
    # an unknown objective name is refused where the objective is built (test_objectives)
    assert from_dict(S1Config, {"method": "nope"}).objective.method == "nope"
    with pytest.raises(ConfigError, match="crop_min_scale"):
        from_dict(S1Config, {"augment": {"crop_min_scale": 0}})
