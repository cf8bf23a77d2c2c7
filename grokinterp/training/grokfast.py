"""Grokfast gradient filters: add the slow component of each gradient back before the step.

Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients" (arXiv 2405.20233),
treat the gradients ``g_1, g_2, …`` of one parameter as a signal over training steps. A low-pass
filter ``h_t`` of that signal is amplified by ``λ`` and added to the raw gradient:

    ĝ_t = g_t + λ · h_t

and the optimiser steps on ``ĝ_t``. :class:`GrokfastEMA` uses an exponential moving average for
``h_t`` (the paper's Grokfast-EMA), :class:`GrokfastMA` the mean of the last ``w`` gradients
(Grokfast-MA). The training loop calls a filter between the backward pass and the optimiser step::

    loss.backward()
    grad_filter.apply(model.named_parameters())
    optimizer.step()

Each parameter has its own filter state, keyed by its name. A parameter whose ``.grad`` is None on
a step is skipped: its gradient stays None and its filter state does not advance, so a
parameter's filter advances only on the steps on which that parameter received a gradient. A dense gradient
that happens to be zero (the embedding row of a token absent from the batch) is a gradient and
does advance the filter. Weight decay added inside ``optimizer.step()`` (``torch.optim.Adam``'s
coupled L2, AdamW's decoupled decay) comes after the filter, so the filter sees the loss gradient
only.

The default hyperparameters are those of the authors' released code (``grokfast.py`` in
github.com/ironjr/grokfast): α = 0.98, λ = 2 for the EMA filter and w = 100, λ = 5 for the
moving average.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from grokinterp.training.state import StateDict, check_same_setting, check_state_keys


class GrokfastEMA:
    """Grokfast-EMA filter: ``μ_t = α μ_{t−1} + (1 − α) g_t`` and ``ĝ_t = g_t + λ μ_t``.

    The average starts at the parameter's first gradient, as in Algorithm 2 of Lee et al.
    (``μ_0 = g_1``). The first step therefore has ``μ_1 = g_1`` and ``ĝ_1 = (1 + λ) g_1``.

    Args:
        alpha: EMA decay ``α`` in ``[0, 1)``; larger values keep a slower average.
        lamb: amplification ``λ >= 0`` of the averaged gradient (``λ = 0`` leaves gradients
            unchanged but still tracks ``μ``).

    State (``state_dict()``): ``"alpha"``, ``"lamb"`` (floats) and, per parameter name ``n``
    that has received a gradient, ``"mu.<n>"``: the tensor ``μ`` with the parameter's shape.
    """

    def __init__(self, alpha: float = 0.98, lamb: float = 2.0) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"GrokfastEMA got alpha={alpha!r}: it must lie in [0, 1).")
        if not lamb >= 0.0:
            raise ValueError(f"GrokfastEMA got lamb={lamb!r}: it must be >= 0.")
        self.alpha = float(alpha)
        self.lamb = float(lamb)
        self._mu: dict[str, Tensor] = {}

    @torch.no_grad()
    def apply(self, named_parameters: Iterable[tuple[str, Tensor]]) -> None:
        """Replace each ``param.grad`` by its filtered gradient ``ĝ_t``, in place.

        Call after ``backward()`` and before ``optimizer.step()`` with
        ``model.named_parameters()``. Parameters with ``grad is None`` are skipped.
        """
        for name, param in named_parameters:
            grad = _dense_grad(name, param)
            if grad is None:
                continue

            mu = self._mu.get(name)
            if mu is None:
                mu = grad.detach().clone()
                self._mu[name] = mu
            else:
                _check_like(name, mu, grad, "GrokfastEMA")
                mu = mu.to(grad.device)
                mu.mul_(self.alpha).add_(grad, alpha=1.0 - self.alpha)
                self._mu[name] = mu

            grad.add_(mu, alpha=self.lamb)

    def state_dict(self) -> StateDict:
        """Return the hyperparameters and a copy of every parameter's average ``μ``."""
        state: StateDict = {"alpha": self.alpha, "lamb": self.lamb}
        for name, mu in self._mu.items():
            state[f"mu.{name}"] = mu.clone()
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore the averages saved by :meth:`state_dict`; the hyperparameters must match."""
        check_state_keys("GrokfastEMA", state, {"alpha", "lamb"})
        check_same_setting("GrokfastEMA", state, "alpha", self.alpha)
        check_same_setting("GrokfastEMA", state, "lamb", self.lamb)
        self._mu = {
            key.removeprefix("mu."): value.clone()
            for key, value in state.items()
            if key.startswith("mu.")
        }


class GrokfastMA:
    """Grokfast-MA filter: ``ĝ_t = g_t + λ · mean(g_{t−w+1}, …, g_t)`` (Algorithm 1 of Lee et al.).

    The window contains the current gradient and up to ``w − 1`` earlier ones. With
    ``warmup=True``, the default of the authors' released code, gradients pass unchanged
    (``ĝ_t = g_t``) until the window is full, so the first amplified step is the ``w``-th
    gradient a parameter receives. With ``warmup=False`` the mean runs over the ``t < w``
    gradients received so far, so ``ĝ_1 = (1 + λ) g_1``.

    Args:
        window: window length ``w >= 1``, in steps on which the parameter received a gradient.
        lamb: amplification ``λ >= 0`` of the windowed mean.
        warmup: whether to leave gradients unchanged until the window is full.

    The window is a ring buffer of ``w`` gradient copies per parameter, so the filter holds ``w``
    times the model's parameter memory, and each step sums ``w`` gradients.

    State (``state_dict()``): ``"window"`` (int), ``"lamb"`` (float), ``"warmup"`` (bool) and, per
    parameter name ``n``, ``"buffer.<n>"``: the ring buffer ``[w, *param.shape]``, and
    ``"seen.<n>"``: how many gradients the parameter has received (int). Slot ``seen % w`` is
    overwritten next, and slots ``seen`` and above are still empty while ``seen < w``.
    """

    def __init__(self, window: int = 100, lamb: float = 5.0, warmup: bool = True) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"GrokfastMA got window={window!r}: it must be an integer >= 1.")
        if not lamb >= 0.0:
            raise ValueError(f"GrokfastMA got lamb={lamb!r}: it must be >= 0.")
        self.window = window
        self.lamb = float(lamb)
        self.warmup = bool(warmup)
        self._buffer: dict[str, Tensor] = {}
        self._seen: dict[str, int] = {}

    @torch.no_grad()
    def apply(self, named_parameters: Iterable[tuple[str, Tensor]]) -> None:
        """Replace each ``param.grad`` by its filtered gradient ``ĝ_t``, in place.

        Call after ``backward()`` and before ``optimizer.step()`` with
        ``model.named_parameters()``. Parameters with ``grad is None`` are skipped.
        """
        for name, param in named_parameters:
            grad = _dense_grad(name, param)
            if grad is None:
                continue

            buffer = self._buffer.get(name)
            if buffer is None:
                buffer = grad.new_zeros((self.window, *grad.shape))
            else:
                _check_like(name, buffer[0], grad, "GrokfastMA")
                buffer = buffer.to(grad.device)
            seen = self._seen.get(name, 0)
            buffer[seen % self.window] = grad
            seen += 1
            self._buffer[name] = buffer
            self._seen[name] = seen

            if self.warmup and seen < self.window:
                continue
            # Until the ring is full the filled slots are exactly 0 .. seen-1.
            filled = min(seen, self.window)
            mean = buffer[:filled].sum(dim=0) / filled
            grad.add_(mean, alpha=self.lamb)

    def state_dict(self) -> StateDict:
        """Return the hyperparameters and a copy of every parameter's window."""
        state: StateDict = {"window": self.window, "lamb": self.lamb, "warmup": self.warmup}
        for name, buffer in self._buffer.items():
            state[f"buffer.{name}"] = buffer.clone()
            state[f"seen.{name}"] = self._seen[name]
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore the windows saved by :meth:`state_dict`; the hyperparameters must match."""
        check_state_keys("GrokfastMA", state, {"window", "lamb", "warmup"})
        check_same_setting("GrokfastMA", state, "window", self.window)
        check_same_setting("GrokfastMA", state, "lamb", self.lamb)
        check_same_setting("GrokfastMA", state, "warmup", self.warmup)

        names = [key.removeprefix("buffer.") for key in state if key.startswith("buffer.")]
        check_state_keys("GrokfastMA", state, {f"seen.{name}" for name in names})
        self._buffer = {name: state[f"buffer.{name}"].clone() for name in names}
        self._seen = {name: int(state[f"seen.{name}"]) for name in names}


def _dense_grad(name: str, param: Tensor) -> Tensor | None:
    grad = param.grad
    if grad is not None and grad.is_sparse:
        raise TypeError(
            f"Grokfast got a sparse gradient for parameter {name!r}: the filters need dense "
            "gradients, so build the embedding with sparse=False."
        )
    return grad


def _check_like(name: str, state: Tensor, grad: Tensor, owner: str) -> None:
    if state.shape != grad.shape or state.dtype != grad.dtype:
        raise ValueError(
            f"{owner} got a gradient of shape {tuple(grad.shape)} and dtype {grad.dtype} for "
            f"parameter {name!r}, but its filter state has shape {tuple(state.shape)} and dtype "
            f"{state.dtype}: the model changed since the filter first saw it, so build a new "
            "filter."
        )
