"""Singular-value summaries of weight matrices: σ_max, numerical rank and effective rank.

The numerical rank counts singular values above ``rtol · σ_max``. The default ``rtol = 1e-2``
ignores directions that carry under 1 % of the largest one. The floating-point default of
``numpy.linalg.matrix_rank`` (``σ_max · max(m, n) · eps``) would instead report full rank for
almost every trained float32 matrix. The effective rank is ``exp`` of the entropy of the
normalised singular values (Roy and Vetterli 2007, "The effective rank: a measure of effective
dimensionality"), a tolerance-free companion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

DEFAULT_RANK_RTOL = 1e-2


def _check_matrix(matrix: Tensor, name: str) -> Tensor:
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(matrix.shape)}.")
    return matrix.detach().double()


def singular_values(matrix: Float[Tensor, "rows cols"]) -> Float[Tensor, " k"]:
    """Singular values of ``matrix`` in float64, largest first."""
    return torch.linalg.svdvals(_check_matrix(matrix, "matrix"))


def sigma_max(matrix: Float[Tensor, "rows cols"]) -> float:
    """Largest singular value (spectral norm) of ``matrix``."""
    return float(singular_values(matrix)[0])


def _rank_of(values: Tensor, rtol: float) -> int:
    if not 0.0 <= rtol < 1.0:
        raise ValueError(f"rtol={rtol!r} is invalid: it must lie in [0, 1).")
    if len(values) == 0 or values[0] == 0:
        return 0
    return int((values > rtol * values[0]).sum())


def _effective_rank_of(values: Tensor) -> float:
    total = values.sum()
    if total == 0:
        return 0.0
    weights = values[values > 0] / total
    return float(torch.exp(-(weights * weights.log()).sum()))


def numerical_rank(matrix: Float[Tensor, "rows cols"], rtol: float = DEFAULT_RANK_RTOL) -> int:
    """Number of singular values above ``rtol · σ_max``."""
    return _rank_of(singular_values(matrix), rtol)


def effective_rank(matrix: Float[Tensor, "rows cols"]) -> float:
    """``exp(H(σ / Σσ))``: 1 for a rank-one matrix, ``min(rows, cols)`` for equal singular values."""
    return _effective_rank_of(singular_values(matrix))


@dataclass(frozen=True)
class MatrixSummary:
    """σ_max, numerical rank at ``rtol`` and effective rank of one matrix."""

    shape: tuple[int, int]
    sigma_max: float
    rank: int
    effective_rank: float
    rtol: float

    def as_dict(self) -> dict[str, object]:
        return {
            "shape": list(self.shape),
            "sigma_max": self.sigma_max,
            "rank": self.rank,
            "effective_rank": self.effective_rank,
            "rank_rtol": self.rtol,
        }


def summarize_matrix(matrix: Float[Tensor, "rows cols"], rtol: float = DEFAULT_RANK_RTOL) -> MatrixSummary:
    """Compute :class:`MatrixSummary` of ``matrix`` with one SVD."""
    values = singular_values(matrix)
    return MatrixSummary(
        shape=(int(matrix.shape[0]), int(matrix.shape[1])),
        sigma_max=float(values[0]) if len(values) else 0.0,
        rank=_rank_of(values, rtol),
        effective_rank=_effective_rank_of(values),
        rtol=rtol,
    )
