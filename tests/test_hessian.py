"""Tests of grokinterp.analysis.hessian against dense Hessians and closed-form losses."""

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grokinterp.analysis import hessian
from grokinterp.analysis.hessian import (
    EigenResult,
    HessianProblem,
    dense_hessian,
    extreme_eigenvalues,
    gradient_norms,
    hutchinson_trace,
    mixed_block_norm,
    model_loss_fn,
    saddle_verdict,
)

P = 5

# Float64 rounding in sums of a few hundred products of size ~1.
ROUNDING = 1e-12


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # These tensors are tiny, so intra-op threads only add overhead, and on a loaded machine
    # idle OpenMP threads spin: on 2 busy cores this file ran 30 times slower with 2 threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Embed(nn.Module):
    def __init__(self, d_vocab, d_embed):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(d_vocab, d_embed))


class MLP(nn.Module):
    def __init__(self, d_input, d_mlp):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(d_input, d_mlp))
        self.b_in = nn.Parameter(torch.empty(d_mlp))


class Unembed(nn.Module):
    def __init__(self, d_mlp, p):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(d_mlp, p))
        self.b_U = nn.Parameter(torch.empty(p))


class TinyMLP(nn.Module):
    """A 68-parameter embedding MLP on tokens [a, b], with tanh so that the Hessian is smooth.

    With ``per_position=True`` it returns [batch, 3, p] like a transformer: the answer at the
    last position and large unrelated logits before it.
    """

    def __init__(self, p=P, d_embed=3, d_mlp=4, per_position=False, seed=0):
        super().__init__()
        self.embed = Embed(p, d_embed)
        self.mlp = MLP(2 * d_embed, d_mlp)
        self.unembed = Unembed(d_mlp, p)
        self.per_position = per_position

        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        self.double()

    def forward(self, tokens):
        x = self.embed.W_E[tokens].flatten(start_dim=1)
        post = torch.tanh(x @ self.mlp.W_in + self.mlp.b_in)
        logits = post @ self.unembed.W_U + self.unembed.b_U
        if not self.per_position:
            return logits
        decoy = torch.full_like(logits, -30.0)
        decoy[:, 0] = 30.0
        return torch.stack([decoy, decoy, logits], dim=1)


def addition_data(p=P):
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten()], dim=1)
    return tokens, (tokens[:, 0] + tokens[:, 1]) % p


@pytest.fixture(scope="module")
def tiny():
    model = TinyMLP()
    tokens, labels = addition_data()
    params = {name: value.detach() for name, value in model.named_parameters()}
    return model, model_loss_fn(model), params, tokens, labels


