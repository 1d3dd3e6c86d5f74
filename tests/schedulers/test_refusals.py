"""Configs diffusers accepts at construction but fails on at the first step are refused by diffrt when built."""

import diffusers
import pytest
import torch
from parity import SD_BASE

from diffrt.runtime import SCHEDULERS, ConfigError

REFUSED_AT_STEP_BY_DIFFUSERS = [
    ("EulerAncestralDiscreteScheduler", {"prediction_type": "sample"}),
    ("EulerAncestralDiscreteScheduler", {"prediction_type": "x0"}),
    ("KDPM2DiscreteScheduler", {"prediction_type": "sample"}),
    ("KDPM2AncestralDiscreteScheduler", {"prediction_type": "sample"}),
    ("PNDMScheduler", {"prediction_type": "sample", "skip_prk_steps": True}),
    ("PNDMScheduler", {"prediction_type": "sample", "skip_prk_steps": False}),
    ("LMSDiscreteScheduler", {"prediction_type": "x0"}),
    ("DDPMScheduler", {"prediction_type": "x0"}),
    ("EulerDiscreteScheduler", {"prediction_type": "x0"}),
]


@pytest.mark.parametrize(
    "name, fields", REFUSED_AT_STEP_BY_DIFFUSERS, ids=lambda v: v if isinstance(v, str) else str(v)
)
def test_config_diffusers_rejects_at_the_first_step_is_refused_at_construction(name, fields):
    config = {**SD_BASE, **fields}
    reference = getattr(diffusers, name).from_config(config)
    reference.set_timesteps(10)
    x = torch.ones(2, 4, 8, 8)
    t = reference.timesteps[0]
    with pytest.raises((NotImplementedError, ValueError)):
        reference.step(x, t, reference.scale_model_input(x, t))
    with pytest.raises(
        ConfigError, match=r"prediction_type=.* is not supported for .*; accepted values: 'epsilon', 'v_prediction'"
    ):
        SCHEDULERS[name].from_config(config)
