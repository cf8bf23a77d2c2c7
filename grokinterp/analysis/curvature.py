"""Hessian spectra of a grokinterp model's training loss, block by block.

"Mechanistic Insights into Grokking from the Embedding Layer" (arXiv 2505.15624) compares the
largest Hessian eigenvalue of the embedding block E with that of the first weight block W and
argues that their coupling makes saddle points likely. This module joins a model to the
model-free tools of :mod:`grokinterp.analysis.hessian`:

* `answer_loss_fn`: the mean cross-entropy of the answer logits as a function of the
  parameters, computed on a shorter path where one exists that is exact in real arithmetic.
* `curvature_blocks`: the blocks E, W and "all" of a model, by parameter name.
* `block_curvature` and `model_curvature`: extreme eigenvalues with residuals, the gradient
  norm, a Hutchinson trace and a saddle verdict for each block.

The Hessian is that of the mean cross-entropy on the given data alone. Weight decay is left out:
coupled L2 decay λ (``optim.name="adam"``) would add λ to every eigenvalue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor, nn

from grokinterp.analysis.hessian import (
    HessianProblem,
    HvpMethod,
    LossFn,
    SaddleVerdict,
    extreme_eigenvalues,
    hutchinson_trace,
    model_loss_fn,
    saddle_verdict,
)
from grokinterp.models import HookedMLP, embedding_names, first_layer_name

logger = logging.getLogger(__name__)

DEFAULT_TAU_FACTOR = 1e-3
"""τ = DEFAULT_TAU_FACTOR · max |λ|: eigenvalues within τ of 0 count as flat in the verdict."""

RESIDUAL_SLACK = 10.0
"""An eigenpair counts as converged when its residual is at most this many times the bound
that ARPACK's tolerance promises (tol · max |λ| for its end of the spectrum)."""


# ---------------------------------------------------------------------------------------------
# Loss functions of the parameters


def answer_loss_fn(model: nn.Module) -> LossFn:
    """Build ``loss_fn(params, tokens, labels)``: the mean cross-entropy of the answer logits.

    The result equals `grokinterp.analysis.hessian.model_loss_fn` up to float rounding, but
    takes a shorter path where one is exact in real arithmetic:

    * HookedMLP with an embedding: the first layer's pre-activation is
      ``b_in + sum over pos of (W_E @ W_in_block(pos))[token at pos]``, so one
      [d_vocab, d_mlp] table per position replaces the [batch, n_ctx·d_embed] @ W_in product.
      For the p = 97 MLP on its 2,823 training pairs the forward pass took 16 ms instead of
      61 ms (one thread of a 2-core CPU).
    * HookedMLP with one-hot input: the product with a one-hot vector is a row lookup of W_in.
    * HookedTransformer with the settings of `make_transformer`: `fast_answer_logits`, which
      computes the MLP and unembedding at the last position only.
    * Any other model: `model_loss_fn`.

    Args:
        model: a grokinterp model; it is read, not changed.

    Returns:
        A loss function for `HessianProblem` and the other tools of the hessian module.
    """
    if isinstance(model, HookedMLP):
        if model.cfg.input_mode == "embed":
            return _embedding_mlp_loss_fn(model.cfg.n_ctx, model.cfg.d_embed)
        if model.cfg.input_mode == "onehot":
            return _onehot_mlp_loss_fn(model.cfg.n_ctx, model.cfg.d_vocab)
        return model_loss_fn(model)
    return _transformer_loss_fn(model)


def _mlp_head(params: dict[str, Tensor], pre: Tensor, labels: Tensor) -> Tensor:
    logits = F.relu(pre) @ params["unembed.W_U"] + params["unembed.b_U"]
    return F.cross_entropy(logits, labels)


def _embedding_mlp_loss_fn(n_ctx: int, d_embed: int) -> LossFn:
    def loss_fn(params: dict[str, Tensor], tokens: Tensor, labels: Tensor) -> Tensor:
        blocks = params["mlp.W_in"].reshape(n_ctx, d_embed, -1)
        tables = torch.einsum("vd,pdm->pvm", params["embed.W_E"], blocks)
        pre = params["mlp.b_in"]
        for pos in range(n_ctx):
            pre = pre + F.embedding(tokens[:, pos], tables[pos])
        return _mlp_head(params, pre, labels)

    return loss_fn


def _onehot_mlp_loss_fn(n_ctx: int, d_vocab: int) -> LossFn:
    def loss_fn(params: dict[str, Tensor], tokens: Tensor, labels: Tensor) -> Tensor:
        rows = tokens + d_vocab * torch.arange(n_ctx, device=tokens.device)
        pre = params["mlp.b_in"] + F.embedding(rows, params["mlp.W_in"]).sum(dim=1)
        return _mlp_head(params, pre, labels)

    return loss_fn


