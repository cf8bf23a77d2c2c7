"""Scales, run configs and the registry behind the figure set.

A figure is a :class:`FigureSpec`: a function that lists the runs it needs, grouped by condition
(each condition one config per seed), and a function that turns the finished run directories into
a matplotlib figure and the data behind it. :class:`FigureScale` sets the sizes those runs use:
:data:`PAPER_SCALE` reproduces the settings of "Mechanistic Insights into Grokking from the
Embedding Layer" (arXiv 2505.15624), :data:`QUICK_SCALE` shrinks them so the whole set runs in a
few minutes on a laptop CPU.

Every config gets a name computed from its contents (:func:`run_name`), so two figures that need
the same run (Fig. 6's Adam run on addition is Fig. 5's ``c = 1`` run) share one cached run
directory of :func:`grokinterp.experiments.ensure_runs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from grokinterp.experiments import with_seed
from grokinterp.training.config import RunConfig, apply_overrides
from grokinterp.training.presets import get_preset

Conditions = dict[str, list[RunConfig]]
"""Condition label → one config per seed, in seed order."""

RunDirs = dict[str, list[Path]]
"""Condition label → one finished run directory per seed, in seed order."""


@dataclass(frozen=True)
class FigureScale:
    """Sizes of the experiments behind the figures.

    The embedding MLP runs start from the ``paper-mlp`` preset with ``p``, ``d_embed`` and
    ``d_mlp`` replaced, the transformer runs from ``tiny-transformer`` with
    ``transformer_overrides`` applied. Every run has early stopping off, so that all seeds of a
    condition have an evaluation at the same steps and curves can be averaged.

    Attributes:
        name: label written into every data file (``"paper"`` or ``"quick"``).
        p: modulus of the MLP tasks (prime, because division needs inverses).
        d_embed: embedding width of the MLP.
        d_mlp: hidden width of the MLP.
        batch_size: the main minibatch size (the paper's 512).
        small_batch_size: the small batch that leaves tokens out of batches (the paper's 64),
            used by the gradient heat maps and the per-token norms.
        split_batch_sizes: the batch sizes of the split-strategy comparison (64, 128, 512).
        steps: step budget of runs at lr 0.01.
        slow_steps: step budget of runs at lr 0.001.
        eval_every: steps between evaluations.
        checkpoint_every: steps between checkpoints, which the curvature, rank and Fourier
            figures analyse.
        max_checkpoints: maximum number of checkpoints per run that the Hessian figures
            analyse, spread evenly over the run, because each costs tens of Hessian-vector
            products.
        seeds: number of seeds per condition (seeds 0 .. seeds − 1).
        lanczos_steps: Hessian-vector products per block and checkpoint in the curvature
            figures (see :func:`grokinterp.figures.measures.lanczos_extremes`).
        transformer_overrides: ``section.field=value`` overrides of the ``tiny-transformer``
            preset.
    """

    name: str
    p: int
    d_embed: int
    d_mlp: int
    batch_size: int
    small_batch_size: int
    split_batch_sizes: tuple[int, ...]
    steps: int
    slow_steps: int
    eval_every: int
    checkpoint_every: int
    max_checkpoints: int
    seeds: int
    lanczos_steps: int
    transformer_overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("p", "d_embed", "d_mlp", "batch_size", "small_batch_size", "steps",
                     "slow_steps", "eval_every", "checkpoint_every", "max_checkpoints", "seeds",
                     "lanczos_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"FigureScale.{name}={value!r} is invalid: it must be a positive integer."
                )
        if not self.split_batch_sizes:
            raise ValueError("FigureScale.split_batch_sizes is empty: give at least one batch size.")

    def with_seeds(self, seeds: int | None) -> FigureScale:
        """Return this scale with ``seeds`` seeds per condition (None keeps the scale's own)."""
        if seeds is None:
            return self
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"seeds={seeds!r} is invalid: pass a positive number of seeds.")
        return dataclasses.replace(self, seeds=seeds)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PAPER_SCALE = FigureScale(
    name="paper",
    p=97,
    d_embed=128,
    d_mlp=512,
    batch_size=512,
    small_batch_size=64,
    split_batch_sizes=(64, 128, 512),
    steps=3000,
    slow_steps=8000,
    eval_every=50,
    checkpoint_every=100,
    max_checkpoints=16,
    seeds=3,
    lanczos_steps=30,
    transformer_overrides=("train.steps=10000",),
)
"""The paper's settings: (a op b) mod 97, embedding 128, hidden 512, batch 512, 30 % train.

The step budgets are our choice. On addition the embedding MLP reaches test accuracy 0.99 after
about 1,300 steps at lr 0.01 and 5,700 at lr 0.001 on one seed. The ``tiny-transformer`` gets
10,000 steps because its grok step varies widely with the seed: seed 2 reached 0.99 at step
5,700, while seed 0 was at 0.39 after 6,000 steps and seed 1 at 0.97 after 12,000.
"""

QUICK_SCALE = FigureScale(
    name="quick",
    p=23,
    d_embed=32,
    d_mlp=128,
    batch_size=64,
    small_batch_size=16,
    split_batch_sizes=(16, 32, 64),
    steps=200,
    slow_steps=200,
    eval_every=20,
    checkpoint_every=40,
    max_checkpoints=5,
    seeds=1,
    lanczos_steps=10,
    transformer_overrides=(
        "task.p=23", "model.d_model=32", "model.d_head=8", "model.d_mlp=128", "train.steps=200",
        "train.eval_every=20", "train.checkpoint_every=40",
    ),
)
"""A preview of every figure in a few minutes on two CPU cores; the models do not grok."""


def mlp_config(scale: FigureScale, *overrides: str) -> RunConfig:
    """Build the paper's embedding MLP config at ``scale``, with ``section.field=value`` overrides.

    Example: ``mlp_config(scale, "task.op=multiply", "optim.embed_lr_ratio=10")`` is Adam-LR on
    multiplication.
    """
    base = apply_overrides(
        get_preset("paper-mlp"),
        [
            f"task.p={scale.p}",
            f"model.d_embed={scale.d_embed}",
            f"model.d_mlp={scale.d_mlp}",
            f"train.batch_size={scale.batch_size}",
            f"train.steps={scale.steps}",
            f"train.eval_every={scale.eval_every}",
            f"train.checkpoint_every={scale.checkpoint_every}",
            "train.early_stop_evals=0",
        ],
    )
    return named(apply_overrides(base, list(overrides)))


def transformer_config(scale: FigureScale, *overrides: str) -> RunConfig:
    """Build the ``tiny-transformer`` config at ``scale``, early stopping off, with overrides."""
    base = apply_overrides(
        get_preset("tiny-transformer"),
        [*scale.transformer_overrides, "train.early_stop_evals=0"],
    )
    return named(apply_overrides(base, list(overrides)))


def named(cfg: RunConfig) -> RunConfig:
    """Rename ``cfg`` by :func:`run_name`, so equal configs share a name and a cached run."""
    return dataclasses.replace(cfg, name=run_name(cfg))


def run_name(cfg: RunConfig) -> str:
    """Build a readable name from the settings that the figures vary.

    Example: ``mlp-add-b512-lr0.01-c10-wd0.001-seed0``. The run directory adds the config hash,
    which separates configs that differ in any other setting.
    """
    model = cfg.model.kind if cfg.model.input_mode == "embed" else f"mlp_{cfg.model.input_mode}"
    parts = [model, cfg.task.op]
    if cfg.task.split != "random":
        parts.append(cfg.task.split)
    parts.append(f"b{cfg.train.batch_size}")
    parts.append(f"lr{cfg.optim.lr:g}")
    if cfg.optim.lr_ratio == "adaptive":
        parts.append("cadaptive")
    else:
        parts.append(f"c{cfg.optim.embed_lr_ratio:g}")
    parts.append(f"wd{cfg.optim.weight_decay:g}")
    parts.append(f"seed{cfg.model.init_seed}")
    return "-".join(parts)


def over_seeds(cfg: RunConfig, scale: FigureScale) -> list[RunConfig]:
    """Copy ``cfg`` once per seed 0 .. scale.seeds − 1 (data split, initialisation, batch order)."""
    return [named(with_seed(cfg, seed)) for seed in range(scale.seeds)]


@dataclass
class FigureOutput:
    """A drawn figure and the JSON-ready data it shows."""

    figure: Figure
    data: dict[str, Any]


@dataclass(frozen=True)
class FigureSpec:
    """One figure: its file stem, what it shows, the runs it needs and how it is drawn.

    Attributes:
        name: file stem of the PNG and the JSON, e.g. ``fig02_embedding_vs_noembedding``.
        title: one line saying what the figure shows.
        source: ``"arXiv 2505.15624 Fig. N"`` for a figure of the paper, ``"extension"`` for ours.
        conditions: scale → the runs needed, one config per seed for each condition.
        make: ``(scale, run directories by condition, progress)`` → the figure and its data.
    """

    name: str
    title: str
    source: str
    conditions: Callable[[FigureScale], Conditions]
    make: Callable[[FigureScale, RunDirs, bool], FigureOutput]


FIGURES: dict[str, FigureSpec] = {}
"""Every registered figure by name, paper figures first, in the order they are drawn."""


def register(
    name: str, title: str, source: str, conditions: Callable[[FigureScale], Conditions]
) -> Callable[[Callable[[FigureScale, RunDirs, bool], FigureOutput]], FigureSpec]:
    """Decorator that registers a ``make`` function as the figure ``name``."""

    def decorate(make: Callable[[FigureScale, RunDirs, bool], FigureOutput]) -> FigureSpec:
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice: give each figure its own name.")
        spec = FigureSpec(name=name, title=title, source=source, conditions=conditions, make=make)
        FIGURES[name] = spec
        return spec

    return decorate


def resolve_names(names: Sequence[str] | None) -> list[str]:
    """Resolve names or unique prefixes (such as ``fig02``) to figure names, in registry order.

    None or an empty list means every figure.
    """
    if not names:
        return list(FIGURES)
    resolved = []
    for requested in names:
        matches = [name for name in FIGURES if name == requested or name.startswith(requested)]
        if len(matches) != 1:
            problem = "is unknown" if not matches else f"matches several figures ({', '.join(matches)})"
            raise ValueError(
                f"figure {requested!r} {problem}: choose from {', '.join(FIGURES)} "
                "(a unique prefix such as fig02 is enough)."
            )
        if matches[0] not in resolved:
            resolved.append(matches[0])
    order = list(FIGURES)
    return sorted(resolved, key=order.index)
