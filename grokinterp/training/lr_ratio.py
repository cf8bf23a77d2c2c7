"""Embedding-specific learning rate: a fixed ratio ``c = η_E / η_W`` or one adapted in training.

"Mechanistic Insights into Grokking from the Embedding Layer" (arXiv 2505.15624) trains the
embedding ``E`` with ``c`` times the learning rate of the other weights. Its "Adam-LR" is Adam with
``c = 10``, chosen by a sweep over ``c ∈ {0.5, 1, 4, 8, 10, 16, 24, 32}``. The same paper argues
that the balanced ratio is ``c ∝ (σ_max(E) / σ_max(W)) · (f_W / f_E)``, where ``W`` is the first
layer that reads the embedding and ``f_E``, ``f_W`` are how often each receives an update.

- :func:`param_groups` splits a model's parameters into an ``"embed"`` and a ``"rest"`` optimiser
  group with learning rates ``c · η`` and ``η`` (the fixed ratio).
- :class:`AdaptiveLRRatio` measures ``σ_max`` and the update frequencies during training and
  resets the embedding group's learning rate from them (the adaptive ratio, which the paper
  derives but does not run).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from grokinterp.training.state import StateDict, check_same_setting, check_state_keys

EMBED_GROUP = "embed"
REST_GROUP = "rest"


def param_groups(
    named_parameters: Iterable[tuple[str, Tensor]],
    embed_names: Collection[str],
    lr: float,
    embed_lr_ratio: float,
    weight_decay: float,
    embed_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Build optimiser parameter groups with the embedding's learning rate ``c · lr``.

    Args:
        named_parameters: ``model.named_parameters()``; every parameter goes into one group.
        embed_names: names of the embedding parameters, e.g. ``["embed.W_E"]``.
        lr: the learning rate ``η_W`` of every other parameter.
        embed_lr_ratio: ``c = η_E / η_W`` (the paper's Adam-LR uses 10).
        weight_decay: weight decay of the ``"rest"`` group, and of the ``"embed"`` group unless
            ``embed_weight_decay`` is given.
        embed_weight_decay: a separate weight decay for the embedding, or None for the same.

    Returns:
        ``[{"name": "embed", "params": [...], "lr": c·lr, "weight_decay": ...},
        {"name": "rest", "params": [...], "lr": lr, "weight_decay": ...}]``, ready for
        ``torch.optim.Adam(groups)`` or ``AdamW(groups)``. The ``"rest"`` group may be empty.
    """
    for arg, value in (("lr", lr), ("embed_lr_ratio", embed_lr_ratio)):
        if not value > 0:
            raise ValueError(f"param_groups got {arg}={value!r}: it must be > 0.")
    if embed_weight_decay is None:
        embed_weight_decay = weight_decay
    for arg, value in (("weight_decay", weight_decay), ("embed_weight_decay", embed_weight_decay)):
        if not value >= 0:
            raise ValueError(f"param_groups got {arg}={value!r}: it must be >= 0.")

    named = list(named_parameters)
    names = [name for name, _ in named]
    missing = sorted(set(embed_names) - set(names))
    if missing or not embed_names:
        raise ValueError(
            f"param_groups got embed_names={sorted(embed_names)!r}, which must name at least one "
            f"parameter of the model: choose from {names}."
        )

    embed = [param for name, param in named if name in embed_names]
    rest = [param for name, param in named if name not in embed_names]
    return [
        {
            "name": EMBED_GROUP,
            "params": embed,
            "lr": lr * embed_lr_ratio,
            "weight_decay": embed_weight_decay,
        },
        {"name": REST_GROUP, "params": rest, "lr": lr, "weight_decay": weight_decay},
    ]


@dataclass(frozen=True)
class RatioMeasurement:
    """One recomputation of the adaptive ratio, with the quantities it was computed from.

    ``unclipped_ratio`` is ``k · (sigma_max_embed / sigma_max_weight) · (f_weight / f_embed)``
    (``inf`` when ``sigma_max_weight`` or ``f_embed`` is zero), and ``ratio`` is that value
    clipped to ``[c_min, c_max]``.
    """

    step: int
    ratio: float
    unclipped_ratio: float
    sigma_max_embed: float
    sigma_max_weight: float
    f_embed: float
    f_weight: float