class _FastAnswer(nn.Module):
    """Wraps a HookedTransformer so that `functional_call` runs `fast_answer_logits`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        from grokinterp.models.transformer import fast_answer_logits

        return fast_answer_logits(self.model, tokens)


def _transformer_loss_fn(model: nn.Module) -> LossFn:
    from grokinterp.models.transformer import fast_answer_logits

    try:
        probe = torch.zeros(1, model.cfg.n_ctx, dtype=torch.long, device=model.embed.W_E.device)
        fast_answer_logits(model, probe)
    except (TypeError, NotImplementedError, ValueError, AttributeError) as error:
        logger.info("The fast answer path does not apply (%s), so the full forward pass is used.", error)
        return model_loss_fn(model)

    wrapper = _FastAnswer(model)

    def loss_fn(params: dict[str, Tensor], tokens: Tensor, labels: Tensor) -> Tensor:
        renamed = {f"model.{name}": value for name, value in params.items()}
        logits = torch.func.functional_call(wrapper, renamed, (tokens,))
        return F.cross_entropy(logits, labels)

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Blocks and their curvature


def curvature_blocks(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Name the parameter blocks whose Hessians the report studies.

    Returns:
        ``{"E": ("embed.W_E",), "W": (first_layer_name(model),), "all": every parameter}``;
        a model without a learned embedding has no "E" entry.
    """
    blocks: dict[str, tuple[str, ...]] = {}
    embedding = embedding_names(model)
    if embedding:
        blocks["E"] = tuple(embedding)
    blocks["W"] = (first_layer_name(model),)
    blocks["all"] = tuple(name for name, _ in model.named_parameters())
    return blocks


@dataclass(frozen=True)
class BlockCurvature:
    """Extreme Hessian eigenvalues of one parameter block, with the checks that qualify them.

    Attributes:
        block: the block's label, such as "E", "W" or "all".
        names: the parameter names in the block.
        size: the number of scalar parameters, the side of the block's Hessian.
        eigenvalues: computed eigenvalues in increasing order, in loss units per squared
            parameter unit. With both ends computed, the first k are the smallest and the last k
            the largest.
        residuals: ||H v - λ v|| of each unit eigenvector, in the order of ``eigenvalues``.
        residual_bounds: RESIDUAL_SLACK · tol · max |λ| for each eigenpair, with the tolerance
            of its end of the spectrum. A residual above its bound means the Hessian-vector
            products are too coarse for the eigenvalue, typically float32 products near a
            minimum with a training loss close to 0; float64 fixes that.
        grad_norm: L2 norm of the loss gradient over the block.
        trace: Hutchinson estimate of tr(H), or None when not computed.
        trace_standard_error: its standard error, or None.
        verdict: the saddle verdict (see `grokinterp.analysis.hessian.saddle_verdict`), or None
            when only the largest eigenvalues were computed.
        n_matvecs: Hessian-vector products used, including residual checks and the trace.
        seconds: wall time of the computation.
    """

    block: str
    names: tuple[str, ...]
    size: int
    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]
    residual_bounds: tuple[float, ...]
    grad_norm: float
    trace: float | None
    trace_standard_error: float | None
    verdict: SaddleVerdict | None
    n_matvecs: int
    seconds: float

    def __post_init__(self) -> None:
        counts = {len(self.eigenvalues), len(self.residuals), len(self.residual_bounds)}
        if len(counts) != 1 or not self.eigenvalues:
            raise ValueError(
                f"BlockCurvature got {len(self.eigenvalues)} eigenvalues, {len(self.residuals)} "
                f"residuals and {len(self.residual_bounds)} bounds: expected the same non-zero "
                "number of each."
            )
        if list(self.eigenvalues) != sorted(self.eigenvalues):
            raise ValueError(f"eigenvalues={self.eigenvalues} are not in increasing order.")

    @property
    def lambda_max(self) -> float:
        """The largest computed eigenvalue."""
        return self.eigenvalues[-1]

    @property
    def converged(self) -> bool:
        """Whether every residual is within its bound (see ``residual_bounds``)."""
        return all(r <= b for r, b in zip(self.residuals, self.residual_bounds, strict=True))

    @property
    def lambda_min(self) -> float | None:
        """The smallest eigenvalue, or None when only the largest end was computed."""
        return self.eigenvalues[0] if self.verdict is not None else None


