"""Bilinear coupling of the embedding E and the first layer W that reads it.

"Mechanistic Insights into Grokking from the Embedding Layer" (arXiv 2505.15624) observes that
the first layer of the embedding MLP reads E and W only through their product P = E W. With
G = ∂L/∂P the chain rule gives

    ∇_E L = G Wᵀ        and        ∇_W L = Eᵀ G,

so ‖∇_E L‖_F <= σ_max(W) ‖G‖_F and ‖∇_W L‖_F <= σ_max(E) ‖G‖_F, with equality when the
columns of Gᵀ (for E) or the rows of G (for W) lie in the top singular direction. The ratio of
the gradient norms therefore follows σ_max(W) / σ_max(E) to the extent that both alignment
factors a_E = ‖∇_E L‖ / (σ_max(W) ‖G‖) and a_W = ‖∇_W L‖ / (σ_max(E) ‖G‖), each in [0, 1],
are equal:

    (‖∇_E L‖ / ‖∇_W L‖) / (σ_max(W) / σ_max(E)) = a_E / a_W.

Layout: W is `grokinterp.models.first_layer_matrix`, [d_embed, n_ctx·d_mlp] for the MLP, so P
is [d_vocab, n_ctx·d_mlp] and column block ``pos`` of P contains every token's contribution to the
pre-activation when it sits at position ``pos``. In the transformer W is W_V with its heads side
by side, and E also reaches the loss through the queries, keys and the residual stream; the
identity above covers only the value path, so the report gives the gradient norms without the
alignment factors.

The paper's balanced learning-rate ratio (its proposition on the embedding learning rate) is
η_E / η_W = k · (σ_max(E) / σ_max(W)) · (f_W / f_E), with f_E and f_W the update frequencies;
`adaptive_ratio` evaluates it exactly as `grokinterp.training.lr_ratio.AdaptiveLRRatio` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from grokinterp.analysis.spectra import DEFAULT_RANK_RTOL, MatrixSummary, summarize_matrix
from grokinterp.models import HookedMLP, embedding_names, first_layer_matrix, first_layer_name

FREQUENCY_SOURCES = ("token_stats", "batch_probability", "full_batch")


# ---------------------------------------------------------------------------------------------
# Gradients of E and W


@dataclass(frozen=True)
class CouplingGradients:
    """Loss gradients of E and W from one forward and backward pass over a data set.

    Attributes:
        loss: the mean cross-entropy of the answer logits, in nats.
        grad_E: ∇_E L, shape [d_vocab, d_embed].
        grad_W: ∇_W L in the layout of `first_layer_matrix`.
        upstream: G = ∂L/∂(E W), [d_vocab, n_ctx·d_mlp], for the embedding MLP; None for
            models where E and W do not meet only through their product.
    """

    loss: float
    grad_E: Float[Tensor, "vocab d_embed"]
    grad_W: Float[Tensor, "d_embed cols"]
    upstream: Float[Tensor, "vocab cols"] | None


def coupling_gradients(
    model: nn.Module, tokens: Int[Tensor, "batch pos"], labels: Int[Tensor, " batch"]
) -> CouplingGradients:
    """Compute ∇_E L, ∇_W L and, for the embedding MLP, G = ∂L/∂(E W) in one pass.

    The HookedMLP runs through ``run_with_cache(..., return_type="loss", incl_bwd=True)``: the
    parameter gradients give ∇_E L and ∇_W L, and the cached gradient δ of ``mlp.hook_pre``
    gives G, whose column block ``pos`` is Σ over samples of onehot(token at pos)ᵀ δ. A
    transformer's loss is the cross-entropy of its answer logits (the last position),
    differentiated with `torch.autograd.grad`. The model's ``.grad`` fields are left as they
    were.

    Args:
        model: a model with a learned embedding ``embed.W_E``.
        tokens: inputs, e.g. the whole training set.
        labels: the residues to predict.

    Returns:
        A `CouplingGradients`, detached, in float64.
    """
    if not embedding_names(model):
        raise ValueError(
            f"{type(model).__name__} has no learned embedding embed.W_E, so it has no E-W "
            "coupling: analyse a model with model.input_mode=embed."
        )
    if isinstance(model, HookedMLP):
        return _mlp_gradients(model, tokens, labels)
    return _autograd_gradients(model, tokens, labels)


def _mlp_gradients(model: HookedMLP, tokens: Tensor, labels: Tensor) -> CouplingGradients:
    params = list(model.parameters())
    saved = [param.grad for param in params]
    for param in params:
        param.grad = None
    try:
        with torch.enable_grad():
            loss, cache = model.run_with_cache(
                tokens,
                labels=labels,
                return_type="loss",
                incl_bwd=True,
                names_filter=["mlp.hook_pre"],
            )
        grad_E = model.embed.W_E.grad.detach().double()
        grad_W_in = model.mlp.W_in.grad.detach().double()
        delta = cache["mlp.hook_pre_grad"].detach().double()
    finally:
        for param, grad in zip(params, saved, strict=True):
            param.grad = grad

    n_ctx, d_embed, d_vocab = model.cfg.n_ctx, model.cfg.d_embed, model.cfg.d_vocab
    d_mlp = delta.shape[1]
    upstream = torch.zeros(d_vocab, n_ctx, d_mlp, dtype=torch.float64, device=delta.device)
    for pos in range(n_ctx):
        upstream[:, pos].index_add_(0, tokens[:, pos].to(delta.device), delta)

    grad_W = torch.cat(list(grad_W_in.reshape(n_ctx, d_embed, d_mlp)), dim=1)
    return CouplingGradients(
        loss=float(loss.detach()),
        grad_E=grad_E,
        grad_W=grad_W,
        upstream=upstream.reshape(d_vocab, n_ctx * d_mlp),
    )


def _autograd_gradients(model: nn.Module, tokens: Tensor, labels: Tensor) -> CouplingGradients:
    named = dict(model.named_parameters())
    E, W = named["embed.W_E"], named[first_layer_name(model)]
    with torch.enable_grad():
        output = model(tokens)
        logits = output[:, -1] if output.ndim == 3 else output
        loss = F.cross_entropy(logits, labels.to(logits.device))
        grad_E, grad_W = torch.autograd.grad(loss, [E, W])

    # W_V is [n_heads, d_model, d_head]; first_layer_matrix puts the heads side by side.
    if grad_W.ndim == 3:
        grad_W = grad_W.permute(1, 0, 2).reshape(grad_W.shape[1], -1)
    return CouplingGradients(
        loss=float(loss.detach()), grad_E=grad_E.double(), grad_W=grad_W.double(), upstream=None
    )


# ---------------------------------------------------------------------------------------------
# Spectral summary and the gradient relation


@dataclass(frozen=True)
class GradientRelation:
    """How well ‖∇_E L‖ / ‖∇_W L‖ follows σ_max(W) / σ_max(E).

    Attributes:
        grad_norm_E: ‖∇_E L‖_F.
        grad_norm_W: ‖∇_W L‖_F.
        grad_ratio: ‖∇_E L‖ / ‖∇_W L‖ (inf when ∇_W L = 0).
        predicted_ratio: σ_max(W) / σ_max(E).
        agreement: grad_ratio / predicted_ratio, which is 1 when the prediction is exact.
        upstream_norm: ‖G‖_F with G = ∂L/∂(E W), or None where G is not defined.
        alignment_E: ‖∇_E L‖ / (σ_max(W) ‖G‖), in [0, 1], or None.
        alignment_W: ‖∇_W L‖ / (σ_max(E) ‖G‖), in [0, 1], or None.
    """

    grad_norm_E: float
    grad_norm_W: float
    grad_ratio: float
    predicted_ratio: float
    agreement: float
    upstream_norm: float | None
    alignment_E: float | None
    alignment_W: float | None


@dataclass(frozen=True)
class CouplingResult:
    """Singular values, ranks and the gradient relation of E, W and their product.

    Attributes:
        E, W, EW: `MatrixSummary` of each matrix (σ_max, rank at ``rank_rtol``, effective
            rank); E and EW are None for a model without a learned embedding.
        W_name: the parameter that W is built from.
        sigma_ratio: σ_max(E) / σ_max(W), or None without an embedding.
        rank_rtol: singular values above rank_rtol · σ_max count towards the rank.
        gradients: the `GradientRelation`, or None when no data was given or there is no E.
        loss: the mean cross-entropy on the data, in nats, or None.
    """

    E: MatrixSummary | None
    W: MatrixSummary
    EW: MatrixSummary | None
    W_name: str
    sigma_ratio: float | None
    rank_rtol: float
    gradients: GradientRelation | None
    loss: float | None


def _safe_ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    return numerator / denominator


def gradient_relation(
    gradients: CouplingGradients, sigma_max_E: float, sigma_max_W: float
) -> GradientRelation:
    """Compare the gradient-norm ratio of E and W with σ_max(W) / σ_max(E).

    Args:
        gradients: from `coupling_gradients`.
        sigma_max_E: σ_max(E).
        sigma_max_W: σ_max(W), with W in the layout of the gradients.

    Returns:
        A `GradientRelation`.
    """
    norm_E = float(gradients.grad_E.norm())
    norm_W = float(gradients.grad_W.norm())
    grad_ratio = _safe_ratio(norm_E, norm_W)
    predicted = _safe_ratio(sigma_max_W, sigma_max_E)

    upstream_norm = alignment_E = alignment_W = None
    if gradients.upstream is not None:
        upstream_norm = float(gradients.upstream.norm())
        alignment_E = _safe_ratio(norm_E, sigma_max_W * upstream_norm)
        alignment_W = _safe_ratio(norm_W, sigma_max_E * upstream_norm)
    return GradientRelation(
        grad_norm_E=norm_E,
        grad_norm_W=norm_W,
        grad_ratio=grad_ratio,
        predicted_ratio=predicted,
        agreement=_safe_ratio(grad_ratio, predicted),
        upstream_norm=upstream_norm,
        alignment_E=alignment_E,
        alignment_W=alignment_W,
    )


def bilinear_coupling(
    model: nn.Module,
    tokens: Int[Tensor, "batch pos"] | None = None,
    labels: Int[Tensor, " batch"] | None = None,
    rank_rtol: float = DEFAULT_RANK_RTOL,
) -> CouplingResult:
    """Summarise E, W and E W and, given data, how their gradients follow the singular values.

    Args:
        model: a grokinterp model. Without a learned embedding only W is summarised.
        tokens: the data to differentiate the loss on (e.g. the training set), or None.
        labels: its labels, or None.
        rank_rtol: relative tolerance of the numerical ranks (see
            `grokinterp.analysis.spectra`).

    Returns:
        A `CouplingResult`.
    """
    if (tokens is None) != (labels is None):
        raise ValueError("tokens and labels must be given together: pass both or neither.")

    W = first_layer_matrix(model)
    W_summary = summarize_matrix(W, rank_rtol)
    if not embedding_names(model):
        return CouplingResult(
            E=None,
            W=W_summary,
            EW=None,
            W_name=first_layer_name(model),
            sigma_ratio=None,
            rank_rtol=rank_rtol,
            gradients=None,
            loss=None,
        )

    E = model.embed.W_E.detach()
    E_summary = summarize_matrix(E, rank_rtol)
    EW_summary = summarize_matrix(E.double() @ W.double(), rank_rtol)

    relation = loss = None
    if tokens is not None:
        gradients = coupling_gradients(model, tokens, labels)
        relation = gradient_relation(gradients, E_summary.sigma_max, W_summary.sigma_max)
        loss = gradients.loss
    return CouplingResult(
        E=E_summary,
        W=W_summary,
        EW=EW_summary,
        W_name=first_layer_name(model),
        sigma_ratio=_safe_ratio(E_summary.sigma_max, W_summary.sigma_max),
        rank_rtol=rank_rtol,
        gradients=relation,
        loss=loss,
    )


# ---------------------------------------------------------------------------------------------
# Update frequencies and the learning-rate ratio


@dataclass(frozen=True)
class UpdateFrequencies:
    """How often the rows of E and the matrix W receive a loss gradient, per step.

    Attributes:
        f_E: the mean update frequency over all rows of E, in updates per step (as
            `AdaptiveLRRatio` with ``per_row=False`` measures it).
        f_W: the update frequency of W; 1, because every batch reaches W.
        per_token: each row's frequency, indexed by token id.
        source: "token_stats" (measured appearance counts over a window of steps),
            "batch_probability" (1 - (1 - 1/p)^(2B) for the operand rows, 1 for the others) or
            "full_batch" (1 for every token in the training set, 0 otherwise).
        window: (first step, last step) of the counts for "token_stats", else None.
    """

    f_E: float
    f_W: float
    per_token: tuple[float, ...]
    source: str
    window: tuple[int, int] | None

    def __post_init__(self) -> None:
        if self.source not in FREQUENCY_SOURCES:
            raise ValueError(
                f"source={self.source!r} is unknown: expected one of {FREQUENCY_SOURCES}."
            )
        for name, value in (("f_E", self.f_E), ("f_W", self.f_W)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r} is invalid: a frequency lies in [0, 1].")


def frequencies_from_counts(
    counts_start: Sequence[int],
    counts_end: Sequence[int],
    step_start: int,
    step_end: int,
) -> UpdateFrequencies:
    """Measure update frequencies from two rows of cumulative appearance counts.

    Args:
        counts_start: each token's appearance count at ``step_start`` (token_stats.jsonl).
        counts_end: the counts at ``step_end``.
        step_start: the earlier step.
        step_end: the later step, > step_start.

    Returns:
        `UpdateFrequencies` with f_i = (count_end - count_start) / (step_end - step_start).
    """
    if step_end <= step_start:
        raise ValueError(
            f"step_end={step_end} is not after step_start={step_start}: pass two different "
            "rows of token_stats.jsonl, the earlier one first."
        )
    if len(counts_start) != len(counts_end):
        raise ValueError(
            f"counts_start has {len(counts_start)} tokens but counts_end {len(counts_end)}: pass "
            "rows of the same run."
        )
    per_token = [(end - start) / (step_end - step_start) for start, end in zip(counts_start, counts_end, strict=True)]
    return UpdateFrequencies(
        f_E=sum(per_token) / len(per_token),
        f_W=1.0,
        per_token=tuple(per_token),
        source="token_stats",
        window=(step_start, step_end),
    )


def batch_token_probability(p: int, batch_size: int, n_operands: int = 2) -> float:
    """Return the probability that a given operand value occurs in a uniform random batch.

    Each of the batch's ``batch_size`` examples has ``n_operands`` operand slots, each taken to
    be uniform over the p residues and independent, so the value is missing with probability
    (1 - 1/p)^(n_operands · batch_size): 0.27 for p = 97 at B = 64, and below 1e-4 at B = 512.

    Example:
        >>> round(batch_token_probability(97, 64), 2)
        0.73
    """
    if p < 2 or batch_size < 1 or n_operands < 1:
        raise ValueError(
            f"p={p}, batch_size={batch_size}, n_operands={n_operands}: expected p >= 2 and "
            "positive counts."
        )
    return 1.0 - (1.0 - 1.0 / p) ** (n_operands * batch_size)


def frequencies_from_batches(
    p: int, d_vocab: int, batch_size: int, train_tokens: Int[Tensor, "batch pos"] | None = None
) -> UpdateFrequencies:
    """Predict update frequencies from the batch size when no measured counts exist.

    With minibatches the operand rows 0..p-1 get `batch_token_probability`, and the other
    rows (the op and "=" tokens) occur in every batch. With full batches (``batch_size=0``)
    a row is updated on every step if its token occurs in ``train_tokens`` and never otherwise.

    Args:
        p: the modulus.
        d_vocab: rows of E.
        batch_size: the training batch size, 0 for full batch.
        train_tokens: the training inputs; needed for full batch.

    Returns:
        `UpdateFrequencies` with source "batch_probability" or "full_batch".
    """
    if batch_size == 0:
        if train_tokens is None:
            raise ValueError("batch_size=0 (full batch) needs train_tokens to see which rows occur.")
        present = torch.bincount(train_tokens.reshape(-1).cpu(), minlength=d_vocab) > 0
        per_token = present.double().tolist()
        source = "full_batch"
    else:
        operand = batch_token_probability(p, batch_size)
        per_token = [operand] * p + [1.0] * (d_vocab - p)
        source = "batch_probability"
    return UpdateFrequencies(
        f_E=sum(per_token) / d_vocab, f_W=1.0, per_token=tuple(per_token), source=source, window=None
    )


@dataclass(frozen=True)
class UpdateBalance:
    """The learning rates in force, the update sizes they give and the adaptive rule's ratio.

    Attributes:
        lr_E: learning rate of the optimiser's "embed" group.
        lr_W: learning rate of the "rest" group, which contains W.
        lr_ratio: lr_E / lr_W, the c in force.
        frequencies: the `UpdateFrequencies` used.
        effective_update_ratio: (lr_E · f_E · ‖∇_E L‖) / (lr_W · f_W · ‖∇_W L‖), the ratio of
            expected per-step update sizes of E and W under plain gradient steps; 1 is balanced.
            Adam rescales each coordinate by its gradient history, so under Adam this is the
            heuristic the paper's proposition rests on, not a measured step size.
        k: the rule's proportionality constant (``optim.adaptive_k``).
        adaptive_ratio: k · σ_max(E) / σ_max(W) · f_W / f_E, unclipped (inf when f_E = 0).
        adaptive_ratio_clipped: the same clipped to [c_min, c_max] of the config, as the
            adaptive controller would set it.
    """

    lr_E: float
    lr_W: float
    lr_ratio: float
    frequencies: UpdateFrequencies
    effective_update_ratio: float
    k: float
    adaptive_ratio: float
    adaptive_ratio_clipped: float


def adaptive_ratio(
    sigma_max_E: float, sigma_max_W: float, f_E: float, f_W: float, k: float = 1.0
) -> float:
    """Evaluate k · (σ_max(E) / σ_max(W)) · (f_W / f_E), the adaptive rule's unclipped ratio.

    This is the formula of `grokinterp.training.lr_ratio.AdaptiveLRRatio`: inf when the
    denominator is 0, and a ValueError for 0/0.
    """
    numerator = k * sigma_max_E * f_W
    denominator = sigma_max_W * f_E
    if numerator == 0 and denominator == 0:
        raise ValueError(
            f"σ_max(E)={sigma_max_E}, σ_max(W)={sigma_max_W}, f_E={f_E}, f_W={f_W} give 0/0: "
            "the adaptive ratio is undefined."
        )
    return math.inf if denominator == 0 else numerator / denominator


def update_balance(
    coupling: CouplingResult,
    frequencies: UpdateFrequencies,
    lr_E: float,
    lr_W: float,
    k: float = 1.0,
    c_min: float = 0.5,
    c_max: float = 32.0,
) -> UpdateBalance:
    """Combine learning rates, update frequencies and gradient norms into update-size ratios.

    Args:
        coupling: from `bilinear_coupling` with data, so that it has gradients.
        frequencies: from `frequencies_from_counts` or `frequencies_from_batches`.
        lr_E: the embedding group's learning rate.
        lr_W: the other group's learning rate.
        k, c_min, c_max: the adaptive rule's constant and clip range.

    Returns:
        An `UpdateBalance`.
    """
    if coupling.gradients is None or coupling.E is None:
        raise ValueError(
            "coupling has no gradients: compute it with bilinear_coupling(model, tokens, labels) "
            "on a model with a learned embedding."
        )
    if not (lr_E > 0 and lr_W > 0):
        raise ValueError(f"lr_E={lr_E!r} and lr_W={lr_W!r} must both be > 0.")

    relation = coupling.gradients
    size_E = lr_E * frequencies.f_E * relation.grad_norm_E
    size_W = lr_W * frequencies.f_W * relation.grad_norm_W
    ratio = adaptive_ratio(
        coupling.E.sigma_max, coupling.W.sigma_max, frequencies.f_E, frequencies.f_W, k
    )
    return UpdateBalance(
        lr_E=lr_E,
        lr_W=lr_W,
        lr_ratio=lr_E / lr_W,
        frequencies=frequencies,
        effective_update_ratio=_safe_ratio(size_E, size_W),
        k=k,
        adaptive_ratio=ratio,
        adaptive_ratio_clipped=min(max(ratio, c_min), c_max),
    )
