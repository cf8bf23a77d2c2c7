from __future__ import annotations

import pytest
import torch

from grokinterp.compare import config_differences
from grokinterp.methods import METHODS, Method, apply_method, get_method, method_label
from grokinterp.models import build_model, embedding_names, first_layer_matrix
from grokinterp.training.components import build_components, build_optimizer
from grokinterp.training.config import RunConfig
from grokinterp.training.grokfast import GrokfastEMA, GrokfastMA
from grokinterp.training.loop import _train_step, prepare_data
from grokinterp.training.presets import get_preset
from grokinterp.training.samplers import (
    FrequencyAwareSampler,
    RandomBatchSampler,
    TokenBalancedSampler,
)


def build_parts(cfg: RunConfig):
    data = prepare_data(cfg)
    model = build_model(cfg.model, cfg.task)
    optimizer = build_optimizer(model, cfg.optim)
    components = build_components(cfg, model, data.pairs, data.split, torch.device("cpu"))
    return data, model, optimizer, components


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {group["name"]: group["lr"] for group in optimizer.param_groups}


@pytest.mark.parametrize("name", list(METHODS))
def test_method_changes_only_its_fields(name: str) -> None:
    base = get_preset("paper-mlp")
    method = get_method(name)
    changed = config_differences(apply_method(base, name), base)
    assert set(changed) <= set(method.fields)


def test_expected_changes_on_paper_mlp() -> None:
    base = get_preset("paper-mlp")
    expected = {
        "baseline": {},
        "adam": {},
        "adamw": {"optim.name": "adamw"},
        "adam-lr": {"optim.embed_lr_ratio": 10.0},
        "adaptive": {"optim.lr_ratio": "adaptive"},
        "adaptive-k10": {"optim.lr_ratio": "adaptive", "optim.adaptive_k": 10.0},
        "frequency": {"train.sampler": "frequency", "train.sampler_gamma": 0.01},
        "balanced": {"train.sampler": "balanced"},
        "grokfast-ema": {"optim.grokfast": "ema"},
        "grokfast-ma": {"optim.grokfast": "ma", "optim.grokfast_lambda": 5.0},
        "onehot": {"model.input_mode": "onehot"},
    }
    assert set(expected) == set(METHODS)
    for name, changes in expected.items():
        assert config_differences(apply_method(base, name), base) == changes, name


def test_adamw_preset_keeps_optimizer() -> None:
    base = get_preset("tiny-transformer")
    cfg = apply_method(base, "adam-lr")
    assert cfg.optim.name == "adamw"
    assert config_differences(cfg, base) == {"optim.embed_lr_ratio": 10.0}


def test_run_name_carries_method() -> None:
    cfg = apply_method(get_preset("paper-mlp"), "adam-lr")
    assert cfg.name == "paper-mlp+adam-lr"
    assert method_label(cfg.name) == "adam-lr"
    assert method_label("paper-mlp") == "paper-mlp"
    assert method_label("trailing+") == "trailing+"


def test_adam_lr_group_learning_rates(micro_config: RunConfig) -> None:
    _, model, optimizer, _ = build_parts(apply_method(micro_config, "adam-lr"))
    lr = micro_config.optim.lr
    # The ratio is an exact float multiplication, so a relative tolerance of 1e-12 suffices.
    assert group_lrs(optimizer)["embed"] == pytest.approx(10 * lr, rel=1e-12)
    assert group_lrs(optimizer)["rest"] == pytest.approx(lr, rel=1e-12)
    embed_group = next(g for g in optimizer.param_groups if g["name"] == "embed")
    assert [p is model.embed.W_E for p in embed_group["params"]] == [True]


def test_adam_group_learning_rates_equal(micro_config: RunConfig) -> None:
    _, _, optimizer, _ = build_parts(apply_method(micro_config, "adam"))
    assert group_lrs(optimizer) == {"embed": micro_config.optim.lr, "rest": micro_config.optim.lr}
    assert isinstance(optimizer, torch.optim.Adam)


def test_adamw_builds_adamw(micro_config: RunConfig) -> None:
    _, _, optimizer, _ = build_parts(apply_method(micro_config, "adamw"))
    assert isinstance(optimizer, torch.optim.AdamW)


def test_adaptive_sets_ratio_from_weights(micro_config: RunConfig) -> None:
    cfg = apply_method(micro_config, "adaptive")
    data, model, optimizer, components = build_parts(cfg)
    _train_step(1, cfg, model, optimizer, components, data)

    # After one observed step, f_E is the fraction of embedding rows with a nonzero gradient.
    rows_updated = components.lr_controller.row_frequencies()
    f_embed = float(rows_updated.mean())
    sigma_embed = float(torch.linalg.matrix_norm(model.embed.W_E.detach().double(), ord=2))
    sigma_weight = float(torch.linalg.matrix_norm(first_layer_matrix(model).detach().double(), ord=2))
    expected = min(max(sigma_embed / sigma_weight / f_embed, cfg.optim.adaptive_c_min), cfg.optim.adaptive_c_max)
    lrs = group_lrs(optimizer)
    # σ_max is computed in float64 by both sides, so they agree to rounding.
    assert lrs["embed"] / lrs["rest"] == pytest.approx(expected, rel=1e-9)
    assert lrs["rest"] == cfg.optim.lr


@pytest.mark.parametrize(
    ("name", "sampler_class"),
    [("adam", RandomBatchSampler), ("frequency", FrequencyAwareSampler), ("balanced", TokenBalancedSampler)],
)
def test_sampler_selected(micro_config: RunConfig, name: str, sampler_class: type) -> None:
    _, _, _, components = build_parts(apply_method(micro_config, name))
    assert type(components.sampler) is sampler_class


def test_frequency_gamma(micro_config: RunConfig) -> None:
    _, _, _, components = build_parts(apply_method(micro_config, "frequency"))
    assert components.sampler.gamma == 0.01
    # The sampler needs the per-token gradient norms even where statistics are switched off.
    assert components.token_stats is not None


def test_grokfast_filters(micro_config: RunConfig) -> None:
    _, _, _, ema = build_parts(apply_method(micro_config, "grokfast-ema"))
    assert isinstance(ema.grad_filter, GrokfastEMA)
    _, _, _, ma = build_parts(apply_method(micro_config, "grokfast-ma"))
    assert isinstance(ma.grad_filter, GrokfastMA)
    assert get_method("grokfast-ma").fields == (
        "optim.grokfast", "optim.grokfast_window", "optim.grokfast_lambda"
    )


def test_onehot_has_no_embedding(micro_config: RunConfig) -> None:
    _, model, optimizer, _ = build_parts(apply_method(micro_config, "onehot"))
    assert embedding_names(model) == []
    assert [group["name"] for group in optimizer.param_groups] == ["rest"]


@pytest.mark.parametrize("name", ["adam-lr", "adaptive", "frequency"])
def test_embedding_method_rejects_onehot(micro_config: RunConfig, name: str) -> None:
    onehot = apply_method(micro_config, "onehot")
    with pytest.raises(ValueError, match="has no embedding"):
        apply_method(onehot, name)


def test_unknown_method_rejected() -> None:
    with pytest.raises(ValueError, match="method 'sgd' is unknown: choose one of baseline, adam"):
        get_method("sgd")


def test_method_definition_checked() -> None:
    with pytest.raises(ValueError, match="without '\\+'"):
        Method("a+b", "bad name", ())
    with pytest.raises(ValueError, match="write it as section.field=value"):
        Method("bad", "bad override", ("lr=0.1",))

