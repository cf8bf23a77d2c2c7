"""Shared fixtures: tiny configs that train in about a second."""

from __future__ import annotations

import dataclasses

import pytest

from grokinterp.training.config import RunConfig, apply_overrides
from grokinterp.training.presets import get_preset


@pytest.fixture
def tiny_config() -> RunConfig:
    """The ``tiny`` preset: groks (a + b) mod 47 in about 1,300 steps."""
    return get_preset("tiny")


@pytest.fixture
def micro_config() -> RunConfig:
    """A very small MLP for loop mechanics: p = 11, 60 steps, evaluation every 10 steps."""
    cfg = apply_overrides(
        get_preset("tiny"),
        [
            "task.p=11",
            "model.d_embed=8",
            "model.d_mlp=16",
            "train.batch_size=16",
            "train.steps=60",
            "train.eval_every=10",
            "train.checkpoint_every=20",
        ],
    )
    return dataclasses.replace(cfg, name="micro")
