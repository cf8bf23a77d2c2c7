"""Fourier analysis over the residues mod p: spectra, sparsity and progress measures.

A model of modular addition that generalises computes with a few frequencies w_k = 2πk/p: its
embedding rows, neurons and logits are sums of cos(w_k x) and sin(w_k x) terms. This module
expands functions of the residues 0..p-1 in the real orthonormal Fourier basis and measures
how concentrated the result is.

Two families of measures are implemented from their mathematics:

* The embedding spectrum of "Mechanistic Insights into Grokking from the Embedding Layer"
  (arXiv 2505.15624, Fig. 11): the DFT of the embedding along the vocabulary axis, with the L2
  norm taken over the embedding dimension. `key_frequencies`, `gini` and
  `inverse_participation_ratio` summarise it.
* The progress measures of Nanda et al. 2023, "Progress measures for grokking via mechanistic
  interpretability" (arXiv 2301.05217). Neuron activations over the p x p grid of inputs
  (a, b) get a 2-D Fourier transform, which gives the fraction of each neuron's variance that
  one frequency explains. The restricted and excluded losses come from the grid of logits.

Grid layout: a tensor over all input pairs has shape [a, b, ...] with a = b = p, so that
``grid[a, b]`` belongs to the input pair (a, b).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

logger = logging.getLogger(__name__)

UNCLUSTERED = 0
"""Cluster label of a neuron that no single frequency explains (see `cluster_neurons`)."""

Projection = Literal["joint", "per_output"]

_PROJECTIONS = ("joint", "per_output")
_SUPPORTED_OPERATIONS = ("add",)
_EXCLUDED_ROWS_PER_BLOCK = 1024
_LOG2_E = 1.0 / math.log(2.0)


# ---------------------------------------------------------------------------------------------
# The real Fourier basis over Z_p


def _check_modulus(p: int) -> None:
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise ValueError(f"p={p!r} is not a valid modulus: expected an integer p >= 2.")


def basis_frequencies(p: int) -> Int[Tensor, " freq"]:
    """Return the frequency index k of each row of `fourier_basis(p)`.

    Row 0 has frequency 0 (the constant row), rows 2k-1 and 2k have frequency k, and for even
    p the last row has the Nyquist frequency p/2.

    Example:
        >>> basis_frequencies(5).tolist()
        [0, 1, 1, 2, 2]
        >>> basis_frequencies(6).tolist()
        [0, 1, 1, 2, 2, 3]
    """
    _check_modulus(p)
    row = torch.arange(p)
    return (row + 1) // 2


def _is_sine_row(p: int) -> Bool[Tensor, " freq"]:
    # Rows 2k are the sines; for even p the last row (index p - 1, odd) is the Nyquist cosine.
    row = torch.arange(p)
    return (row % 2 == 0) & (row > 0)


def basis_labels(p: int) -> list[str]:
    """Return a label for each row of `fourier_basis(p)`: "const", "cos k" or "sin k".

    Example:
        >>> basis_labels(6)
        ['const', 'cos 1', 'sin 1', 'cos 2', 'sin 2', 'cos 3']
    """
    frequencies = basis_frequencies(p).tolist()
    is_sine = _is_sine_row(p).tolist()

    labels = []
    for frequency, sine in zip(frequencies, is_sine, strict=True):
        if frequency == 0:
            labels.append("const")
        else:
            labels.append(f"{'sin' if sine else 'cos'} {frequency}")
    return labels


def fourier_basis(p: int, dtype: torch.dtype = torch.float64) -> Float[Tensor, "freq p"]:
    """Build the orthonormal real Fourier basis over the residues 0..p-1.

    Row 0 is the constant 1/sqrt(p). For k = 1..(p-1)//2 rows 2k-1 and 2k are
    cos(2πkx/p) and sin(2πkx/p), each scaled to unit L2 norm (by sqrt(2/p)). For even p the
    last row is the Nyquist cosine cos(πx) / sqrt(p). The p rows form an orthonormal basis of
    R^p, so ``B @ B.T`` is the identity and ``B @ f`` gives the coefficients of f.

    Args:
        p: the modulus, an integer >= 2.
        dtype: floating dtype of the result.

    Returns:
        The basis, shape [p, p]: row i is basis function i evaluated at x = 0..p-1.
        `basis_frequencies` and `basis_labels` describe the rows.

    Example:
        >>> basis = fourier_basis(7)
        >>> torch.allclose(basis @ basis.T, torch.eye(7, dtype=torch.float64))
        True
    """
    _check_modulus(p)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype={dtype} is not a floating dtype: pass e.g. torch.float64.")

    # Reducing k*x mod p before scaling keeps the angles in [0, 2π), which keeps cos and sin
    # accurate for large p.
    residues = torch.arange(p)
    phase = torch.outer(basis_frequencies(p), residues) % p
    angle = phase.to(torch.float64) * (2 * torch.pi / p)
    rows = torch.where(_is_sine_row(p)[:, None], torch.sin(angle), torch.cos(angle))

    rows = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return rows.to(dtype)


# ---------------------------------------------------------------------------------------------
# Spectra of weight matrices along the residue axis


def residue_spectrum(
    W: Float[Tensor, "rows cols"], p: int, axis: int = 0
) -> Float[Tensor, " freq"]:
    """Compute the Fourier amplitude of each frequency 0..p//2 of W along its residue axis.

    The residue axis is ``axis`` of W, and its first p entries are the residues 0..p-1 (the
    rest, such as the op and "=" tokens of an embedding, are ignored). Each residue slice is
    projected on the orthonormal real basis of `fourier_basis`, and the amplitude of frequency
    k is the L2 norm of all coefficients of frequency k (cos and sin rows, all channels):

        spectrum[k] = sqrt( sum over rows i with frequency k, over channels d, of (B W)[i, d]^2 )

    Normalisation: the transform is orthonormal, so sum_k spectrum[k]^2 equals the squared
    Frobenius norm of the residue part of W (Parseval). In terms of the raw DFT
    X_k = sum_x W[x] exp(-2πikx/p), spectrum[k] = sqrt(2/p) * ||X_k|| for 0 < k < p/2 and
    ||X_k|| / sqrt(p) for k = 0 and the Nyquist frequency. Index 0 is the constant term: the
    norm of the mean residue vector times sqrt(p).

    Args:
        W: a 2-D weight matrix.
        p: the modulus; W must have at least p entries along ``axis``.
        axis: 0 when the residues index rows (an embedding W_E [vocab, d_model]), 1 when they
            index columns (an unembedding W_U [d_model, p]).

    Returns:
        The amplitudes for frequencies 0..p//2, shape [p//2 + 1], in W's dtype.

    Example:
        >>> x = torch.arange(11, dtype=torch.float64)
        >>> W_E = torch.stack([torch.cos(2 * torch.pi * 3 * x / 11)] * 4, dim=1)
        >>> int(residue_spectrum(W_E, 11).argmax())
        3
    """
    _check_modulus(p)
    if axis not in (0, 1):
        raise ValueError(
            f"axis={axis!r} is invalid: expected 0 (residues index rows) or 1 (residues index columns)."
        )
    if W.shape[axis] < p:
        raise ValueError(
            f"W has shape {tuple(W.shape)}, so axis {axis} has {W.shape[axis]} entries, fewer "
            f"than p={p} residues: pass the matrix whose axis {axis} indexes the residues."
        )

    residue_values = W[:p] if axis == 0 else W[:, :p].T
    basis = fourier_basis(p, dtype=W.dtype).to(W.device)
    coefficients = einops.einsum(basis, residue_values, "freq p, p channel -> freq channel")

    row_energy = coefficients.pow(2).sum(dim=1)
    frequency_energy = torch.zeros(p // 2 + 1, dtype=W.dtype, device=W.device)
    frequency_energy.index_add_(0, basis_frequencies(p).to(W.device), row_energy)
    return frequency_energy.sqrt()


def embedding_spectrum(W_E: Float[Tensor, "vocab d_model"], p: int) -> Float[Tensor, " freq"]:
    """Compute the Fourier spectrum of an embedding along the vocabulary axis.

    This is the measure of Fig. 11 of arXiv 2505.15624: the DFT of the residue rows
    W_E[0:p] along the vocabulary axis, with the L2 norm taken over the embedding dimension.
    The non-residue tokens (op, "=") are ignored. See `residue_spectrum` for the
    normalisation; index 0 is the constant term and is included.

    Args:
        W_E: the embedding matrix, one row per token; rows 0..p-1 are the residues.
        p: the modulus.

    Returns:
        Amplitudes of frequencies 0..p//2, shape [p//2 + 1].
    """
    return residue_spectrum(W_E, p, axis=0)


def key_frequencies(spectrum: Float[Tensor, " freq"], energy_fraction: float = 0.95) -> list[int]:
    """Find the key frequencies of a spectrum: the fewest that hold most non-constant energy.

    Criterion: the energy of frequency k is spectrum[k]^2. Ignoring the constant term k = 0,
    the frequencies are ranked by energy, and the smallest top-ranked set whose energy is at
    least ``energy_fraction`` of the total non-constant energy is returned. A sparse spectrum
    (addition after grokking) gives a few frequencies, and a diffuse one gives most of them.

    Args:
        spectrum: non-negative amplitudes of frequencies 0..K, as returned by
            `embedding_spectrum` or `residue_spectrum`.
        energy_fraction: the share of non-constant energy to explain, in (0, 1].

    Returns:
        The key frequencies in increasing order, each in 1..K.

    Example:
        >>> key_frequencies(torch.tensor([5.0, 0.0, 3.0, 0.01, 2.0, 0.0]))
        [2, 4]
    """
    if not 0.0 < energy_fraction <= 1.0:
        raise ValueError(
            f"energy_fraction={energy_fraction!r} is invalid: expected a value in (0, 1]."
        )
    if spectrum.shape[0] < 2:
        raise ValueError(
            f"spectrum has {spectrum.shape[0]} entries: expected the constant term and at least one "
            "frequency (p >= 2)."
        )
    if bool((spectrum < 0).any()) or not bool(torch.isfinite(spectrum).all()):
        raise ValueError("spectrum has negative or non-finite entries: expected amplitudes >= 0.")

    energy = spectrum[1:].pow(2)
    total = energy.sum()
    if total <= 0:
        raise ValueError(
            "spectrum has no energy outside the constant term, so it has no key frequencies."
        )

    order = torch.argsort(energy, descending=True)
    cumulative_share = torch.cumsum(energy[order], dim=0) / total

    # The last cumulative share can round to just below 1, so clamp the count.
    count = (
        int(torch.searchsorted(cumulative_share, torch.tensor(energy_fraction, dtype=energy.dtype)))
        + 1
    )
    count = min(count, energy.shape[0])
    return sorted((order[:count] + 1).tolist())


# ---------------------------------------------------------------------------------------------
# Sparsity of a spectrum


def _check_weights(x: Tensor, name: str) -> Tensor:
    if x.shape[-1] < 1:
        raise ValueError(f"{name} has an empty last axis: expected at least one entry.")
    if bool((x < 0).any()) or not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{name} has negative or non-finite entries: expected non-negative weights."
        )
    total = x.sum(dim=-1)
    if bool((total <= 0).any()):
        raise ValueError(f"{name} sums to zero along its last axis, so its sparsity is undefined.")
    return total


def gini(x: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch"]:
    """Compute the Gini coefficient of non-negative weights along the last axis.

    G = sum_i (2i - n - 1) x_(i) / (n sum_i x_i), with x_(1) <= ... <= x_(n) sorted. G is 0
    when all weights are equal and (n - 1)/n, which tends to 1 for large n, when one weight
    contains all the weight.

    Example:
        >>> float(gini(torch.ones(4)))
        0.0
        >>> float(gini(torch.tensor([0.0, 0.0, 0.0, 1.0])))
        0.75
    """
    total = _check_weights(x, "x")
    n = x.shape[-1]

    ascending = torch.sort(x, dim=-1).values
    rank = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    return (ascending * (2 * rank - n - 1)).sum(dim=-1) / (n * total)


def inverse_participation_ratio(x: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch"]:
    """Compute the inverse participation ratio of non-negative weights along the last axis.

    IPR = sum_i q_i^2 with q = x / sum(x). It is 1/n when all weights are equal and 1 when one
    entry contains all the weight. 1/IPR is the effective number of participating entries.
    Applied to energies (squared amplitudes), it equals sum a^4 / (sum a^2)^2 of the amplitudes.

    Example:
        >>> float(inverse_participation_ratio(torch.ones(4)))
        0.25
        >>> float(inverse_participation_ratio(torch.tensor([0.0, 2.0, 0.0, 0.0])))
        1.0
    """
    total = _check_weights(x, "x")
    share = x / total.unsqueeze(-1)
    return share.pow(2).sum(dim=-1)


@dataclass(frozen=True)
class SpectrumSparsity:
    """Sparsity of the Fourier spectrum of a weight matrix along its residue axis.

    Attributes:
        spectrum: amplitudes of frequencies 0..p//2 (see `residue_spectrum`).
        gini: Gini coefficient of the energies spectrum^2 over the frequencies measured.
        inverse_participation_ratio: IPR of the same energies.
        include_constant: whether frequency 0 was among the frequencies measured.
    """

    spectrum: Float[Tensor, " freq"]
    gini: float
    inverse_participation_ratio: float
    include_constant: bool

    def __post_init__(self) -> None:
        if not 0.0 <= self.gini <= 1.0:
            raise ValueError(f"gini={self.gini!r} is invalid: expected a value in [0, 1].")
        if not 0.0 < self.inverse_participation_ratio <= 1.0 + 1e-12:
            raise ValueError(
                f"inverse_participation_ratio={self.inverse_participation_ratio!r} is invalid: "
                "expected a value in (0, 1]."
            )


def spectrum_sparsity(
    W: Float[Tensor, "rows cols"], p: int, axis: int = 0, include_constant: bool = False
) -> SpectrumSparsity:
    """Measure how concentrated the Fourier spectrum of W along its residue axis is.

    The Gini coefficient and IPR are taken over the energies spectrum[k]^2, so they describe
    the share of the squared Frobenius norm in each frequency.

    Args:
        W: an embedding W_E [vocab, d_model] (``axis=0``) or an unembedding W_U [d_model, p]
            (``axis=1``).
        p: the modulus.
        axis: the residue axis of W, as in `residue_spectrum`.
        include_constant: whether to count frequency 0. It is left out by default because the
            mean residue vector carries no information about which frequencies the model uses.

    Returns:
        A `SpectrumSparsity` with the spectrum and both measures.

    Example:
        >>> W_U = torch.randn(8, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> 0.0 <= spectrum_sparsity(W_U, 7, axis=1).gini <= 1.0
        True
    """
    spectrum = residue_spectrum(W, p, axis=axis)
    measured = spectrum if include_constant else spectrum[1:]

    energy = measured.pow(2)
    return SpectrumSparsity(
        spectrum=spectrum,
        gini=float(gini(energy)),
        inverse_participation_ratio=float(inverse_participation_ratio(energy)),
        include_constant=include_constant,
    )


# ---------------------------------------------------------------------------------------------
# Progress measures on the p x p input grid (Nanda et al. 2023)


def _check_square_grid(grid: Tensor, name: str) -> int:
    if grid.ndim < 2 or grid.shape[0] != grid.shape[1]:
        raise ValueError(
            f"{name} has shape {tuple(grid.shape)}: expected a grid [p, p, ...] over all input "
            "pairs (a, b)."
        )
    p = grid.shape[0]
    _check_modulus(p)
    return p


def fourier_transform_2d(
    grid: Float[Tensor, "a b *channels"],
) -> Float[Tensor, "freq_a freq_b *channels"]:
    """Compute the 2-D Fourier coefficients of a function on the p x p grid of inputs.

    coefficients[i, j] = sum_{a, b} B[i, a] B[j, b] grid[a, b] with B = `fourier_basis(p)`, so
    entry (i, j) is the coefficient of the product basis function B[i](a) B[j](b). The
    transform is orthonormal, so it preserves the sum of squares.

    Args:
        grid: values over all input pairs, shape [p, p, *channels].

    Returns:
        Coefficients of the same shape; axes 0 and 1 index basis rows as in `basis_labels`.
    """
    p = _check_square_grid(grid, "grid")
    basis = fourier_basis(p, dtype=grid.dtype).to(grid.device)

    # One axis at a time: a single three-operand einsum lets torch (without opt_einsum) form
    # the p^4 outer product of the two bases first, 0.7 GB and 30 times slower at p = 97.
    along_a = einops.einsum(basis, grid, "freq_a a, a b ... -> freq_a b ...")
    return einops.einsum(basis, along_a, "freq_b b, freq_a b ... -> freq_a freq_b ...")


def _frequency_pair_energy(
    energy: Float[Tensor, "freq_a freq_b d_mlp"],
) -> Float[Tensor, "k_a k_b d_mlp"]:
    # Entry [k_a, k_b] sums the energy of the 2-D basis functions whose rows have frequencies
    # k_a and k_b (k = 0 is the constant row), so each frequency's share is three entries.
    p = energy.shape[0]
    row_frequency = basis_frequencies(p).to(energy.device)
    n_frequencies = p // 2 + 1
    by_row = energy.new_zeros(n_frequencies, *energy.shape[1:]).index_add_(0, row_frequency, energy)
    shape = (n_frequencies, n_frequencies, *energy.shape[2:])
    return energy.new_zeros(shape).index_add_(1, row_frequency, by_row)


def neuron_frequency_fractions(
    activations: Float[Tensor, "a b d_mlp"],
) -> Float[Tensor, "d_mlp freq"]:
    """Compute the fraction of each neuron's variance that each frequency explains.

    Following Nanda et al. 2023 (arXiv 2301.05217), a neuron's activation over the grid of
    inputs is expanded in the 2-D Fourier basis (`fourier_transform_2d`). The variance is the
    energy of all coefficients except the constant one, and frequency k explains the energy of
    the terms cos(w_k a), sin(w_k a), cos(w_k b), sin(w_k b) and their four products, with
    w_k = 2πk/p. The fractions of different frequencies sum to at most 1.

    A neuron whose variance is below float rounding (a dead or constant neuron, variance at most
    eps times its total energy) gets fraction 0 for every frequency.

    Args:
        activations: activations of each neuron on every input pair, shape [p, p, d_mlp].

    Returns:
        Fractions in [0, 1], shape [d_mlp, p//2]; column k - 1 is frequency k.
    """
    p = _check_square_grid(activations, "activations")
    energy = fourier_transform_2d(activations).pow(2)

    # Frequency k explains the basis functions with row frequencies (k, k), (0, k) and (k, 0):
    # cos/sin(w_k a) times cos/sin(w_k b), and each of them times the constant. Grouped sums
    # take p^2 additions per neuron where a mask per frequency took p^3 / 2 multiply-adds.
    pair_energy = _frequency_pair_energy(energy)
    frequency = torch.arange(1, p // 2 + 1, device=activations.device)
    explained = (
        pair_energy[frequency, frequency] + pair_energy[0, frequency] + pair_energy[frequency, 0]
    ).T

    total_energy = energy.sum(dim=(0, 1))
    variance = total_energy - energy[0, 0]
    has_variance = variance > torch.finfo(activations.dtype).eps * total_energy
    safe_variance = torch.where(has_variance, variance, torch.ones_like(variance))
    return torch.where(
        has_variance[:, None], explained / safe_variance[:, None], torch.zeros_like(explained)
    )


def cluster_neurons(
    fractions: Float[Tensor, "d_mlp freq"], threshold: float = 0.85
) -> Int[Tensor, " d_mlp"]:
    """Assign each neuron to the frequency that explains most of its variance.

    A neuron joins the cluster of frequency k when k explains at least ``threshold`` of its
    variance; otherwise its label is `UNCLUSTERED` (0). The default 0.85 is our choice.

    Args:
        fractions: output of `neuron_frequency_fractions`, column k - 1 for frequency k.
        threshold: minimum fraction of variance, in (0, 1].

    Returns:
        The frequency of each neuron's cluster, or 0 for a neuron in no cluster.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(
            f"threshold={threshold!r} is invalid: expected a fraction of variance in (0, 1]."
        )

    best_fraction, best_column = fractions.max(dim=1)
    return torch.where(
        best_fraction >= threshold, best_column + 1, torch.full_like(best_column, UNCLUSTERED)
    )


def neuron_key_frequencies(
    activations: Float[Tensor, "a b d_mlp"], threshold: float = 0.85, min_share: float = 0.05
) -> list[int]:
    """Find the key frequencies of an MLP layer from the clusters its neurons form.

    Neurons are clustered by `cluster_neurons` with ``threshold``. A frequency is key when its
    cluster contains at least ``min_share`` of all clustered neurons, which drops frequencies that
    only a few stray neurons pick.

    Args:
        activations: activations of each neuron on every input pair, shape [p, p, d_mlp].
        threshold: minimum fraction of a neuron's variance for it to join a cluster.
        min_share: minimum share of clustered neurons for a key frequency, in (0, 1].

    Returns:
        The key frequencies in increasing order; empty when no neuron joins a cluster.
    """
    if not 0.0 < min_share <= 1.0:
        raise ValueError(
            f"min_share={min_share!r} is invalid: expected a share of neurons in (0, 1]."
        )

    p = _check_square_grid(activations, "activations")
    clusters = cluster_neurons(neuron_frequency_fractions(activations), threshold=threshold)

    counts = torch.bincount(clusters, minlength=p // 2 + 1)[1:]
    n_clustered = int(counts.sum())
    if n_clustered == 0:
        logger.info(
            "No neuron has %.2f of its variance in one frequency, so there are no key frequencies.",
            threshold,
        )
        return []
    return (torch.nonzero(counts >= min_share * n_clustered).flatten() + 1).tolist()


# ---------------------------------------------------------------------------------------------
# Restricted and excluded losses of modular addition


def _check_logit_grid(
    logits: Tensor, key_frequencies: Sequence[int], projection: str, operation: str
) -> int:
    if operation not in _SUPPORTED_OPERATIONS:
        raise NotImplementedError(
            f"operation={operation!r} is not supported: the restricted and excluded losses are "
            "defined for addition only, because the logit directions cos(w_k(a + b - c)) and "
            "sin(w_k(a + b - c)) encode c = a + b. Other operations need the directions of their "
            "own algorithm (for multiplication, Fourier modes of the discrete logarithm), which "
            "this module does not implement. Pass operation='add'."
        )
    if projection not in _PROJECTIONS:
        raise ValueError(f"projection={projection!r} is invalid: expected one of {_PROJECTIONS}.")

    p = _check_square_grid(logits, "logits")
    if logits.ndim != 3 or logits.shape[2] != p:
        raise ValueError(
            f"logits has shape {tuple(logits.shape)}: expected [p, p, p], the logits of every "
            "output residue c for every input pair (a, b)."
        )

    for frequency in key_frequencies:
        if (
            isinstance(frequency, bool)
            or not isinstance(frequency, int)
            or not 1 <= frequency <= p // 2
        ):
            raise ValueError(
                f"key_frequencies contains {frequency!r} ({type(frequency).__name__}): expected "
                f"Python ints in 1..{p // 2} for p={p}; convert numpy or tensor values with int()."
            )
    if len(set(key_frequencies)) != len(key_frequencies):
        raise ValueError(
            f"key_frequencies={list(key_frequencies)} has repeated entries: pass each frequency once."
        )
    return p


@functools.lru_cache(maxsize=8)
def _pair_sums(p: int, device: torch.device) -> Int[Tensor, " pair"]:
    """Return s = (a + b) mod p for every input pair, flat in grid order a * p + b.

    Cached, because the losses of a trajectory evaluate many grids of one p; callers must not
    modify the result.
    """
    # The result outlives this call, and a tensor made in inference mode could not be saved for
    # the backward pass of a later call.
    with torch.inference_mode(False):
        residues = torch.arange(p, device=device)
        return ((residues[:, None] + residues[None, :]) % p).flatten()


@functools.lru_cache(maxsize=8)
def _residue_differences(p: int, device: torch.device) -> Int[Tensor, "s c"]:
    """Return (s - c) mod p for every pair of residues, cached like `_pair_sums`."""
    with torch.inference_mode(False):
        residues = torch.arange(p, device=device)
        return (residues[:, None] - residues[None, :]) % p


def _key_projection(
    logits: Float[Tensor, "a b p"], key_frequencies: Sequence[int], projection: str
) -> Float[Tensor, "s p"]:
    """Project the centred logits L - m on the key-frequency directions.

    Every direction is a function of (s, c) with s = (a + b) mod p, so the projection is too:
    the result is a table T with P(L - m)[a, b, c] = T[(a + b) mod p, c]. Each s occurs on p
    pairs of the grid, so <L - m, f> = sum_{s,c} G[s, c] f(s, c) and ||f||^2 =
    p sum_{s,c} f(s, c)^2, where G is L - m summed over each anti-diagonal a + b = s. The
    centring needs no pass over the grid: the p pairs of one anti-diagonal carry the means
    m[a, b], whose sum is the mean over c of G's row, so G = S - mean_c(S) for the plain sums S.
    """
    p = logits.shape[-1]
    summed = torch.zeros(p, p, dtype=logits.dtype, device=logits.device)
    if len(key_frequencies) == 0:
        # NOTE: the restricted loss is then log p, also for logits holding -inf, where the
        # definition's mean over c is -inf and its loss nan.
        return summed
    summed.index_add_(0, _pair_sums(p, logits.device), logits.reshape(p * p, p))
    centred = summed - summed.mean(dim=-1, keepdim=True)

    residues = torch.arange(p, device=logits.device)
    frequency = torch.tensor(list(key_frequencies), device=logits.device)
    angle = ((frequency[:, None] * residues) % p).to(torch.float64) * (2 * torch.pi / p)
    waves = torch.cat([torch.cos(angle), torch.sin(angle)]).to(logits.dtype)
    keep = waves.pow(2).sum(dim=1) > 0.5  # the sine of the Nyquist frequency is identically zero
    waves = waves[keep]

    if projection == "joint":
        # The directions cos(w(s - c)) and sin(w(s - c)) depend on d = (s - c) mod p alone, and
        # each d occurs p times in the (s, c) table. So the inner products need only the sums of
        # G along d, and the projection is a profile over d read back into the table.
        offsets = _residue_differences(p, logits.device)
        along_offset = torch.zeros(p, dtype=logits.dtype, device=logits.device)
        along_offset.index_add_(0, offsets.flatten(), centred.flatten())
        norms = p * p * waves.pow(2).sum(dim=1)
        coefficients = (waves @ along_offset) / norms
        return (coefficients @ waves)[offsets]
    norms = p * waves.pow(2).sum(dim=1)
    coefficients = einops.einsum(waves, centred, "direction s, s p -> direction p") / norms[:, None]
    return einops.einsum(waves, coefficients, "direction s, direction p -> s p")


def _table_on_grid(table: Float[Tensor, "s p"]) -> Float[Tensor, "a b p"]:
    """Spread a table over (s, c) on the grid: entry [a, b, c] is table[(a + b) mod p, c]."""
    p = table.shape[0]
    return table.index_select(0, _pair_sums(p, table.device)).view(p, p, p)


def restricted_logits(
    logits: Float[Tensor, "a b p"],
    key_frequencies: Sequence[int],
    projection: Projection = "joint",
    operation: str = "add",
) -> Float[Tensor, "a b p"]:
    """Keep only the key-frequency components of the logits of modular addition.

    Let L[a, b, c] be the logit of output c for inputs (a, b), m[a, b] its mean over c and
    w_k = 2πk/p. The restricted logits are m + P(L - m), where P is the orthogonal projection
    (inner product summed over the whole p x p x p grid) on the span of

    * ``projection="joint"``: cos(w_k(a + b - c)) and sin(w_k(a + b - c)) for each key k, two
      directions per frequency. These are the terms of the addition algorithm, in which the
      logit of c peaks at c = a + b mod p.
    * ``projection="per_output"``: cos(w_k(a + b)) and sin(w_k(a + b)) as functions of (a, b),
      with an independent coefficient for each output c (2p directions per frequency). This is
      the construction of Nanda et al. 2023 (arXiv 2301.05217) in the 2-D Fourier basis over
      (a, b), which treats every output's logits as a separate function of (a, b). It contains
      the joint span, because cos(w(a + b - c)) = cos(w(a + b)) cos(wc) + sin(w(a + b)) sin(wc).

    Both spans are orthogonal to every function constant in c, and the term m, which is
    constant in c, does not change the softmax over c. These directions encode c = a + b, so
    they apply to addition only.

    Args:
        logits: logits over the full grid, shape [p, p, p] (a, b, output c).
        key_frequencies: distinct frequencies in 1..p//2.
        projection: "joint" or "per_output", as above.
        operation: must be "add"; other operations raise NotImplementedError.

    Returns:
        The restricted logits, shape [p, p, p].
    """
    _check_logit_grid(logits, key_frequencies, projection, operation)
    table = _key_projection(logits, key_frequencies, projection)
    return logits.mean(dim=-1, keepdim=True) + _table_on_grid(table)


def excluded_logits(
    logits: Float[Tensor, "a b p"],
    key_frequencies: Sequence[int],
    projection: Projection = "joint",
    operation: str = "add",
) -> Float[Tensor, "a b p"]:
    """Remove the key-frequency components from the logits of modular addition.

    The excluded logits are L - P(L - m), with L, m and P as in `restricted_logits`, so that
    restricted + excluded = L + m, and m does not change the softmax over c.

    Args:
        logits: logits over the full grid, shape [p, p, p] (a, b, output c).
        key_frequencies: distinct frequencies in 1..p//2.
        projection: "joint" or "per_output", as in `restricted_logits`.
        operation: must be "add"; other operations raise NotImplementedError.

    Returns:
        The excluded logits, shape [p, p, p].
    """
    _check_logit_grid(logits, key_frequencies, projection, operation)
    table = _key_projection(logits, key_frequencies, projection)
    return logits - _table_on_grid(table)


def grid_cross_entropy(
    logits: Float[Tensor, "a b p"],
    pair_mask: Bool[Tensor, "a b"] | None = None,
    operation: str = "add",
) -> Float[Tensor, ""]:
    """Compute the mean cross-entropy of grid logits against the labels (a + b) mod p.

    Args:
        logits: logits over the full grid, shape [p, p, p] (a, b, output c).
        pair_mask: the input pairs to average over, such as the training pairs; None means all.
        operation: must be "add", which sets the labels.

    Returns:
        The mean cross-entropy in nats, a 0-d tensor.

    Example:
        >>> round(float(grid_cross_entropy(torch.zeros(5, 5, 5, dtype=torch.float64))), 6)  # log 5
        1.609438
    """
    p = _check_logit_grid(logits, [], "joint", operation)
    pairs = _selected_pairs(pair_mask, p, logits.device)
    rows, labels = logits.reshape(p * p, p), _pair_sums(p, logits.device)
    if pairs is not None:
        rows, labels = rows.index_select(0, pairs), labels[pairs]
    return F.cross_entropy(rows, labels)


class KeyFrequencyLosses(NamedTuple):
    """The restricted and excluded losses of one grid of logits (0-d tensors, in nats)."""

    restricted: Float[Tensor, ""]
    excluded: Float[Tensor, ""]


def _selected_pairs(
    pair_mask: Bool[Tensor, "a b"] | None, p: int, device: torch.device
) -> Int[Tensor, " n"] | None:
    """Return the flat grid indices a * p + b of the masked pairs, or None for every pair."""
    if pair_mask is None:
        return None
    if pair_mask.shape != (p, p):
        raise ValueError(
            f"pair_mask has shape {tuple(pair_mask.shape)}: expected [{p}, {p}], one entry per "
            "input pair (a, b)."
        )
    pairs = torch.nonzero(pair_mask.to(device).flatten()).flatten()
    if pairs.numel() == 0:
        raise ValueError("pair_mask selects no input pair: expected at least one True entry.")
    return pairs


def _loss_inputs(
    logits: Float[Tensor, "a b p"],
    key_frequencies: Sequence[int],
    pair_mask: Bool[Tensor, "a b"] | None,
    projection: str,
    operation: str,
) -> tuple[Float[Tensor, "s p"], Int[Tensor, " n"] | None]:
    """Check the arguments of a loss; return the key-frequency table and the selected pairs."""
    p = _check_logit_grid(logits, key_frequencies, projection, operation)
    pairs = _selected_pairs(pair_mask, p, logits.device)
    return _key_projection(logits, key_frequencies, projection), pairs


def _restricted_loss_from_table(
    table: Float[Tensor, "s p"], pairs: Int[Tensor, " n"] | None
) -> Float[Tensor, ""]:
    # The restricted logits m[a, b] + T[s, c] differ from T[s, c] by a constant in c, which the
    # softmax ignores, so each pair's loss is the loss of row s = (a + b) mod p of T, whose label
    # is s itself. The mean over the pairs weights each row by how many pairs it has.
    p = table.shape[0]
    row_losses = F.cross_entropy(table, torch.arange(p, device=table.device), reduction="none")
    if pairs is None:
        return row_losses.mean()
    counts = torch.bincount(_pair_sums(p, table.device)[pairs], minlength=p).to(table.dtype)
    return (counts @ row_losses) / pairs.numel()


def _summed_cross_entropy(
    rows: Float[Tensor, "n p"], labels: Int[Tensor, " n"]
) -> Float[Tensor, ""]:
    """Return the summed cross-entropy of ``rows`` against ``labels``.

    Equal to ``F.cross_entropy(rows, labels, reduction="sum")`` to float rounding. The sum of
    exponentials is taken in base 2, exp(x) = 2^(x log2 e): on an AVX-512 CPU with torch 2.13,
    float64 exp2 measured 3.4 times faster than exp, and the exponentials are most of the cost.
    ``rows`` is overwritten only when no gradient flows through it.
    """
    picked = rows.gather(1, labels[:, None]).squeeze(1)
    # Any shift gives the same log-sum-exp, so the row maxima can be held constant.
    shift = rows.detach().amax(dim=1, keepdim=True)
    if rows.requires_grad and torch.is_grad_enabled():
        exponentials = ((rows - shift) * _LOG2_E).exp2()
    else:
        exponentials = rows.sub_(shift).mul_(_LOG2_E).exp2_()
    return (exponentials.sum(dim=1).log() + shift.squeeze(1) - picked).sum()


def _excluded_loss_from_table(
    logits: Float[Tensor, "a b p"], table: Float[Tensor, "s p"], pairs: Int[Tensor, " n"] | None
) -> Float[Tensor, ""]:
    p = table.shape[0]
    rows, labels = logits.reshape(p * p, p), _pair_sums(p, logits.device)
    if pairs is None:
        pairs = torch.arange(p * p, device=logits.device)
    # Blocks of rows small enough for the cache keep the logits there between calls: the
    # projection reads the whole grid, which at p = 113 in float64 is 11.5 MB.
    total = torch.zeros((), dtype=logits.dtype, device=logits.device)
    for block in torch.split(pairs, _EXCLUDED_ROWS_PER_BLOCK):
        block_labels = labels[block]
        excluded = rows.index_select(0, block).sub_(table.index_select(0, block_labels))
        total += _summed_cross_entropy(excluded, block_labels)
    return total / pairs.numel()


def restricted_loss(
    logits: Float[Tensor, "a b p"],
    key_frequencies: Sequence[int],
    pair_mask: Bool[Tensor, "a b"] | None = None,
    projection: Projection = "joint",
    operation: str = "add",
) -> Float[Tensor, ""]:
    """Compute the cross-entropy of the logits restricted to the key frequencies.

    A progress measure of Nanda et al. 2023 (arXiv 2301.05217). It is close to the full loss
    when the key-frequency components alone produce the model's predictions. See
    `restricted_logits` for what is kept and `grid_cross_entropy` for the loss. The restricted
    logits depend on (a, b) only through (a + b) mod p, up to a constant in c, so the loss is
    computed from p rows of logits instead of the p² rows of the grid.

    Example:
        >>> p, k = 7, 2
        >>> x = torch.arange(p, dtype=torch.float64)
        >>> phase = x[:, None, None] + x[None, :, None] - x[None, None, :]
        >>> logits = 20 * torch.cos(2 * torch.pi * k * phase / p)
        >>> bool(torch.isclose(restricted_loss(logits, [k]), grid_cross_entropy(logits)))
        True
    """
    table, pairs = _loss_inputs(logits, key_frequencies, pair_mask, projection, operation)
    return _restricted_loss_from_table(table, pairs)


def excluded_loss(
    logits: Float[Tensor, "a b p"],
    key_frequencies: Sequence[int],
    pair_mask: Bool[Tensor, "a b"] | None = None,
    projection: Projection = "joint",
    operation: str = "add",
) -> Float[Tensor, ""]:
    """Compute the cross-entropy of the logits with the key frequencies removed.

    A progress measure of Nanda et al. 2023 (arXiv 2301.05217). On the training pairs it is
    high when the model depends on the key-frequency components and close to the full loss
    when it fits those pairs by other means. See `excluded_logits` for what is removed and
    `grid_cross_entropy` for the loss. Only the selected pairs' logits are formed.
    """
    table, pairs = _loss_inputs(logits, key_frequencies, pair_mask, projection, operation)
    return _excluded_loss_from_table(logits, table, pairs)


def key_frequency_losses(
    logits: Float[Tensor, "a b p"],
    key_frequencies: Sequence[int],
    pair_mask: Bool[Tensor, "a b"] | None = None,
    projection: Projection = "joint",
    operation: str = "add",
) -> KeyFrequencyLosses:
    """Compute the restricted and excluded losses together, from one projection of the logits.

    Equal to ``restricted_loss(...)`` and ``excluded_loss(...)`` with the same arguments, but
    the projection on the key frequencies, a pass over the whole grid, runs once for both.

    Example:
        >>> logits = torch.randn(7, 7, 7, dtype=torch.float64)
        >>> losses = key_frequency_losses(logits, [1, 3])
        >>> bool(torch.isclose(losses.excluded, excluded_loss(logits, [1, 3])))
        True
    """
    table, pairs = _loss_inputs(logits, key_frequencies, pair_mask, projection, operation)
    return KeyFrequencyLosses(
        restricted=_restricted_loss_from_table(table, pairs),
        excluded=_excluded_loss_from_table(logits, table, pairs),
    )
