"""Per-token statistics of embedding updates, and snapshots of the embedding gradient.

A row ``e_i`` of the embedding ``E`` receives a loss gradient only on steps whose batch contains
token ``i``, while weight decay shrinks every row on every step ("Mechanistic Insights into
Grokking from the Embedding Layer", arXiv 2505.15624). :class:`TokenStats` tracks, per token, how
often it appeared, how large its row gradient is when it does, and how large its row is.
:class:`GradientRecorder` keeps the whole embedding gradient at chosen steps for the paper's
gradient heat maps (its Fig. 3 shows steps 1, 12, 40 and 68, with one row per token).

Both are fed by the training loop after ``backward()`` with the loss gradient of ``embed.W_E``,
before any gradient filter changes it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from grokinterp.training.state import StateDict, check_same_setting, check_state_keys

HEATMAP_STEPS = (1, 12, 40, 68)


class TokenStats:
    """Running per-token counts and norms of the embedding rows and their gradients.

    For each token ``i`` of the vocabulary, after each :meth:`observe`:

    - ``appearance_count[i]``: the number of observed steps whose batch contained token ``i`` at
      any position (the operation and ``=`` tokens therefore appear on every step).
    - ``grad_norm_mean[i]``: a running mean of ``‖∇_{e_i} L‖`` over the steps on which token
      ``i`` appeared. Steps without the token are left out because their row gradient is zero by
      construction, and the quantity of interest (the gradient norm ``‖∇_{e_i} L‖`` that the
      frequency-aware sampler weighs) is the one a batch containing the token produces. With
      ``ema=β`` the mean is exponential: the first appearance sets it to the observed norm, later
      appearances update ``m ← β m + (1 − β) x``. With ``ema=None`` it is the exact mean over all
      appearances. Tokens that have not appeared yet have ``grad_norm_mean = 0``.
    - ``embed_norm[i]``: ``‖e_i‖`` at the latest observed step.

    Args:
        d_vocab: vocabulary size, the number of rows of ``embed.W_E``.
        ema: decay ``β`` in ``[0, 1)`` of the exponential mean, or None for the exact mean.

    State (``state_dict()``): ``"d_vocab"`` (int), ``"ema"`` (float or None), ``"steps"`` (number of
    observed steps), and the tensors ``"appearance_count"`` (int64), ``"grad_norm_mean"`` and
    ``"embed_norm"`` (float64), each of shape ``[vocab]``.
    """

    def __init__(self, d_vocab: int, ema: float | None = 0.9) -> None:
        if isinstance(d_vocab, bool) or not isinstance(d_vocab, int) or d_vocab < 1:
            raise ValueError(f"TokenStats got d_vocab={d_vocab!r}: it must be an integer >= 1.")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(
                f"TokenStats got ema={ema!r}: it must lie in [0, 1), or be None for the exact mean."
            )
        self.d_vocab = d_vocab
        self.ema = None if ema is None else float(ema)
        self.steps = 0
        self.appearance_count: Int[Tensor, " vocab"] = torch.zeros(d_vocab, dtype=torch.long)
        self.grad_norm_mean: Float[Tensor, " vocab"] = torch.zeros(d_vocab, dtype=torch.float64)
        self.embed_norm: Float[Tensor, " vocab"] = torch.zeros(d_vocab, dtype=torch.float64)

    @torch.no_grad()
    def observe(
        self,
        tokens: Int[Tensor, "batch pos"],
        embed_grad: Float[Tensor, "vocab d_model"],
        W_E: Float[Tensor, "vocab d_model"],
    ) -> None:
        """Update the statistics with one step's batch, embedding gradient and embedding."""
        self._check_inputs(tokens, embed_grad, W_E)
        device = embed_grad.device
        self.appearance_count = self.appearance_count.to(device)
        self.grad_norm_mean = self.grad_norm_mean.to(device)
        self.embed_norm = self.embed_norm.to(device)

        present = torch.bincount(tokens.reshape(-1).to(device), minlength=self.d_vocab) > 0
        self.appearance_count += present.long()

        # The weight of the new value: 1 on a token's first appearance, so no zero prior biases
        # the mean, then 1 - β for the exponential mean or 1/n for the exact one.
        grad_norm = embed_grad.detach().double().norm(dim=1)
        count = self.appearance_count.clamp(min=1).double()
        if self.ema is None:
            weight = 1.0 / count
        else:
            weight = torch.where(count == 1, 1.0, 1.0 - self.ema)
        step_change = weight * (grad_norm - self.grad_norm_mean)
        self.grad_norm_mean = torch.where(
            present, self.grad_norm_mean + step_change, self.grad_norm_mean
        )

        self.embed_norm = W_E.detach().double().norm(dim=1)
        self.steps += 1

    def _check_inputs(
        self,
        tokens: Int[Tensor, "batch pos"],
        embed_grad: Float[Tensor, "vocab d_model"],
        W_E: Float[Tensor, "vocab d_model"],
    ) -> None:
        if embed_grad.shape[0] != self.d_vocab or W_E.shape != embed_grad.shape:
            raise ValueError(
                f"TokenStats(d_vocab={self.d_vocab}) got embed_grad of shape "
                f"{tuple(embed_grad.shape)} and W_E of shape {tuple(W_E.shape)}: both must be "
                f"[{self.d_vocab}, d_model], the shape of embed.W_E."
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.d_vocab):
            raise ValueError(
                f"TokenStats(d_vocab={self.d_vocab}) got token ids from {int(tokens.min())} to "
                f"{int(tokens.max())}: they must lie in [0, {self.d_vocab})."
            )

    def snapshot(self) -> dict[str, list]:
        """Return the statistics as plain lists indexed by token id, for JSON logs."""
        return {
            "appearance_count": self.appearance_count.tolist(),
            "grad_norm_mean": self.grad_norm_mean.tolist(),
            "embed_norm": self.embed_norm.tolist(),
        }

    def state_dict(self) -> StateDict:
        """Return the settings, the step count and copies of the three per-token tensors."""
        return {
            "d_vocab": self.d_vocab,
            "ema": self.ema,
            "steps": self.steps,
            "appearance_count": self.appearance_count.clone(),
            "grad_norm_mean": self.grad_norm_mean.clone(),
            "embed_norm": self.embed_norm.clone(),
        }

    def load_state_dict(self, state: StateDict) -> None:
        """Restore a state from :meth:`state_dict`; ``d_vocab`` and ``ema`` must match."""
        tensors = ("appearance_count", "grad_norm_mean", "embed_norm")
        check_state_keys("TokenStats", state, {"d_vocab", "ema", "steps", *tensors})
        check_same_setting("TokenStats", state, "d_vocab", self.d_vocab)
        check_same_setting("TokenStats", state, "ema", self.ema)
        self.steps = int(state["steps"])
        self.appearance_count = state["appearance_count"].clone()
        self.grad_norm_mean = state["grad_norm_mean"].clone()
        self.embed_norm = state["embed_norm"].clone()


