"""Embedding update dynamics of a run: per-token norms, update counts and gradient snapshots.

"Mechanistic Insights into Grokking from the Embedding Layer" (arXiv 2505.15624) notes that a
row e_i of the embedding receives a loss gradient only on steps whose batch contains token i,
while weight decay shrinks every row on every step: E[Δe_i] = -ηλ e_i - η p_i ∇_{e_i} L. Rows
of rarely sampled tokens therefore shrink towards the origin and stagnate. This module reads
what the training loop records about that and finds the stagnant tokens:

* ``token_stats.jsonl``: at every evaluation, each token's appearance count, the running mean
  of its row-gradient norm and its row norm (see `grokinterp.training.token_stats`).
* ``embed_gradients.safetensors``: the full ∇_E L at the steps listed in
  ``train.record_grad_steps``, for gradient heat maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file
from torch import Tensor

from grokinterp.checkpoint import EMBED_GRADIENTS, TOKEN_STATS, read_metrics

RECORD_HINT = (
    "record them by training with train.record_grad_steps, e.g. "
    "'grokinterp train --preset paper-mlp train.record_grad_steps=1,12,40,68'"
)


@dataclass(frozen=True)
class TokenHistory:
    """Per-token statistics at each evaluation step of a run.

    Attributes:
        steps: the evaluation steps, increasing.
        appearance_count: steps whose batch contained each token, cumulative, [step, vocab].
        grad_norm_mean: running mean of ‖∇_{e_i} L‖ over the steps with the token.
        embed_norm: ‖e_i‖ after each step. Row norms are first observed at the first training
            step, so the row of step 0 contains zeros.
    """

    steps: Int[Tensor, " step"]
    appearance_count: Int[Tensor, "step vocab"]
    grad_norm_mean: Float[Tensor, "step vocab"]
    embed_norm: Float[Tensor, "step vocab"]

    def __post_init__(self) -> None:
        n_steps = self.steps.shape[0]
        for name in ("appearance_count", "grad_norm_mean", "embed_norm"):
            value = getattr(self, name)
            if value.ndim != 2 or value.shape[0] != n_steps:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}: expected [{n_steps}, vocab], one row "
                    "per step."
                )

    def update_frequency(self) -> Float[Tensor, "step vocab"]:
        """Return each token's appearances per step so far (0 at step 0)."""
        steps = self.steps.clamp(min=1).double()[:, None]
        return self.appearance_count.double() / steps


def read_token_history(run_dir: Path | str, max_step: int | None = None) -> TokenHistory:
    """Read ``token_stats.jsonl`` of a run, optionally up to ``max_step``.

    Raises:
        FileNotFoundError: when the run has no token statistics; they are written for models
            with an embedding when ``train.token_stats`` is true (the default).
    """
    rows = read_metrics(Path(run_dir), TOKEN_STATS)
    if max_step is not None:
        rows = [row for row in rows if row["step"] <= max_step]
    if not rows:
        raise FileNotFoundError(
            f"{Path(run_dir) / TOKEN_STATS} is missing or has no rows up to step {max_step}: "
            "token statistics are written for models with a learned embedding when "
            "train.token_stats=true."
        )
    return TokenHistory(
        steps=torch.tensor([row["step"] for row in rows], dtype=torch.long),
        appearance_count=torch.tensor([row["appearance_count"] for row in rows], dtype=torch.long),
        grad_norm_mean=torch.tensor([row["grad_norm_mean"] for row in rows], dtype=torch.float64),
        embed_norm=torch.tensor([row["embed_norm"] for row in rows], dtype=torch.float64),
    )


@dataclass(frozen=True)
class Stagnation:
    """Tokens whose embedding rows stagnated, by the criterion of `stagnant_tokens`.

    Attributes:
        step: the step the criterion was applied at.
        tokens: the stagnant token ids, increasing.
        candidates: the token ids considered.
        norm_fraction: a stagnant row's norm is below norm_fraction · the median row norm.
        count_fraction: and its appearance count below count_fraction · the mean count.
        norm_threshold: norm_fraction · median norm over the candidates.
        count_threshold: count_fraction · mean count over the candidates.
    """

    step: int
    tokens: tuple[int, ...]
    candidates: tuple[int, ...]
    norm_fraction: float
    count_fraction: float
    norm_threshold: float
    count_threshold: float


def stagnant_tokens(
    history: TokenHistory,
    candidates: Sequence[int],
    norm_fraction: float = 0.5,
    count_fraction: float = 0.5,
) -> Stagnation:
    """Find tokens whose rows stayed small because they were rarely updated.

    Criterion, at the last step of ``history``: token i stagnates when
    ‖e_i‖ < norm_fraction · median over candidates of ‖e_j‖ AND
    count_i < count_fraction · mean over candidates of count_j.
    Both conditions are needed: a small row that is updated as often as the others is small
    because the loss wants it so, and a rare token whose row is large has not stagnated.

    Args:
        history: from `read_token_history`.
        candidates: the tokens to judge, usually the operands 0..p-1 (the op and "=" tokens
            occur in every batch).
        norm_fraction: fraction of the median norm, in (0, 1].
        count_fraction: fraction of the mean count, in (0, 1].

    Returns:
        A `Stagnation`.
    """
    for name, value in (("norm_fraction", norm_fraction), ("count_fraction", count_fraction)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name}={value!r} is invalid: expected a fraction in (0, 1].")
    index = torch.as_tensor(list(candidates), dtype=torch.long)
    if index.numel() == 0:
        raise ValueError("candidates is empty: pass the token ids to judge, e.g. range(p).")

    norms = history.embed_norm[-1, index]
    counts = history.appearance_count[-1, index].double()
    norm_threshold = norm_fraction * float(norms.median())
    count_threshold = count_fraction * float(counts.mean())
    stagnant = (norms < norm_threshold) & (counts < count_threshold)
    return Stagnation(
        step=int(history.steps[-1]),
        tokens=tuple(index[stagnant].tolist()),
        candidates=tuple(index.tolist()),
        norm_fraction=norm_fraction,
        count_fraction=count_fraction,
        norm_threshold=norm_threshold,
        count_threshold=count_threshold,
    )


def read_embed_gradients(
    run_dir: Path | str, steps: Sequence[int] | None = None
) -> dict[int, Float[Tensor, "vocab d_model"]]:
    """Read the embedding gradients ∇_E L that the run recorded, by step.

    Args:
        run_dir: the run directory.
        steps: the steps to return; None returns every recorded step.

    Returns:
        Step -> gradient [d_vocab, d_model], in step order.

    Raises:
        FileNotFoundError: when the run recorded no gradients, or none of ``steps``.
    """
    path = Path(run_dir) / EMBED_GRADIENTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {RECORD_HINT}.")
    tensors = load_file(str(path))
    gradients = {int(key.removeprefix("step_")): value for key, value in tensors.items()}
    if steps is not None:
        missing = sorted(set(steps) - set(gradients))
        if missing:
            raise FileNotFoundError(
                f"{path} has no gradients at steps {missing}; it has {sorted(gradients)}: "
                f"{RECORD_HINT}."
            )
        gradients = {step: gradients[step] for step in steps}
    return dict(sorted(gradients.items()))
