"""Shared test configuration and fixtures: tiny configs that train in about a second."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from grokinterp.training.config import RunConfig, apply_overrides
from grokinterp.training.presets import get_preset


def pytest_configure(config):
    # Naming grokinterp's warning class in the ini filterwarnings would make pytest import
    # grokinterp while it reads its configuration, before jaxtyping installs the import hook
    # that type-checks the package, and jaxtyping then stops the run. Added here, the filter is
    # read only when each test starts.
    config.addinivalue_line("filterwarnings", "error::grokinterp.GrokinterpWarning")


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    # The test models are tiny, so intra-op threads only add overhead, and on a loaded machine
    # idle OpenMP threads spin: on 2 busy cores small tests ran up to 30 times slower with two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
