"""Frozen run configuration: task, model, optimiser and training loop, validated when built.

A :class:`RunConfig` is everything needed to reproduce a run. It is saved, fully resolved, in the
run directory's ``manifest.json`` and rebuilt from there with :func:`config_from_dict`.
Overrides use dotted paths such as ``optim.lr=0.001`` (see :func:`apply_overrides`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from grokinterp.models import ModelConfig
from grokinterp.tasks import TaskConfig

OPTIMIZERS = ("adam", "adamw")
LR_RATIO_MODES = ("fixed", "adaptive")
GROKFAST_FILTERS = ("none", "ema", "ma")
SAMPLERS = ("random", "frequency", "balanced")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, learning rates and gradient filters.

    ``weight_decay`` is coupled L2 for ``adam`` (added to the gradient, as
    ``torch.optim.Adam(weight_decay=...)`` does) and decoupled for ``adamw``.
    ``embed_lr_ratio`` is ``c = η_E / η_W``: the embedding's learning rate is ``c · lr``.
    With ``lr_ratio="adaptive"``, ``c`` is recomputed every ``adaptive_every`` steps as
    ``k · (σ_max(E) / σ_max(W)) · (f_W / f_E)`` and clipped to ``[adaptive_c_min, adaptive_c_max]``.
    """

    name: str = "adam"
    lr: float = 0.01
    weight_decay: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    embed_lr_ratio: float = 1.0
    lr_ratio: str = "fixed"
    adaptive_k: float = 1.0
    adaptive_every: int = 50
    adaptive_window: int = 50
    adaptive_c_min: float = 0.5
    adaptive_c_max: float = 32.0
    grokfast: str = "none"
    grokfast_alpha: float = 0.98
    grokfast_lambda: float = 2.0
    grokfast_window: int = 100

    def __post_init__(self) -> None:
        _check_choice("optim.name", self.name, OPTIMIZERS)
        _check_choice("optim.lr_ratio", self.lr_ratio, LR_RATIO_MODES)
        _check_choice("optim.grokfast", self.grokfast, GROKFAST_FILTERS)
        _check_positive("optim.lr", self.lr)
        _check_positive("optim.embed_lr_ratio", self.embed_lr_ratio)
        _check_positive("optim.adaptive_k", self.adaptive_k)
        _check_positive("optim.adaptive_c_min", self.adaptive_c_min)
        _check_positive_int("optim.adaptive_every", self.adaptive_every)
        _check_positive_int("optim.adaptive_window", self.adaptive_window)
        _check_positive_int("optim.grokfast_window", self.grokfast_window)
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay!r} is invalid: it must be >= 0.")
        for name in ("beta1", "beta2", "grokfast_alpha"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"optim.{name}={value!r} is invalid: it must lie in [0, 1).")
        if self.adaptive_c_max < self.adaptive_c_min:
            raise ValueError(
                f"optim.adaptive_c_max={self.adaptive_c_max} is below "
                f"optim.adaptive_c_min={self.adaptive_c_min}: raise the maximum."
            )
        if self.grokfast_lambda < 0:
            raise ValueError(
                f"optim.grokfast_lambda={self.grokfast_lambda!r} is invalid: it must be >= 0."
            )


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: budget, batches, evaluation, checkpoints and early stopping.

    ``batch_size=0`` means full batch. Training stops after ``steps`` optimiser steps, or earlier
    once test accuracy has been ``>= grok_threshold`` at ``early_stop_evals`` consecutive
    evaluations (``early_stop_evals=0`` disables early stopping).
    """

    steps: int = 5000
    batch_size: int = 512
    eval_every: int = 50
    checkpoint_every: int = 1000
    early_stop_evals: int = 5
    grok_threshold: float = 0.99
    sampler: str = "random"
    sampler_gamma: float = 1.0
    batch_seed: int = 0
    token_stats: bool = True
    record_grad_steps: tuple[int, ...] = ()
    device: str = "cpu"

    def __post_init__(self) -> None:
        _check_positive_int("train.steps", self.steps)
        _check_positive_int("train.eval_every", self.eval_every)
        _check_positive_int("train.checkpoint_every", self.checkpoint_every)
        _check_choice("train.sampler", self.sampler, SAMPLERS)
        _check_positive("train.sampler_gamma", self.sampler_gamma)
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ValueError(
                f"train.batch_size={self.batch_size!r} is invalid: use a positive integer, "
                "or 0 for full batch."
            )
        if not isinstance(self.early_stop_evals, int) or self.early_stop_evals < 0:
            raise ValueError(
                f"train.early_stop_evals={self.early_stop_evals!r} is invalid: use an integer "
                ">= 0 (0 disables early stopping)."
            )
        if not 0.0 < self.grok_threshold <= 1.0:
            raise ValueError(
                f"train.grok_threshold={self.grok_threshold!r} is invalid: it must lie in (0, 1]."
            )
        if any(step < 1 for step in self.record_grad_steps):
            raise ValueError(
                f"train.record_grad_steps={self.record_grad_steps!r} is invalid: steps count from 1."
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run."""

    name: str = "custom"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model.kind == "transformer" and self.task.layout != "a_b_eq":
            raise ValueError(
                f"task.layout={self.task.layout!r} does not fit model.kind='transformer', "
                "which reads [a, b, =]: set task.layout=a_b_eq."
            )
        uses_embedding_methods = (
            self.optim.embed_lr_ratio != 1.0
            or self.optim.lr_ratio == "adaptive"
            or self.train.sampler == "frequency"
        )
        if uses_embedding_methods and self.model.input_mode != "embed":
            raise ValueError(
                f"model.input_mode={self.model.input_mode!r} has no embedding, so the embedding "
                "learning rate and the frequency-aware sampler do not apply: set "
                "model.input_mode=embed or use the defaults."
            )


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown: choose one of {', '.join(choices)}.")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}={value!r} is invalid: it must be > 0.")


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: it must be a positive integer.")


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Convert ``cfg`` to plain JSON-ready data."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` from :func:`config_to_dict` output, validating every field."""
    return _build(RunConfig, data, prefix="")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix or 'root'!r} must be a mapping, got {data!r}.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"unknown config key {prefix}{unknown[0]!r}: valid keys are {', '.join(sorted(known))}."
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix=f"{prefix}{name}.")
        elif _origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _origin(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    return tuple if origin is tuple else origin


def _preset_names() -> tuple[str, ...]:
    from grokinterp.training.presets import PRESETS  # presets import this module

    return tuple(PRESETS)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Return ``cfg`` with ``section.field=value`` overrides applied, parsed by the field's type.

    Example: ``apply_overrides(cfg, ["task.op=multiply", "optim.lr=0.001"])``. Tuples take
    comma-separated values (``train.record_grad_steps=1,12,40``), booleans ``true``/``false``.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            hint = ""
            if item in _preset_names():
                hint = f" To start from the preset {item!r}, pass --preset {item}."
            raise ValueError(f"override {item!r} is invalid: write it as section.field=value.{hint}")
        section_name, dot, field_name = key.strip().partition(".")
        if not dot:
            if section_name == "name":
                cfg = dataclasses.replace(cfg, name=raw)
                continue
            raise ValueError(
                f"override key {key!r} is invalid: write section.field, with section one of "
                "task, model, optim, train."
            )
        section = getattr(cfg, section_name, None)
        if not dataclasses.is_dataclass(section):
            raise ValueError(
                f"override section {section_name!r} is unknown: use task, model, optim or train."
            )
        hints = typing.get_type_hints(type(section))
        if field_name not in hints:
            valid = ", ".join(f.name for f in fields(section))
            raise ValueError(
                f"override key {key!r} is unknown: {section_name} has the fields {valid}."
            )
        value = _parse_value(key, raw.strip(), hints[field_name])
        cfg = dataclasses.replace(cfg, **{section_name: dataclasses.replace(section, **{field_name: value})})
    return cfg


def _parse_value(key: str, raw: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return raw
    if origin in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if _origin(hint) is tuple:
        return tuple(int(part) for part in raw.split(",") if part.strip())
    try:
        if hint is bool:
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return lowered in ("true", "1", "yes")
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
    except ValueError:
        raise ValueError(
            f"override {key}={raw!r} is invalid: expected a value of type {hint.__name__}."
        ) from None
    return raw