class GradientRecorder:
    """Copies of the full embedding gradient ``∇_E L`` (``[vocab, d_model]``) at chosen steps.

    The whole gradient is kept, not only its row norms, because a heat map of ``∇_E L`` shows its
    entries: rows of tokens absent from the batch are exactly zero. Row norms follow from
    ``gradient.norm(dim=1)``. Step numbers are the training loop's own; the paper's figure counts
    optimiser steps from 1, which :data:`HEATMAP_STEPS` follows.

    Per step: ``recorder.record(step, model.embed.W_E.grad)``. Copies are stored on the CPU.

    State (``state_dict()``): ``"steps"`` (the chosen steps, a sorted list) and, per recorded step
    ``s``, ``"grad.<s>"``: the gradient tensor.
    """

    def __init__(self, steps: Iterable[int] = HEATMAP_STEPS) -> None:
        steps = list(steps)
        if not all(isinstance(step, int) and not isinstance(step, bool) for step in steps):
            raise TypeError(
                f"GradientRecorder got steps={steps!r}: pass integer step numbers, "
                "e.g. (1, 12, 40, 68)."
            )
        self.steps = tuple(sorted(set(steps)))
        self.gradients: dict[int, Float[Tensor, "vocab d_model"]] = {}

    @torch.no_grad()
    def record(self, step: int, embed_grad: Float[Tensor, "vocab d_model"]) -> bool:
        """Store a CPU copy of ``embed_grad`` if ``step`` is a chosen step; return whether it did."""
        if step not in self.steps:
            return False
        self.gradients[step] = embed_grad.detach().to("cpu", copy=True)
        return True

    def state_dict(self) -> StateDict:
        """Return the chosen steps and the gradients recorded so far."""
        state: StateDict = {"steps": list(self.steps)}
        for step, gradient in self.gradients.items():
            state[f"grad.{step}"] = gradient.clone()
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore the gradients from :meth:`state_dict`; the chosen steps must match."""
        check_state_keys("GradientRecorder", state, {"steps"})
        check_same_setting("GradientRecorder", state, "steps", list(self.steps))
        self.gradients = {
            int(key.removeprefix("grad.")): value.clone()
            for key, value in state.items()
            if key.startswith("grad.")
        }
