"""Named embedding-layer training methods, each a list of config overrides.

A method is what one row of a steps-to-grok comparison changes relative to a preset: nothing
else. Learning rate, weight decay, batch size and step budget stay those of the preset unless the
method is that change, so a comparison isolates the method. The methods come from "Mechanistic
Insights into Grokking from the Embedding Layer" (arXiv 2505.15624: Adam-LR, the adaptive ratio
it derives, the frequency-aware sampler it derives, the one-hot control) and from Lee et al.
2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients" (arXiv 2405.20233).

:func:`apply_method` returns the preset's config with the method's overrides applied and the
method's name appended to the run name (``paper-mlp+adam-lr``), so cached runs of different
methods never share a directory and a run directory's name records which method trained it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from grokinterp.training.config import RunConfig, apply_overrides

METHOD_SEPARATOR = "+"


@dataclass(frozen=True)
class Method:
    """A named training method: a one-line description and the overrides that define it.

    ``overrides`` are ``section.field=value`` strings for
    :func:`~grokinterp.training.config.apply_overrides`; an empty tuple means the preset as is.
    """

    name: str
    description: str
    overrides: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name or METHOD_SEPARATOR in self.name:
            raise ValueError(
                f"method name {self.name!r} is invalid: use a non-empty name without "
                f"{METHOD_SEPARATOR!r}."
            )
        for item in self.overrides:
            key, sep, _ = item.partition("=")
            if not sep or "." not in key:
                raise ValueError(
                    f"method {self.name!r} has the override {item!r}: write it as "
                    "section.field=value."
                )

    @property
    def fields(self) -> tuple[str, ...]:
        """The config fields that the method sets, as ``section.field``."""
        return tuple(item.partition("=")[0].strip() for item in self.overrides)


# The frequency-aware sampler draws tokens with p_i ∝ exp(g_i² / γ), where g_i is the running
# norm of the gradient of embedding row i. On paper-mlp (lr 0.01, batch 512, seed 0) g_i lies
# between 0.006 and 0.024 over steps 150-600, and up to 0.18 later, so the default γ = 1 leaves
# the draws uniform to within 0.06 % early on. In a pilot on that seed, γ = 1e-4 concentrated
# the draws on a few tokens and training diverged (train accuracy below 7 % at step 3,700),
# γ = 1e-3 grokked at step 1,700, and γ = 1e-2 and γ = 1 at steps 1,100 and 1,200. γ = 1e-2 is
# the most non-uniform setting that trained as fast as uniform draws.
FREQUENCY_GAMMA = 1e-2

_METHODS = (
    Method("baseline", "the preset unchanged", ()),
    Method("adam", "Adam with coupled L2 weight decay", ("optim.name=adam",)),
    Method("adamw", "AdamW with decoupled weight decay", ("optim.name=adamw",)),
    Method(
        "adam-lr",
        "the preset's optimiser with the embedding's learning rate 10 times the rest (Adam-LR)",
        ("optim.embed_lr_ratio=10",),
    ),
    Method(
        "adaptive",
        "embedding lr ratio c = σ_max(E)/σ_max(W) · f_W/f_E, recomputed every 50 steps, "
        "clipped to [0.5, 32]",
        ("optim.lr_ratio=adaptive",),
    ),
    # With k = 1 the ratio settles near 1 once σ_max(E) ≈ σ_max(W); k = 10 makes that settled
    # value the paper's fixed c = 10.
    Method(
        "adaptive-k10",
        "the adaptive ratio with k = 10, so that balanced σ_max(E) ≈ σ_max(W) gives c ≈ 10",
        ("optim.lr_ratio=adaptive", "optim.adaptive_k=10"),
    ),
    Method(
        "frequency",
        f"online frequency-aware sampler, tokens drawn with p_i ∝ exp(g_i²/γ), γ = {FREQUENCY_GAMMA:g}",
        ("train.sampler=frequency", f"train.sampler_gamma={FREQUENCY_GAMMA!r}"),
    ),
    Method(
        "balanced",
        "token-balanced sampler: every operand token equally often in the batch stream",
        ("train.sampler=balanced",),
    ),
    Method(
        "grokfast-ema",
        "Grokfast-EMA gradient filter, α = 0.98, λ = 2",
        ("optim.grokfast=ema", "optim.grokfast_alpha=0.98", "optim.grokfast_lambda=2.0"),
    ),
    Method(
        "grokfast-ma",
        "Grokfast-MA gradient filter, window 100, λ = 5",
        ("optim.grokfast=ma", "optim.grokfast_window=100", "optim.grokfast_lambda=5.0"),
    ),
    Method("onehot", "one-hot tokens in place of a learned embedding", ("model.input_mode=onehot",)),
)

METHODS: dict[str, Method] = {method.name: method for method in _METHODS}


def get_method(name: str) -> Method:
    """Return the method called ``name``."""
    if name not in METHODS:
        raise ValueError(f"method {name!r} is unknown: choose one of {', '.join(METHODS)}.")
    return METHODS[name]


def apply_method(cfg: RunConfig, method: str | Method) -> RunConfig:
    """Return ``cfg`` with the method's overrides applied and ``+method`` appended to its name."""
    if isinstance(method, str):
        method = get_method(method)
    changed = apply_overrides(cfg, list(method.overrides))
    return dataclasses.replace(changed, name=f"{cfg.name}{METHOD_SEPARATOR}{method.name}")


def method_label(run_name: str) -> str:
    """Return the method part of a run name written by :func:`apply_method`, else the whole name."""
    _, sep, label = run_name.rpartition(METHOD_SEPARATOR)
    return label if sep and label else run_name
