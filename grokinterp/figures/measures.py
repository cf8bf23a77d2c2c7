"""Measurements of one checkpoint that the figures track over training.

Each ``*_measure`` function returns a callable ``checkpoint → dict`` for
:func:`grokinterp.figures.series.checkpoint_series`:

* :func:`rank_measure`: σ_max, numerical rank and effective rank of ``E``, ``W`` and ``E W``.
* :func:`fourier_measure`: the embedding's Fourier spectrum and its sparsity.
* :func:`curvature_measure`: the extreme Hessian eigenvalues of the training loss over the
  blocks ``E``, ``W`` and both together, and a saddle verdict from them.

Extreme eigenvalues come from :func:`lanczos_extremes`, a fixed number of Lanczos steps. ARPACK
(:func:`grokinterp.analysis.hessian.extreme_eigenvalues`) finds λ_max of these Hessians in about
25 Hessian-vector products, but λ_min lies at the edge of a dense cluster of near-zero
eigenvalues and did not converge within hundreds of products on the p = 97 MLP. A fixed-step
Lanczos run gives both ends at once, with guarantees that hold at any step count: the smallest
Ritz value θ_min is ≥ λ_min, and it is the curvature vᵀHv of an explicit unit vector v, so
θ_min < 0 proves a direction of negative curvature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from grokinterp.analysis.coupling import bilinear_coupling
from grokinterp.analysis.curvature import answer_loss_fn
from grokinterp.analysis.fourier import embedding_spectrum, key_frequencies, spectrum_sparsity
from grokinterp.analysis.hessian import HessianProblem, saddle_verdict
from grokinterp.analysis.spectra import DEFAULT_RANK_RTOL
from grokinterp.checkpoint import Checkpoint
from grokinterp.models import embedding_names, first_layer_name
from grokinterp.tasks import all_pairs, make_split

Measure = Callable[[Checkpoint], dict[str, Any]]


@dataclass(frozen=True)
class RitzValues:
    """Ritz values of a symmetric operator after k Lanczos steps, with residual norms.

    Attributes:
        values: the k Ritz values in increasing order. Cauchy interlacing puts
            ``values[0] ≥ λ_min`` and ``values[-1] ≤ λ_max`` of the operator.
        residuals: ``‖H y − θ y‖`` of each Ritz pair (θ, y) with ‖y‖ = 1; an eigenvalue of the
            operator lies within this distance of θ.
        steps: Lanczos steps taken (fewer than requested when the Krylov space became invariant,
            in which case the Ritz values are exact eigenvalues).
    """

    values: Float[np.ndarray, " k"]
    residuals: Float[np.ndarray, " k"]
    steps: int

    @property
    def smallest(self) -> float:
        return float(self.values[0])

    @property
    def largest(self) -> float:
        return float(self.values[-1])


def lanczos_extremes(
    hvp: Callable[[Tensor], Tensor],
    n: int,
    steps: int,
    generator: torch.Generator,
) -> RitzValues:
    """Run ``steps`` Lanczos steps with full reorthogonalisation from a random unit vector.

    The Krylov basis Q is kept (``steps × n`` float64 numbers) and every new vector is
    orthogonalised against all of it twice, so the Ritz values carry no spurious copies. The
    Ritz values are the eigenvalues of the tridiagonal ``T = Qᵀ H Q``; the residual of the pair
    (θ_i, Q s_i) is ``β_k |s_i[-1]|``.

    Args:
        hvp: the symmetric operator v [n] → H v [n], such as a ``HessianProblem``.
        n: dimension of the operator.
        steps: Lanczos steps, 1 ≤ steps ≤ n; cost is one ``hvp`` per step.
        generator: draws the start vector.

    Returns:
        :class:`RitzValues`.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:
        raise ValueError(f"steps={steps!r} is invalid for n={n}: expected an integer in 1..{n}.")

    start = torch.randn(n, generator=generator, dtype=torch.float64)
    basis = torch.empty(steps + 1, n, dtype=torch.float64)
    basis[0] = start / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        w = hvp(basis[j]).detach().to(device="cpu", dtype=torch.float64)
        alphas.append(float(basis[j] @ w))
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        betas.append(beta)
        scale = max(abs(a) for a in alphas) or 1.0
        # A vanishing β means the Krylov space is invariant: its Ritz values are eigenvalues.
        if beta <= 1e-12 * scale:
            break
        basis[j + 1] = w / beta

    k = len(alphas)
    tridiagonal = np.diag(alphas) + np.diag(betas[: k - 1], 1) + np.diag(betas[: k - 1], -1)
    values, vectors = np.linalg.eigh(tridiagonal)
    residuals = abs(betas[k - 1]) * np.abs(vectors[-1, :])
    return RitzValues(values=values, residuals=residuals, steps=k)


