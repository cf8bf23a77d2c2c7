"""The Hessian benchmark's code paths and the Lanczos solver against a dense Hessian."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.function import once_differentiable

from benchmarks.hessian_eigs import (
    eigenthings_end,
    eigenthings_fewest_steps,
    eigenthings_operator,
    grokinterp_ends,
    hessian_problem,
    residual,
)
from grokinterp.analysis.hessian import (
    HessianProblem,
    dense_hessian,
    extreme_eigenvalues,
    model_loss_fn,
)
from grokinterp.models import HookedMLP, MLPConfig
from grokinterp.tasks import TaskConfig, all_pairs

# Products of float64 tensors of size ~1 summed over ~100 terms: rounding stays below 1e-12.
ROUNDING = 1e-10


@pytest.fixture
def tiny_mlp() -> tuple[HookedMLP, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float64 HookedMLP on (a + b) mod 5 with 75 parameters, all 25 pairs and its Hessian."""
    task = TaskConfig(p=5, train_fraction=0.5)
    config = MLPConfig(d_vocab=task.d_vocab, n_ctx=task.n_ctx, d_out=task.p, d_embed=2, d_mlp=4)
    model = HookedMLP(config, seed=3).double()
    pairs = all_pairs(task)
    hessian = dense_hessian(
        model_loss_fn(model), dict(model.named_parameters()), pairs.tokens, pairs.labels
    )
    return model, pairs.tokens, pairs.labels, hessian


def test_benchmark_problem_matches_dense(tiny_mlp) -> None:
    model, tokens, labels, hessian = tiny_mlp
    problem = hessian_problem(model, tokens, labels)
    vector = torch.randn(problem.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(problem.hvp(vector), hessian @ vector, atol=ROUNDING, rtol=0)


@pytest.mark.parametrize("solver", ["lanczos", "arpack"])
def test_benchmark_ends_match_dense(tiny_mlp, solver: str) -> None:
    model, tokens, labels, hessian = tiny_mlp
    eigenvalues = torch.linalg.eigvalsh(hessian)
    problem = hessian_problem(model, tokens, labels)

    ends = grokinterp_ends(problem, solver, tol=1e-10)
    # |λ - θ| <= residual <= tol · ||H|| for a symmetric H, so 1e-9 · ||H|| is a safe bound.
    bound = 1e-9 * float(eigenvalues.abs().max())
    assert ends["largest"]["value"] == pytest.approx(float(eigenvalues[-1]), abs=bound)
    assert ends["smallest"]["value"] == pytest.approx(float(eigenvalues[0]), abs=bound)
    for result in ends.values():
        assert residual(problem.hvp, result["value"], result["vector"]) <= bound


@pytest.mark.parametrize("which", ["both", "largest", "smallest"])
@pytest.mark.parametrize("k", [1, 3])
def test_lanczos_solver_matches_dense(tiny_mlp, which: str, k: int) -> None:
    model, tokens, labels, hessian = tiny_mlp
    eigenvalues = torch.linalg.eigvalsh(hessian)
    problem = hessian_problem(model, tokens, labels)

    result = extreme_eigenvalues(
        problem, problem.size, k=k, which=which, tol=1e-10, solver="lanczos",
        return_eigenvectors=True,
    )
    expected = {
        "both": torch.cat([eigenvalues[:k], eigenvalues[-k:]]),
        "largest": eigenvalues[-k:],
        "smallest": eigenvalues[:k],
    }[which]
    scale = float(eigenvalues.abs().max())
    torch.testing.assert_close(result.eigenvalues, expected, atol=1e-9 * scale, rtol=0)
    assert bool((result.residuals <= 1e-9 * scale).all())
    gram = result.eigenvectors.T @ result.eigenvectors
    torch.testing.assert_close(gram, torch.eye(len(expected), dtype=torch.float64), atol=1e-8, rtol=0)


def test_lanczos_stops_at_residual_bound(tiny_mlp) -> None:
    model, tokens, labels, hessian = tiny_mlp
    problem = hessian_problem(model, tokens, labels)
    scale = float(torch.linalg.eigvalsh(hessian).abs().max())
    loose = extreme_eigenvalues(problem, problem.size, tol=1e-3, solver="lanczos")
    tight = extreme_eigenvalues(problem, problem.size, tol=1e-10, solver="lanczos")

    # The stopping test bounds the Ritz residual estimate, which equals the true residual up to
    # rounding while the basis stays orthonormal; 1.01 allows for that rounding.
    assert bool((loose.residuals <= 1.01 * 1e-3 * scale).all())
    assert loose.n_matvecs < tight.n_matvecs


def test_lanczos_exact_when_space_exhausted() -> None:
    diagonal = torch.tensor([-3.0, -1.0, 0.5, 2.0, 4.0, 7.0], dtype=torch.float64)
    result = extreme_eigenvalues(lambda v: diagonal * v, 6, k=3, tol=1e-12, solver="lanczos")
    torch.testing.assert_close(result.eigenvalues, diagonal, atol=1e-12, rtol=0)


def test_lanczos_solver_rejects_bad_arguments() -> None:
    def identity(vector: torch.Tensor) -> torch.Tensor:
        return vector

    with pytest.raises(ValueError, match="tol=0 is invalid for solver='lanczos'"):
        extreme_eigenvalues(identity, 8, tol=0.0, solver="lanczos")
    with pytest.raises(ValueError, match="solver='power' is invalid"):
        extreme_eigenvalues(identity, 8, solver="power")
    with pytest.raises(RuntimeError, match="did not reach its tolerance"):
        spectrum = torch.linspace(-1.0, 1.0, 200, dtype=torch.float64)
        extreme_eigenvalues(
            lambda v: spectrum * v, 200, tol=1e-12, solver="lanczos", max_iterations=5
        )


class _CubeWithoutDoubleBackward(torch.autograd.Function):
    """x³ whose backward is not differentiable, with a forward-mode rule for torch.func."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad_output

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * tangent


def test_auto_method_falls_back_to_fwd_rev() -> None:
    # Double backward returns H v = 0 for this function without raising, so auto must notice.
    def loss_fn(params, inputs, labels):
        return _CubeWithoutDoubleBackward.apply(params["x"]).sum()

    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    problem = HessianProblem(loss_fn, {"x": x}, torch.zeros(1), torch.zeros(1), method="auto")
    vector = torch.tensor([0.5, 1.0], dtype=torch.float64)

    assert problem.method == "fwd_rev"
    torch.testing.assert_close(problem.hvp(vector), 6 * x * vector, atol=ROUNDING, rtol=0)


def test_eigenthings_path_matches_dense(tiny_mlp) -> None:
    pytest.importorskip("hessian_eigenthings", reason="hessian-eigenthings is in the bench extra")
    model, tokens, labels, hessian = tiny_mlp
    eigenvalues = torch.linalg.eigvalsh(hessian)
    problem = hessian_problem(model, tokens, labels)
    operator = eigenthings_operator(model, tokens, labels)

    vector = torch.randn(problem.size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(operator.matvec(vector), hessian @ vector, atol=ROUNDING, rtol=0)

    scale = float(eigenvalues.abs().max())
    for end, expected in (("largest", eigenvalues[-1]), ("smallest", eigenvalues[0])):
        steps = eigenthings_fewest_steps(operator, end, 1e-9 * scale, problem.hvp, max_steps=50)
        result = eigenthings_end(operator, end, steps)
        assert result["value"] == pytest.approx(float(expected), abs=1e-9 * scale)
        assert residual(problem.hvp, result["value"], result["vector"]) <= 1e-9 * scale