def block_curvature(
    problem: HessianProblem,
    label: str,
    k: int = 3,
    tol: float = 1e-4,
    both_ends: bool = True,
    k_smallest: int = 1,
    tol_smallest: float = 1e-3,
    trace_samples: int = 0,
    tau_factor: float = DEFAULT_TAU_FACTOR,
    seed: int = 0,
    solver: str = "arpack",
) -> BlockCurvature:
    """Compute the extreme eigenvalues of one block's Hessian by Lanczos, with checks.

    Both ends come from `extreme_eigenvalues`. With the default ``solver="arpack"`` the k
    largest come from ARPACK on H and the ``k_smallest`` smallest from ARPACK on the shifted
    operator H - λ_max I, whose eigenvalues are λ_i - λ_max.
    ARPACK's tolerance is relative to each eigenvalue, so on H itself an eigenvalue near 0
    would need an absolute accuracy of tol·|λ_min|, often hundreds of Lanczos restarts. After
    the shift every wanted eigenvalue has magnitude at least λ_max, so ARPACK stops when the
    residual is below about ``tol_smallest``·λ_max. The residuals are those of H, because the
    shift changes no eigenvector.

    With ``solver="lanczos"`` one Lanczos run serves both ends: it stops when the k largest Ritz
    pairs have residual estimates below ``tol``·max |θ| and the ``k_smallest`` smallest below
    ``tol_smallest``·max |θ|, where max |θ| estimates λ_max. On the grokked p = 97 MLP it took
    59 Hessian-vector products for λ_max and λ_min of all parameters at tol 1e-3, against 116
    for the two ARPACK runs. A single start vector finds each extreme eigenvalue but only one
    vector of its eigenspace, so a repeated eigenvalue appears once: use it for k = 1 per end
    (as the trajectory does), ARPACK for several eigenvalues of one end.

    The default ``tol_smallest = 1e-3`` equals the default ``tau_factor``, so the smallest
    eigenvalue is resolved to about τ, the resolution of the verdict. A computed smallest
    eigenvalue is a Rayleigh quotient, never below the true λ_min, so a value below -τ proves a
    direction of negative curvature.

    The verdict uses τ = ``tau_factor`` · max |λ| over the computed eigenvalues: an eigenvalue
    below -τ is a direction of negative curvature. Without a gradient threshold the verdict
    describes curvature only, and ``grad_norm`` shows how close the point is to stationary.

    Args:
        problem: the block's Hessian, e.g. from `model_curvature`.
        label: the block's label for the result.
        k: largest eigenvalues to compute, 1 <= k < block size.
        tol: ARPACK's relative tolerance for the largest end.
        both_ends: False computes the largest end only (no λ_min and no verdict).
        k_smallest: smallest eigenvalues to compute, 1 <= k_smallest < block size.
        tol_smallest: ARPACK's tolerance for the smallest end, relative to λ_max (see above).
        trace_samples: Rademacher vectors for the Hutchinson trace; 0 skips the trace.
        tau_factor: τ as a fraction of max |λ|.
        seed: seeds the Lanczos start vectors and the trace's sign vectors.
        solver: "arpack" (one run per end) or "lanczos" (one run for both ends, for k = 1).

    Returns:
        A `BlockCurvature`.
    """
    if trace_samples == 1 or trace_samples < 0:
        raise ValueError(
            f"trace_samples={trace_samples} is invalid: pass 0 to skip the trace or at least 2."
        )
    if not tau_factor >= 0:
        raise ValueError(f"tau_factor={tau_factor!r} is invalid: expected a fraction >= 0.")

    if solver not in ("lanczos", "arpack"):
        raise ValueError(f"solver={solver!r} is invalid: choose 'lanczos' or 'arpack'.")

    started = time.perf_counter()
    n = problem.size
    if solver == "lanczos":
        result = extreme_eigenvalues(
            problem,
            n,
            k=k,
            which="both" if both_ends else "largest",
            tol=tol,
            k_smallest=k_smallest,
            tol_smallest=tol_smallest,
            generator=torch.Generator().manual_seed(seed),
            solver="lanczos",
        )
        eigenvalues, residuals = result.eigenvalues, result.residuals
        tolerances = torch.full_like(eigenvalues, tol)
        if both_ends:
            tolerances[:k_smallest] = tol_smallest
        n_matvecs = result.n_matvecs
    else:
        top = extreme_eigenvalues(
            problem, n, k=k, which="largest", tol=tol, generator=torch.Generator().manual_seed(seed)
        )
        eigenvalues, residuals = top.eigenvalues, top.residuals
        tolerances = torch.full_like(eigenvalues, tol)
        n_matvecs = top.n_matvecs

    verdict = None
    if both_ends and solver == "arpack":
        shift = max(top.largest, 0.0)

        def shifted(vector: Tensor) -> Tensor:
            product = problem.hvp(vector).to(device="cpu", dtype=torch.float64)
            return product - shift * vector.to(device="cpu", dtype=torch.float64)

        bottom = extreme_eigenvalues(
            shifted,
            n,
            k=k_smallest,
            which="smallest",
            tol=tol_smallest,
            generator=torch.Generator().manual_seed(seed + 1),
        )
        eigenvalues = torch.cat([bottom.eigenvalues + shift, eigenvalues])
        residuals = torch.cat([bottom.residuals, residuals])
        tolerances = torch.cat([torch.full_like(bottom.eigenvalues, tol_smallest), tolerances])
        n_matvecs += bottom.n_matvecs

    # The two ends can overlap for a small block; sorting keeps the pairs together.
    order = torch.argsort(eigenvalues)
    eigenvalues, residuals, tolerances = eigenvalues[order], residuals[order], tolerances[order]
    bounds = RESIDUAL_SLACK * tolerances * eigenvalues.abs().max()

    grad_norm = float(problem.gradient().norm())
    if both_ends:
        tau = tau_factor * float(eigenvalues.abs().max())
        verdict = saddle_verdict(grad_norm, eigenvalues, tau=tau)

    trace = trace_error = None
    if trace_samples:
        estimate = hutchinson_trace(
            problem, n, trace_samples, generator=torch.Generator().manual_seed(seed + 2)
        )
        trace, trace_error = estimate.estimate, estimate.standard_error
        n_matvecs += trace_samples

    return BlockCurvature(
        block=label,
        names=problem.block,
        size=n,
        eigenvalues=tuple(eigenvalues.tolist()),
        residuals=tuple(residuals.tolist()),
        residual_bounds=tuple(bounds.tolist()),
        grad_norm=grad_norm,
        trace=trace,
        trace_standard_error=trace_error,
        verdict=verdict,
        n_matvecs=n_matvecs,
        seconds=time.perf_counter() - started,
    )