def random_vector(n, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# model_loss_fn


@pytest.mark.parametrize("per_position", [False, True])
def test_model_loss_fn_reads_answer(per_position):
    model = TinyMLP(per_position=per_position)
    tokens, labels = addition_data()
    loss_fn = model_loss_fn(model)

    with torch.no_grad():
        output = model(tokens)
        answer_logits = output[:, -1] if per_position else output
        expected = F.cross_entropy(answer_logits, labels)
    loss = loss_fn(dict(model.named_parameters()), tokens, labels)

    assert output.ndim == (3 if per_position else 2)
    assert torch.isclose(loss, expected, rtol=ROUNDING)


def test_model_loss_fn_uses_given_params():
    model = TinyMLP()
    tokens, labels = addition_data()
    zero = {name: torch.zeros_like(value) for name, value in model.named_parameters()}

    loss = model_loss_fn(model)(zero, tokens, labels)

    # All-zero weights give equal logits, so the loss is log p, and the module is unchanged.
    assert math.isclose(float(loss), math.log(P), rel_tol=ROUNDING)
    assert float(model.unembed.W_U.detach().abs().sum()) > 0


def test_model_loss_fn_rejects_bad_output():
    model = nn.Linear(3, 4)
    with pytest.raises(ValueError, match="expected logits"):
        model_loss_fn(model)(
            dict(model.named_parameters()),
            torch.randn(2, 5, 6, 3),
            torch.zeros(2, dtype=torch.long),
        )
    with pytest.raises(TypeError, match="Module"):
        model_loss_fn(lambda x: x)


# ---------------------------------------------------------------------------------------------
# Dense Hessian oracle and HVPs


def test_dense_hessian_of_quadratic():
    A = torch.tensor([[4.0, 1.0, -2.0], [1.0, 3.0, 0.5], [-2.0, 0.5, -1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)

    def loss_fn(params, inputs, labels):
        x = params["x"]
        return 0.5 * x @ A @ x + b @ x

    params = {"x": torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)}
    H = dense_hessian(loss_fn, params, torch.zeros(1), torch.zeros(1))

    assert torch.allclose(H, A, atol=ROUNDING)


def test_dense_hessian_of_least_squares_chunked():
    # The mean of (w . x_i - y_i)^2 / 2 over N samples has Hessian X^T X / N.
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(23, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(23, generator=generator, dtype=torch.float64)

    def loss_fn(params, inputs, labels):
        return 0.5 * (inputs @ params["w"] - labels).pow(2).mean()

    params = {"w": torch.randn(4, generator=generator, dtype=torch.float64)}
    H = dense_hessian(loss_fn, params, X, y, chunk_size=5)

    assert torch.allclose(H, X.T @ X / 23, atol=ROUNDING)


def test_dense_hessian_symmetric(tiny):
    _, loss_fn, params, tokens, labels = tiny
    H = dense_hessian(loss_fn, params, tokens, labels)

    assert H.shape == (68, 68)
    assert float((H - H.T).abs().max()) <= ROUNDING * float(H.abs().max())


def test_hvp_methods_agree(tiny):
    _, loss_fn, params, tokens, labels = tiny
    forward = HessianProblem(loss_fn, params, tokens, labels, method="fwd_rev")
    backward = HessianProblem(loss_fn, params, tokens, labels, method="double_backward")
    vector = random_vector(forward.size, seed=2)

    forward_product = forward.hvp(vector)
    backward_product = backward.hvp(vector)

    assert forward.method == "fwd_rev"
    assert backward.method == "double_backward"
    assert torch.allclose(forward_product, backward_product, rtol=1e-10, atol=ROUNDING)


def test_hvp_matches_dense_hessian(tiny):
    _, loss_fn, params, tokens, labels = tiny
    block = ["mlp.W_in", "embed.W_E"]
    problem = HessianProblem(loss_fn, params, tokens, labels, block=block)
    H = dense_hessian(loss_fn, params, tokens, labels, block=block)
    vector = random_vector(problem.size, seed=3)

    assert problem.size == 24 + 15
    assert problem.block == tuple(block)
    assert torch.allclose(problem.hvp(vector), H @ vector, rtol=1e-10, atol=ROUNDING)


@pytest.mark.parametrize("chunk_size", [1, 7, 24])
@pytest.mark.parametrize("method", ["fwd_rev", "double_backward"])
def test_hvp_chunked_equals_unchunked(tiny, chunk_size, method):
    _, loss_fn, params, tokens, labels = tiny
    whole = HessianProblem(loss_fn, params, tokens, labels, method=method)
    chunked = HessianProblem(loss_fn, params, tokens, labels, chunk_size=chunk_size, method=method)
    vector = random_vector(whole.size, seed=4)

    assert torch.allclose(chunked.hvp(vector), whole.hvp(vector), rtol=1e-10, atol=ROUNDING)
    assert torch.allclose(chunked.gradient(), whole.gradient(), rtol=1e-10, atol=ROUNDING)
    assert torch.isclose(chunked.loss(), whole.loss(), rtol=ROUNDING)


def test_hvp_float64_from_float32_params():
    model = TinyMLP().float()
    tokens, labels = addition_data()
    params = dict(model.named_parameters())
    loss_fn = model_loss_fn(model)

    problem = HessianProblem(loss_fn, params, tokens, labels, dtype=torch.float64)
    H = dense_hessian(loss_fn, params, tokens, labels, dtype=torch.float64)
    vector = random_vector(problem.size, seed=5)
    product = problem.hvp(vector.float())

    assert problem.dtype == torch.float64
    assert product.dtype == torch.float64
    assert torch.allclose(product, H @ vector.float().double(), rtol=1e-10, atol=ROUNDING)


class Cube(torch.autograd.Function):
    """x^3 with a differentiable backward but no forward-mode rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad_output


def test_auto_method_uses_double_backward_without_jvp():
    def loss_fn(params, inputs, labels):
        return Cube.apply(params["x"]).sum()

    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    problem = HessianProblem(loss_fn, {"x": x}, torch.zeros(1), torch.zeros(1), method="auto")
    vector = torch.tensor([0.5, 1.0], dtype=torch.float64)

    assert problem.method == "double_backward"
    assert torch.allclose(problem.hvp(vector), 6 * x * vector, atol=ROUNDING)


def test_auto_method_prefers_double_backward(tiny):
    _, loss_fn, params, tokens, labels = tiny
    assert HessianProblem(loss_fn, params, tokens, labels).method == "double_backward"


# ---------------------------------------------------------------------------------------------
# Lanczos eigenvalues


@pytest.mark.parametrize("block", [None, ["embed.W_E"]])
def test_lanczos_matches_dense_eigenvalues(tiny, block):
    _, loss_fn, params, tokens, labels = tiny
    problem = HessianProblem(loss_fn, params, tokens, labels, block=block)
    dense = torch.linalg.eigvalsh(dense_hessian(loss_fn, params, tokens, labels, block=block))
    k = 3 if block is None else 2

    result = extreme_eigenvalues(
        problem, problem.size, k=k, which="both", tol=1e-12, return_eigenvectors=True
    )

    # 1e-6 relative to the spectral norm: eigenvalues near 0 have no meaningful relative error.
    scale = float(dense.abs().max())
    expected = torch.cat([dense[:k], dense[-k:]])
    assert result.eigenvalues.shape == (2 * k,)
    assert float((result.eigenvalues - expected).abs().max()) < 1e-6 * scale
    assert float(result.residuals.max()) < 1e-6 * scale
    assert result.eigenvectors.shape == (problem.size, 2 * k)
    assert result.smallest < 0 < result.largest


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_lanczos_one_end(tiny, which):
    _, loss_fn, params, tokens, labels = tiny
    problem = HessianProblem(loss_fn, params, tokens, labels, block=["mlp.W_in", "unembed.W_U"])
    dense = torch.linalg.eigvalsh(
        dense_hessian(loss_fn, params, tokens, labels, block=["mlp.W_in", "unembed.W_U"])
    )

    result = extreme_eigenvalues(problem, problem.size, k=2, which=which, tol=1e-12)

    expected = dense[-2:] if which == "largest" else dense[:2]
    scale = float(dense.abs().max())
    assert result.eigenvectors is None
    assert result.which == which
    assert float((result.eigenvalues - expected).abs().max()) < 1e-6 * scale


def test_lanczos_rejects_bad_k():
    with pytest.raises(ValueError, match="1 <= k < n"):
        extreme_eigenvalues(lambda v: v, 3, k=3)
    with pytest.raises(ValueError, match="exceed n=3"):
        extreme_eigenvalues(lambda v: v, 3, k=2, which="both")
    with pytest.raises(ValueError, match="k_smallest=0 is invalid"):
        extreme_eigenvalues(lambda v: v, 3, k=1, k_smallest=0)
    # Under the test suite's runtime type checks an invalid literal fails as a TypeError first.
    with pytest.raises((TypeError, ValueError), match="which"):
        extreme_eigenvalues(lambda v: v, 3, which="middle")


# ---------------------------------------------------------------------------------------------
# Saddle verdicts


def quadratic_loss(curvatures):
    def loss_fn(params, inputs, labels):
        return 0.5 * (curvatures * params["x"] ** 2).sum()

    return loss_fn


@pytest.mark.parametrize(
    "curvatures, verdict",
    [
        ([2.0, -2.0], "saddle"),  # f(x, y) = x^2 - y^2
        ([2.0, 0.5, 1.0], "minimum"),
        ([-1.0, -3.0], "maximum"),
        ([0.0, 0.0], "flat"),
    ],
)
def test_saddle_verdict_of_quadratics(curvatures, verdict):
    curvatures = torch.tensor(curvatures, dtype=torch.float64)
    loss_fn = quadratic_loss(curvatures)
    params = {"x": torch.zeros_like(curvatures)}
    problem = HessianProblem(loss_fn, params, torch.zeros(1), torch.zeros(1))

    eigenvalues = extreme_eigenvalues(problem, problem.size, k=1, tol=1e-12)
    grad_norm = float(problem.gradient().norm())
    result = saddle_verdict(grad_norm, eigenvalues, tau=1e-8, grad_tol=1e-10)

    assert result.verdict == verdict
    assert result.grad_norm == 0.0
    assert math.isclose(result.lambda_min, float(curvatures.min()), abs_tol=1e-10)
    assert math.isclose(result.lambda_max, float(curvatures.max()), abs_tol=1e-10)


def linear_network():
    """A two-layer linear network y ~ w2 . (W1 x) at W1 = 0, w2 = 0, a critical saddle point."""
    generator = torch.Generator().manual_seed(6)
    X = torch.randn(30, 3, generator=generator, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss_fn(params, inputs, labels):
        return (labels - inputs @ params["W1"].T @ params["w2"]).pow(2).mean()

    params = {
        "W1": torch.zeros(2, 3, dtype=torch.float64),
        "w2": torch.zeros(2, dtype=torch.float64),
    }
    return loss_fn, params, X, y


def test_saddle_verdict_of_linear_network_at_zero():
    loss_fn, params, X, y = linear_network()
    problem = HessianProblem(loss_fn, params, X, y)

    eigenvalues = extreme_eigenvalues(problem, problem.size, k=2, tol=1e-12)
    result = saddle_verdict(float(problem.gradient().norm()), eigenvalues, tau=1e-6, grad_tol=1e-10)

    assert result.verdict == "saddle"
    assert result.n_negative == 2
    assert result.n_positive == 2
    # At zero the Hessian has only the W1-w2 coupling, so its spectrum is symmetric about 0.
    assert math.isclose(result.lambda_min, -result.lambda_max, rel_tol=1e-8)


def test_saddle_verdict_non_stationary():
    result = saddle_verdict(0.5, torch.tensor([-1.0, 1.0]), tau=0.1, grad_tol=0.01)
    assert result.verdict == "non-stationary"
    assert saddle_verdict(0.5, torch.tensor([-1.0, 1.0]), tau=0.1).verdict == "saddle"


def test_saddle_verdict_needs_both_ends():
    one_end = EigenResult(
        eigenvalues=torch.tensor([1.0], dtype=torch.float64),
        residuals=torch.tensor([0.0], dtype=torch.float64),
        eigenvectors=None,
        which="largest",
        tol=0.0,
        n_matvecs=1,
    )
    with pytest.raises(ValueError, match="which='both'"):
        saddle_verdict(0.0, one_end, tau=0.1)
    with pytest.raises(ValueError, match="tau=-1"):
        saddle_verdict(0.0, torch.tensor([1.0]), tau=-1.0)


# ---------------------------------------------------------------------------------------------
# Trace, block coupling and gradients


def test_hutchinson_trace_within_three_errors(tiny):
    _, loss_fn, params, tokens, labels = tiny
    problem = HessianProblem(loss_fn, params, tokens, labels)
    true_trace = float(torch.trace(dense_hessian(loss_fn, params, tokens, labels)))

    estimate = hutchinson_trace(
        problem, problem.size, n_samples=200, generator=torch.Generator().manual_seed(7)
    )

    assert estimate.n_samples == 200
    assert estimate.standard_error > 0
    assert abs(estimate.estimate - true_trace) < 3 * estimate.standard_error


def test_hutchinson_trace_exact_for_diagonal():
    # z^T D z = tr(D) for every sign vector z, so every sample is exact and the error is 0.
    diagonal = torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64)
    estimate = hutchinson_trace(
        lambda v: diagonal * v, 3, n_samples=4, generator=torch.Generator().manual_seed(0)
    )
    assert math.isclose(estimate.estimate, 4.0, rel_tol=ROUNDING)
    assert estimate.standard_error == 0.0


@pytest.mark.parametrize(
    "block_a, block_b",
    [(["embed.W_E"], ["mlp.W_in"]), (["unembed.W_U", "unembed.b_U"], ["mlp.b_in"])],
)
def test_mixed_block_norm_matches_dense(tiny, block_a, block_b):
    _, loss_fn, params, tokens, labels = tiny
    H = dense_hessian(loss_fn, params, tokens, labels, block=block_a + block_b)
    size_a = sum(params[name].numel() for name in block_a)
    expected = float(torch.linalg.matrix_norm(H[:size_a, size_a:], ord=2))

    norm = mixed_block_norm(loss_fn, params, tokens, labels, block_a, block_b, tol=1e-12)

    assert expected > 0
    assert math.isclose(norm, expected, rel_tol=1e-8)


def test_mixed_block_norm_of_linear_network():
    loss_fn, params, X, y = linear_network()
    H = dense_hessian(loss_fn, params, X, y, block=["W1", "w2"])
    expected = float(torch.linalg.matrix_norm(H[:6, 6:], ord=2))

    assert math.isclose(
        mixed_block_norm(loss_fn, params, X, y, ["W1"], ["w2"], tol=1e-12), expected, rel_tol=1e-8
    )


def test_mixed_block_norm_rejects_overlap(tiny):
    _, loss_fn, params, tokens, labels = tiny
    with pytest.raises(ValueError, match="share the parameters \\['mlp.W_in'\\]"):
        mixed_block_norm(loss_fn, params, tokens, labels, ["mlp.W_in"], ["mlp.W_in", "mlp.b_in"])


def test_gradient_norms_match_autograd(tiny):
    model, loss_fn, params, tokens, labels = tiny
    model.zero_grad()
    F.cross_entropy(model(tokens), labels).backward()
    grads = {name: value.grad for name, value in model.named_parameters()}
    model.zero_grad()

    norms = gradient_norms(
        loss_fn,
        params,
        tokens,
        labels,
        {"E": ["embed.W_E"], "W": ["mlp.W_in", "mlp.b_in"]},
        chunk_size=6,
    )
    per_parameter = gradient_norms(loss_fn, params, tokens, labels, ["unembed.W_U"])

    expected_w = math.sqrt(float(grads["mlp.W_in"].pow(2).sum() + grads["mlp.b_in"].pow(2).sum()))
    assert set(norms) == {"E", "W"}
    assert math.isclose(norms["E"], float(grads["embed.W_E"].norm()), rel_tol=1e-10)
    assert math.isclose(norms["W"], expected_w, rel_tol=1e-10)
    assert math.isclose(
        per_parameter["unembed.W_U"], float(grads["unembed.W_U"].norm()), rel_tol=1e-10
    )


# ---------------------------------------------------------------------------------------------
# Input validation


def test_problem_rejects_bad_inputs(tiny):
    _, loss_fn, params, tokens, labels = tiny
    with pytest.raises(ValueError, match="unknown parameters \\['embed.W_Q'\\]"):
        HessianProblem(loss_fn, params, tokens, labels, block=["embed.W_Q"])
    with pytest.raises(TypeError, match="is a string"):
        HessianProblem(loss_fn, params, tokens, labels, block="embed.W_E")
    with pytest.raises(ValueError, match="25 samples but labels has 24"):
        HessianProblem(loss_fn, params, tokens, labels[:-1])
    with pytest.raises(ValueError, match="chunk_size=0"):
        HessianProblem(loss_fn, params, tokens, labels, chunk_size=0)
    with pytest.raises((TypeError, ValueError), match="method"):
        HessianProblem(loss_fn, params, tokens, labels, method="newton")


def test_problem_rejects_wrong_vector_size(tiny):
    _, loss_fn, params, tokens, labels = tiny
    problem = HessianProblem(loss_fn, params, tokens, labels, block=["mlp.b_in"])
    with pytest.raises(ValueError, match="expected \\(4,\\)"):
        problem.hvp(torch.zeros(5, dtype=torch.float64))


def test_dense_hessian_rejects_large_block(tiny):
    _, loss_fn, params, tokens, labels = tiny
    with pytest.raises(ValueError, match="more than max_size=10"):
        dense_hessian(loss_fn, params, tokens, labels, max_size=10)


def test_docstring_examples():
    result = doctest.testmod(hessian)
    assert result.attempted > 0
    assert result.failed == 0