class AdaptiveLRRatio:
    """Controller that sets the embedding's learning rate to ``c_t · η_W`` from measured weights.

    Every ``every`` steps it recomputes

        c_t = clip(k · (σ_max(E) / σ_max(W)) · (f_W / f_E), c_min, c_max)

    where ``σ_max`` is the largest singular value (``torch.linalg.matrix_norm(ord=2)``), ``f_W``
    is the update frequency of ``W`` (1 when ``W`` is updated every step) and ``f_E`` is the
    measured update frequency of the embedding rows.

    Derivation. The first layer reads ``E`` and ``W`` only through their product: with
    ``G = ∂L/∂(EW)``, the chain rule gives ``∇_E L = G Wᵀ`` and ``∇_W L = Eᵀ G``, so
    ``‖∇_E L‖ ∝ σ_max(W)`` and ``‖∇_W L‖ ∝ σ_max(E)`` (both bounded by ``‖G‖`` times that
    singular value). A parameter updated in a fraction ``f`` of the steps with learning rate
    ``η`` moves on average ``η · f · ‖∇L‖`` per step. Equal expected update sizes for ``E`` and
    ``W``, ``η_E f_E σ_max(W) = η_W f_W σ_max(E)``, give
    ``η_E / η_W = (σ_max(E) / σ_max(W)) · (f_W / f_E)``, and ``k`` is the free proportionality
    constant.

    NOTE: the argument assumes update sizes proportional to the gradient, as in SGD. Adam
    divides by a running gradient scale, so under Adam the formula is a heuristic. The paper
    states it as a proposition and then uses a fixed ``c = 10``.

    Update frequency. ``observe(embed_grad)`` records each step which rows of the embedding
    gradient are nonzero (a row of a token absent from the batch is exactly zero). Over the last
    ``window`` observed steps, row ``i`` has frequency ``freq_i`` = fraction of steps in which it
    was nonzero. With ``per_row=False``, ``f_E`` is the mean of ``freq_i`` over all vocabulary
    rows, including the operation and ``=`` tokens, which appear in every batch. With
    ``per_row=True``, ``f_E`` is the mean of ``freq_i`` over ``operand_rows`` only. A learning
    rate is one number per optimiser group, so neither mode can give each row its own rate:
    ``per_row`` only selects the rows that enter the mean. ``f_E = 0`` makes the ratio infinite,
    which the clip turns into ``c_max``.

    Per step, after ``backward()``::

        controller.observe(model.embed.W_E.grad)   # before any gradient filter
        controller.update(step, model.embed.W_E, W, optimizer)
        optimizer.step()

    ``observe`` must see the loss gradient: a gradient filter such as Grokfast adds a nonzero
    average to absent rows, and an L2 term added to the loss makes every row nonzero.

    Args:
        k: proportionality constant ``k > 0``.
        every: recompute ``c_t`` when at least this many steps have passed since the last
            recomputation (the first ``update`` call always computes).
        c_min, c_max: clip range, ``0 < c_min <= c_max``.
        f_W: update frequency of ``W`` in ``(0, 1]``.
        per_row: average the row frequencies over ``operand_rows`` only (see above).
        window: number of most recent ``observe`` calls that the frequencies cover.
        operand_rows: the operand token ids (``range(p)`` in both token layouts); required when
            ``per_row=True`` and rejected otherwise.

    State (``state_dict()``): the hyperparameters above (``operand_rows`` as a list or None);
    ``"seen"``, the number of ``observe`` calls (int); ``"indicators"``, a bool tensor
    ``[window, vocab]`` ring buffer whose slot ``seen % window`` is written next (present once
    ``observe`` has run); ``"ratio"`` (float or None before the first update); and the fields of
    :attr:`last_measurement` as ``"measurement.<field>"`` (absent before the first update).
    """

    def __init__(
        self,
        k: float,
        every: int,
        c_min: float,
        c_max: float,
        f_W: float = 1.0,
        per_row: bool = False,
        window: int = 50,
        operand_rows: Sequence[int] | None = None,
    ) -> None:
        _check_positive_int("every", every)
        _check_positive_int("window", window)
        if not k > 0:
            raise ValueError(f"AdaptiveLRRatio got k={k!r}: it must be > 0.")
        if not 0 < c_min <= c_max:
            raise ValueError(
                f"AdaptiveLRRatio got c_min={c_min!r}, c_max={c_max!r}: they must satisfy "
                "0 < c_min <= c_max."
            )
        if not 0 < f_W <= 1:
            raise ValueError(f"AdaptiveLRRatio got f_W={f_W!r}: it must lie in (0, 1].")
        self.operand_rows = _check_operand_rows(per_row, operand_rows)

        self.k = float(k)
        self.every = every
        self.c_min = float(c_min)
        self.c_max = float(c_max)
        self.f_W = float(f_W)
        self.per_row = bool(per_row)
        self.window = window

        self._indicators: Tensor | None = None
        self._seen = 0
        self.ratio: float | None = None
        self.last_measurement: RatioMeasurement | None = None

    @torch.no_grad()
    def observe(self, embed_grad: Float[Tensor, "vocab d_model"]) -> None:
        """Record which embedding rows have a nonzero gradient on this step."""
        updated = embed_grad.detach().ne(0).any(dim=1)
        if self._indicators is None:
            if self.operand_rows is not None and max(self.operand_rows) >= len(updated):
                raise ValueError(
                    f"AdaptiveLRRatio got operand_rows up to {max(self.operand_rows)}, but the "
                    f"embedding gradient has only {len(updated)} rows: pass operand token ids "
                    "below d_vocab."
                )
            self._indicators = torch.zeros(
                (self.window, len(updated)), dtype=torch.bool, device=updated.device
            )
        elif self._indicators.shape[1] != len(updated):
            raise ValueError(
                f"AdaptiveLRRatio got an embedding gradient with {len(updated)} rows after "
                f"gradients with {self._indicators.shape[1]} rows: feed the same embedding "
                "every step."
            )

        self._indicators = self._indicators.to(updated.device)
        self._indicators[self._seen % self.window] = updated
        self._seen += 1

    def row_frequencies(self) -> Float[Tensor, " vocab"]:
        """Return each embedding row's update frequency over the observed window (float64)."""
        if self._indicators is None:
            raise RuntimeError(
                "AdaptiveLRRatio has no observations: call observe(embed_grad) after each "
                "backward pass before asking for frequencies."
            )
        filled = min(self._seen, self.window)
        return self._indicators[:filled].double().mean(dim=0)

    def embed_update_frequency(self) -> float:
        """Return ``f_E``: the mean row frequency over all rows, or over ``operand_rows``."""
        frequencies = self.row_frequencies()
        if self.per_row:
            frequencies = frequencies[list(self.operand_rows)]
        return float(frequencies.mean())

    @torch.no_grad()
    def update(
        self,
        step: int,
        E: Float[Tensor, "vocab d_model"],
        W: Float[Tensor, "rows cols"],
        optimizer: torch.optim.Optimizer,
    ) -> float:
        """Recompute ``c_t`` when due, set the embed group's lr to ``c_t`` times the rest group's.

        Args:
            step: the current training step; ``c_t`` is recomputed on the first call and
                whenever ``step`` is at least ``every`` past the last recomputation.
            E: the embedding matrix ``embed.W_E``.
            W: the first weight matrix that reads the embedding (any 2-D shape).
            optimizer: built from :func:`param_groups`, so it has groups named ``"embed"`` and
                ``"rest"``. The rest group's current lr is ``η_W``, so a schedule applied to it
                carries over to the embedding.

        Returns:
            The ratio ``c_t`` now in force.
        """
        embed_group, rest_group = _named_groups(optimizer)
        last = self.last_measurement
        if last is None or step - last.step >= self.every:
            self.last_measurement = self._measure(step, E, W)
            self.ratio = self.last_measurement.ratio

        embed_group["lr"] = self.ratio * rest_group["lr"]
        return self.ratio

    def _measure(
        self, step: int, E: Float[Tensor, "vocab d_model"], W: Float[Tensor, "rows cols"]
    ) -> RatioMeasurement:
        # float64 so that the ratio of two singular values keeps full precision.
        sigma_embed = float(torch.linalg.matrix_norm(E.detach().double(), ord=2))
        sigma_weight = float(torch.linalg.matrix_norm(W.detach().double(), ord=2))
        f_embed = self.embed_update_frequency()

        numerator = self.k * sigma_embed * self.f_W
        denominator = sigma_weight * f_embed
        if denominator == 0 and numerator == 0:
            raise ValueError(
                f"AdaptiveLRRatio cannot form a ratio at step {step}: σ_max(E)={sigma_embed}, "
                f"σ_max(W)={sigma_weight}, f_E={f_embed} give 0/0. Check that E and W are the "
                "trained weights and that observe() receives the embedding gradient."
            )
        unclipped = math.inf if denominator == 0 else numerator / denominator
        return RatioMeasurement(
            step=step,
            ratio=min(max(unclipped, self.c_min), self.c_max),
            unclipped_ratio=unclipped,
            sigma_max_embed=sigma_embed,
            sigma_max_weight=sigma_weight,
            f_embed=f_embed,
            f_weight=self.f_W,
        )

    def state_dict(self) -> StateDict:
        """Return the hyperparameters, the frequency window and the current ratio."""
        state: StateDict = {
            "k": self.k,
            "every": self.every,
            "c_min": self.c_min,
            "c_max": self.c_max,
            "f_W": self.f_W,
            "per_row": self.per_row,
            "window": self.window,
            "operand_rows": None if self.operand_rows is None else list(self.operand_rows),
            "seen": self._seen,
            "ratio": self.ratio,
        }
        if self._indicators is not None:
            state["indicators"] = self._indicators.clone()
        if self.last_measurement is not None:
            for key, value in dataclasses.asdict(self.last_measurement).items():
                state[f"measurement.{key}"] = value
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore a state from :meth:`state_dict`; the hyperparameters must match."""
        settings = ("k", "every", "c_min", "c_max", "f_W", "per_row", "window", "operand_rows")
        check_state_keys("AdaptiveLRRatio", state, {*settings, "seen", "ratio"})
        current = self.state_dict()
        for name in settings:
            check_same_setting("AdaptiveLRRatio", state, name, current[name])

        indicators = state.get("indicators")
        self._indicators = None if indicators is None else indicators.clone()
        self._seen = int(state["seen"])
        self.ratio = state["ratio"]
        fields = [field.name for field in dataclasses.fields(RatioMeasurement)]
        if f"measurement.{fields[0]}" in state:
            check_state_keys("AdaptiveLRRatio", state, {f"measurement.{name}" for name in fields})
            self.last_measurement = RatioMeasurement(
                **{name: state[f"measurement.{name}"] for name in fields}
            )
        else:
            self.last_measurement = None


def _named_groups(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    groups = {group.get("name"): group for group in optimizer.param_groups}
    if EMBED_GROUP not in groups or REST_GROUP not in groups:
        raise ValueError(
            f"AdaptiveLRRatio.update got an optimizer with groups named {list(groups)}, but "
            f"it needs groups named {EMBED_GROUP!r} and {REST_GROUP!r}: build the optimizer "
            "from param_groups()."
        )
    return groups[EMBED_GROUP], groups[REST_GROUP]


def _check_positive_int(arg: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"AdaptiveLRRatio got {arg}={value!r}: it must be an integer >= 1.")


def _check_operand_rows(
    per_row: bool, operand_rows: Sequence[int] | None
) -> tuple[int, ...] | None:
    if not per_row:
        if operand_rows is not None:
            raise ValueError(
                "AdaptiveLRRatio got operand_rows with per_row=False, where f_E averages over "
                "all rows: set per_row=True to average over operand_rows, or drop operand_rows."
            )
        return None
    if operand_rows is None or len(operand_rows) == 0:
        raise ValueError(
            f"AdaptiveLRRatio got per_row=True with operand_rows={operand_rows!r}: pass the "
            "operand token ids, e.g. range(p)."
        )
    rows = tuple(int(row) for row in operand_rows)
    if min(rows) < 0 or len(set(rows)) != len(rows):
        raise ValueError(
            f"AdaptiveLRRatio got operand_rows={list(rows)!r}: they must be distinct, "
            "non-negative token ids."
        )
    return rows