def block_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Name the parameter blocks ``E`` (the embedding), ``W`` (the first layer reading it) and ``E+W``."""
    embed = embedding_names(model)
    if not embed:
        raise ValueError(
            f"{type(model).__name__} has no learned embedding, so it has no E block: analyse a "
            "model with model.input_mode=embed."
        )
    first = [first_layer_name(model)]
    return {"E": embed, "W": first, "E+W": embed + first}


def curvature_measure(
    block: str,
    lanczos_steps: int,
    relative_tau: float = 1e-3,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = 4096,
) -> Measure:
    """Measure the extreme Hessian eigenvalues of the training loss over one block, and a verdict.

    ``block`` is ``E``, ``W`` or ``E+W`` (see :func:`block_names`). The measure records θ_min and
    θ_max from :func:`lanczos_extremes` (bounds λ_min ≤ θ_min and θ_max ≤ λ_max, with
    residuals), the gradient norm, and :func:`grokinterp.analysis.hessian.saddle_verdict` with
    τ = ``relative_tau`` · max(|θ_min|, |θ_max|): "saddle" means a direction with curvature below
    −τ was found next to one above τ, and "minimum" only that none below −τ was found.

    The Hessian is that of the loss on the whole training set, the other parameters held fixed,
    with the products of :func:`grokinterp.analysis.curvature.answer_loss_fn` (double backward).
    :func:`grokinterp.analysis.curvature.block_curvature` computes converged eigenvalues instead,
    at a cost that varies per checkpoint; this measure spends a fixed number of products.
    ``dtype`` sets the precision of the Hessian-vector products. The default float32 is faster
    than float64, and its relative rounding (about 1e-6) is far below ``relative_tau``.
    """
    if block not in ("E", "W", "E+W"):
        raise ValueError(f"block={block!r} is unknown: choose E, W or E+W.")

    def measure(checkpoint: Checkpoint) -> dict[str, Any]:
        model = checkpoint.model.to(dtype)
        pairs = all_pairs(checkpoint.config.task)
        split = make_split(checkpoint.config.task)
        problem = HessianProblem(
            answer_loss_fn(model), dict(model.named_parameters()), pairs.tokens[split.train],
            pairs.labels[split.train], block=block_names(model)[block], chunk_size=chunk_size,
            method="double_backward", dtype=dtype,
        )
        ritz = lanczos_extremes(
            problem.hvp, problem.size, min(lanczos_steps, problem.size),
            torch.Generator().manual_seed(checkpoint.step),
        )
        grad_norm = float(problem.gradient().norm())
        tau = relative_tau * max(abs(ritz.smallest), abs(ritz.largest))
        verdict = saddle_verdict(
            grad_norm, torch.tensor([ritz.smallest, ritz.largest], dtype=torch.float64), tau
        )
        return {
            "lambda_min": ritz.smallest,
            "lambda_max": ritz.largest,
            "residual_min": float(ritz.residuals[0]),
            "residual_max": float(ritz.residuals[-1]),
            "grad_norm": grad_norm,
            "tau": tau,
            "verdict": verdict.verdict,
            "lanczos_steps": ritz.steps,
        }

    return measure


def rank_measure(rtol: float = DEFAULT_RANK_RTOL) -> Measure:
    """Measure σ_max, numerical rank and effective rank of ``E``, ``W`` and ``E W``.

    The numerical rank counts singular values above ``rtol`` · σ_max, and W is
    :func:`grokinterp.models.first_layer_matrix`.
    """

    def measure(checkpoint: Checkpoint) -> dict[str, Any]:
        coupling = bilinear_coupling(checkpoint.model, rank_rtol=rtol)
        summaries = {"E": coupling.E, "W": coupling.W, "EW": coupling.EW}
        return {
            name: {"rank": s.rank, "effective_rank": s.effective_rank, "sigma_max": s.sigma_max}
            for name, s in summaries.items()
        }

    return measure


def fourier_measure(energy_fraction: float = 0.95) -> Measure:
    """Measure the embedding spectrum over frequencies 0..p//2 and how sparse it is.

    The result has the spectrum, its Gini coefficient and IPR, and the key frequencies: the
    fewest frequencies holding ``energy_fraction`` of the non-constant energy.
    """

    def measure(checkpoint: Checkpoint) -> dict[str, Any]:
        p = checkpoint.config.task.p
        W_E = checkpoint.model.embed.W_E.detach().double()
        spectrum = embedding_spectrum(W_E, p)
        sparsity = spectrum_sparsity(W_E, p)
        keys = key_frequencies(spectrum, energy_fraction)
        return {
            "spectrum": spectrum.tolist(),
            "gini": sparsity.gini,
            "ipr": sparsity.inverse_participation_ratio,
            "key_frequencies": keys,
            "n_key_frequencies": len(keys),
        }

    return measure


def absent_token_fraction(
    gradient: Float[Tensor, "vocab d_model"], p: int
) -> float:
    """Compute the fraction of operand tokens 0..p−1 whose embedding-gradient row is exactly zero."""
    rows = gradient[:p].abs().sum(dim=1)
    return float((rows == 0).double().mean())

