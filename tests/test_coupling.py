"""Tests of grokinterp.analysis.coupling against linear algebra and the bilinear chain rule."""

import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grokinterp.analysis import coupling as coupling_module
from grokinterp.analysis.coupling import (
    CouplingGradients,
    adaptive_ratio,
    batch_token_probability,
    bilinear_coupling,
    coupling_gradients,
    frequencies_from_batches,
    frequencies_from_counts,
    gradient_relation,
    update_balance,
)
from grokinterp.models import HookedMLP, MLPConfig, first_layer_matrix
from grokinterp.models.transformer import make_transformer
from grokinterp.tasks import TaskConfig, all_pairs
from grokinterp.training.lr_ratio import AdaptiveLRRatio, param_groups

# Float64 sums of a few thousand products of size ~1.
ROUNDING = 1e-10


def micro_mlp(seed: int = 0, input_mode: str = "embed") -> HookedMLP:
    cfg = MLPConfig(d_vocab=9, n_ctx=4, d_out=7, input_mode=input_mode, d_embed=6, d_mlp=10)
    return HookedMLP(cfg, seed=seed).double()


def addition_data(p: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = all_pairs(TaskConfig(p=p))
    return pairs.tokens, pairs.labels


# ---------------------------------------------------------------------------------------------
# Singular values and ranks


def test_sigma_and_ranks_match_numpy():
    model = micro_mlp()
    generator = np.random.default_rng(0)
    # E with singular values 5, 2, 0.5, 1e-3, 0, 0 (rank 3 at rtol 1e-2), W of rank 4.
    left, _ = np.linalg.qr(generator.standard_normal((9, 6)))
    right, _ = np.linalg.qr(generator.standard_normal((6, 6)))
    E = left @ np.diag([5.0, 2.0, 0.5, 1e-3, 0.0, 0.0]) @ right.T
    W_rank_4 = generator.standard_normal((6, 4)) @ generator.standard_normal((4, 40))
    # W_in stacks the column blocks of W (one per position) vertically.
    W_in = np.concatenate(np.split(W_rank_4, 4, axis=1), axis=0)
    with torch.no_grad():
        model.embed.W_E.copy_(torch.from_numpy(E))
        model.mlp.W_in.copy_(torch.from_numpy(W_in))

    result = bilinear_coupling(model, rank_rtol=1e-2)

    W = first_layer_matrix(model).numpy()
    assert np.array_equal(W, W_rank_4)
    for summary, matrix in ((result.E, E), (result.W, W), (result.EW, E @ W)):
        singular = np.linalg.svd(matrix, compute_uv=False)
        assert math.isclose(summary.sigma_max, singular[0], rel_tol=ROUNDING)
        assert summary.rank == int((singular > 1e-2 * singular[0]).sum())
    assert result.E.rank == 3
    assert result.W.rank == 4
    assert math.isclose(result.sigma_ratio, 5.0 / np.linalg.svd(W, compute_uv=False)[0], rel_tol=ROUNDING)


def test_first_layer_matrix_layout():
    # Column block pos of W multiplies the embedding of the token at position pos.
    model = micro_mlp()
    W = first_layer_matrix(model)
    for pos in range(4):
        assert torch.equal(W[:, pos * 10 : (pos + 1) * 10], model.W_in_block(pos))


def test_model_without_embedding_has_only_W():
    model = micro_mlp(input_mode="onehot")
    result = bilinear_coupling(model)
    assert result.E is None
    assert result.EW is None
    assert result.sigma_ratio is None
    assert result.W.shape == (36, 10)
    with pytest.raises(ValueError, match="has no learned embedding"):
        coupling_gradients(model, *addition_data())


# ---------------------------------------------------------------------------------------------
# Gradients and the bilinear relation


def test_mlp_gradients_follow_chain_rule():
    # For the embedding MLP the first layer reads only P = E W, so with G = dL/dP:
    # grad_E = G W^T and grad_W = E^T G exactly.
    model = micro_mlp(seed=1)
    tokens, labels = addition_data()
    gradients = coupling_gradients(model, tokens, labels)

    E, W = model.embed.W_E.detach(), first_layer_matrix(model)
    G = gradients.upstream
    assert torch.allclose(gradients.grad_E, G @ W.T, rtol=ROUNDING, atol=ROUNDING)
    assert torch.allclose(gradients.grad_W, E.T @ G, rtol=ROUNDING, atol=ROUNDING)

    # And both agree with plain autograd of the loss.
    loss = F.cross_entropy(model(tokens), labels)
    grad_E, grad_W_in = torch.autograd.grad(loss, [model.embed.W_E, model.mlp.W_in])
    assert torch.allclose(gradients.grad_E, grad_E, rtol=ROUNDING, atol=ROUNDING)
    assert torch.allclose(gradients.grad_W, torch.cat(list(grad_W_in.reshape(4, 6, 10)), dim=1))
    assert math.isclose(gradients.loss, loss.item(), rel_tol=ROUNDING)


def test_gradients_leave_grad_fields_alone():
    model = micro_mlp()
    sentinel = torch.full_like(model.embed.W_E, 7.0)
    model.embed.W_E.grad = sentinel.clone()
    coupling_gradients(model, *addition_data())
    assert torch.equal(model.embed.W_E.grad, sentinel)
    assert model.mlp.W_in.grad is None


def test_alignment_factors_bound_and_quotient():
    model = micro_mlp(seed=2)
    result = bilinear_coupling(model, *addition_data())
    relation = result.gradients
    # ||G W^T|| <= sigma_max(W) ||G|| and ||E^T G|| <= sigma_max(E) ||G||.
    assert 0 < relation.alignment_E <= 1 + ROUNDING
    assert 0 < relation.alignment_W <= 1 + ROUNDING
    assert math.isclose(relation.agreement, relation.alignment_E / relation.alignment_W, rel_tol=1e-9)
    assert math.isclose(relation.predicted_ratio, result.W.sigma_max / result.E.sigma_max)


def bilinear_toy(direction: int) -> tuple[CouplingGradients, torch.Tensor, torch.Tensor]:
    """The linear loss L(E, W) = <C, E W> with C = u v^T, so that G = dL/dP = C exactly.

    Derivation: grad_E = C W^T = u (W v)^T and grad_W = E^T C = (E^T u) v^T. With u the top
    left singular vector of E, ||E^T u|| = sigma_max(E). With v the right singular vector
    number ``direction`` of W, ||W v|| = sigma_direction(W). So
    ||grad_E|| = sigma_direction(W) ||C|| and ||grad_W|| = sigma_max(E) ||C||.
    """
    generator = torch.Generator().manual_seed(5)
    E = torch.randn(9, 6, generator=generator, dtype=torch.float64).requires_grad_()
    W = torch.randn(6, 20, generator=generator, dtype=torch.float64).requires_grad_()
    U_E, _, _ = torch.linalg.svd(E.detach())
    _, _, Vh_W = torch.linalg.svd(W.detach())
    C = torch.outer(U_E[:, 0], Vh_W[direction])

    loss = (C * (E @ W)).sum()
    grad_E, grad_W = torch.autograd.grad(loss, [E, W])
    return CouplingGradients(loss.item(), grad_E, grad_W, C), E.detach(), W.detach()


def test_gradient_relation_exact_when_aligned():
    gradients, E, W = bilinear_toy(direction=0)
    sigma_E, sigma_W = torch.linalg.matrix_norm(E, ord=2), torch.linalg.matrix_norm(W, ord=2)
    relation = gradient_relation(gradients, float(sigma_E), float(sigma_W))

    assert math.isclose(relation.grad_norm_E, float(sigma_W), rel_tol=ROUNDING)  # ||C|| = 1
    assert math.isclose(relation.grad_norm_W, float(sigma_E), rel_tol=ROUNDING)
    assert math.isclose(relation.agreement, 1.0, rel_tol=ROUNDING)
    assert math.isclose(relation.alignment_E, 1.0, rel_tol=ROUNDING)
    assert math.isclose(relation.alignment_W, 1.0, rel_tol=ROUNDING)


def test_gradient_relation_misaligned_drops_to_sigma_ratio():
    # C along W's second right singular vector: ||grad_E|| = sigma_2(W), the agreement is
    # sigma_2(W) / sigma_1(W).
    gradients, E, W = bilinear_toy(direction=1)
    singular_W = torch.linalg.svdvals(W)
    relation = gradient_relation(
        gradients, float(torch.linalg.matrix_norm(E, ord=2)), float(singular_W[0])
    )
    expected = float(singular_W[1] / singular_W[0])
    assert math.isclose(relation.alignment_E, expected, rel_tol=ROUNDING)
    assert math.isclose(relation.agreement, expected, rel_tol=ROUNDING)


def test_transformer_gradients_use_answer_position():
    model = make_transformer(5, d_model=8, n_heads=2, d_head=4, d_mlp=12, dtype=torch.float64)
    pairs = all_pairs(TaskConfig(p=5, layout="a_b_eq"))
    gradients = coupling_gradients(model, pairs.tokens, pairs.labels)

    loss = F.cross_entropy(model(pairs.tokens)[:, -1], pairs.labels)
    grad_E, grad_V = torch.autograd.grad(loss, [model.embed.W_E, model.blocks[0].attn.W_V])
    assert gradients.upstream is None
    assert torch.allclose(gradients.grad_E, grad_E, rtol=ROUNDING, atol=1e-14)
    # The heads of W_V sit side by side, as in first_layer_matrix.
    assert gradients.grad_W.shape == first_layer_matrix(model).shape == (8, 8)
    assert torch.allclose(gradients.grad_W[:, 4:], grad_V[1], rtol=ROUNDING, atol=1e-14)

    relation = bilinear_coupling(model, pairs.tokens, pairs.labels).gradients
    assert relation.alignment_E is None
    assert relation.upstream_norm is None


# ---------------------------------------------------------------------------------------------
# Update frequencies and learning-rate ratios


def test_batch_token_probability_matches_design_numbers():
    # A token is missing from a uniform batch with probability about (1 - 1/p)^(2B).
    assert math.isclose(1 - batch_token_probability(97, 64), (96 / 97) ** 128)
    assert 0.26 < 1 - batch_token_probability(97, 64) < 0.28
    assert 1 - batch_token_probability(97, 512) < 1e-4


def test_frequencies_from_counts():
    frequencies = frequencies_from_counts([0, 10, 50], [20, 10, 100], 50, 100)
    assert frequencies.per_token == (0.4, 0.0, 1.0)
    assert math.isclose(frequencies.f_E, 1.4 / 3)
    assert frequencies.window == (50, 100)
    assert frequencies.source == "token_stats"
    with pytest.raises(ValueError, match="is not after step_start"):
        frequencies_from_counts([0], [1], 10, 10)


def test_frequencies_from_batches():
    minibatch = frequencies_from_batches(7, 9, batch_size=4)
    assert minibatch.per_token[:7] == (batch_token_probability(7, 4),) * 7
    assert minibatch.per_token[7:] == (1.0, 1.0)
    assert minibatch.source == "batch_probability"

    # Full batch: tokens that occur in the training set are updated every step.
    tokens = torch.tensor([[0, 7, 1, 8], [2, 7, 1, 8]])
    full = frequencies_from_batches(7, 9, batch_size=0, train_tokens=tokens)
    assert full.per_token == (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0)
    assert full.source == "full_batch"


def test_adaptive_ratio_matches_controller():
    model = micro_mlp()
    groups = param_groups(model.named_parameters(), ["embed.W_E"], 0.01, 1.0, 0.0)
    optimizer = torch.optim.Adam(groups)
    controller = AdaptiveLRRatio(k=2.0, every=1, window=4, c_min=0.5, c_max=32.0)
    generator = torch.Generator().manual_seed(0)
    for step in range(4):
        gradient = torch.randn(9, 6, generator=generator, dtype=torch.float64)
        gradient[step : step + 3] = 0  # rows without a gradient this step
        controller.observe(gradient)
    controller.update(4, model.embed.W_E, first_layer_matrix(model), optimizer)
    measured = controller.last_measurement

    ours = adaptive_ratio(
        measured.sigma_max_embed, measured.sigma_max_weight, measured.f_embed, 1.0, k=2.0
    )
    assert math.isclose(ours, measured.unclipped_ratio, rel_tol=1e-12)


def test_adaptive_ratio_edge_cases():
    assert adaptive_ratio(1.0, 2.0, 0.0, 1.0) == math.inf
    with pytest.raises(ValueError, match="0/0"):
        adaptive_ratio(0.0, 0.0, 0.5, 1.0)


def test_update_balance():
    model = micro_mlp(seed=3)
    result = bilinear_coupling(model, *addition_data())
    frequencies = frequencies_from_counts([0] * 9, [25, 50, 50, 50, 50, 50, 50, 100, 100], 0, 100)
    balance = update_balance(result, frequencies, lr_E=0.1, lr_W=0.01, k=1.0, c_min=0.5, c_max=4.0)

    relation = result.gradients
    expected = (0.1 * frequencies.f_E * relation.grad_norm_E) / (0.01 * relation.grad_norm_W)
    assert math.isclose(balance.effective_update_ratio, expected, rel_tol=1e-12)
    assert balance.lr_ratio == pytest.approx(10.0)
    rule = result.E.sigma_max / result.W.sigma_max / frequencies.f_E
    assert math.isclose(balance.adaptive_ratio, rule, rel_tol=1e-12)
    assert balance.adaptive_ratio_clipped == min(max(rule, 0.5), 4.0)


def test_docstring_examples():
    assert doctest.testmod(coupling_module).failed == 0