def model_curvature(
    model: nn.Module,
    tokens: Int[Tensor, "batch pos"],
    labels: Int[Tensor, " batch"],
    blocks: Mapping[str, Sequence[str]] | None = None,
    k: int = 3,
    tol: float = 1e-4,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
    both_ends: bool = True,
    k_smallest: int = 1,
    tol_smallest: float = 1e-3,
    trace_samples: int = 8,
    tau_factor: float = DEFAULT_TAU_FACTOR,
    seed: int = 0,
    method: HvpMethod = "double_backward",
    solver: str = "arpack",
) -> dict[str, BlockCurvature]:
    """Compute `block_curvature` for each block of a model's mean training loss.

    Args:
        model: a grokinterp model (read, not changed).
        tokens: the data set's inputs, e.g. the whole training set.
        labels: its labels.
        blocks: label -> parameter names; None uses `curvature_blocks(model)`.
        k, tol, both_ends, k_smallest, tol_smallest, trace_samples, tau_factor, seed, solver:
            as in `block_curvature`; k and k_smallest are capped at half the block size.
        dtype: floating dtype of the Hessian-vector products; float64 for tight tolerances.
        chunk_size: samples per chunk of the data set; None processes it at once.
        method: the HVP method of `HessianProblem`. Double backward is the default because it
            was the faster one for both grokinterp models: 0.11 s against 0.15 s (forward over
            reverse) per all-parameter product of the p = 97 MLP on its 2,823 training pairs,
            on one thread of a loaded 2-core CPU, and 0.26 s against 0.49 s for the E block of
            the p = 113 transformer.

    Returns:
        Block label -> `BlockCurvature`, in the order of ``blocks``.
    """
    if blocks is None:
        blocks = curvature_blocks(model)
    loss_fn = answer_loss_fn(model)
    params = dict(model.named_parameters())

    results = {}
    for label, names in blocks.items():
        problem = HessianProblem(
            loss_fn,
            params,
            tokens,
            labels,
            block=list(names),
            chunk_size=chunk_size,
            method=method,
            dtype=dtype,
        )
        size = problem.size
        block_k, block_k_smallest = min(k, size // 2), min(k_smallest, size // 2)
        if block_k < 1:
            raise ValueError(
                f"block {label!r} has {size} parameters, too few for Lanczos: use "
                "grokinterp.analysis.hessian.dense_hessian for it."
            )
        results[label] = block_curvature(
            problem,
            label,
            k=block_k,
            tol=tol,
            both_ends=both_ends,
            k_smallest=block_k_smallest,
            tol_smallest=tol_smallest,
            trace_samples=trace_samples,
            tau_factor=tau_factor,
            seed=seed,
            solver=solver,
        )
        logger.info(
            "Hessian block %s (%d parameters): λ_max %.4g in %.1f s",
            label,
            size,
            results[label].lambda_max,
            results[label].seconds,
        )
    return results

