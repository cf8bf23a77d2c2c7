"""Benchmark Hessian-vector products and extreme Hessian eigenvalues against hessian-eigenthings.

Run from the repository root (hessian-eigenthings comes with the ``bench`` extra)::

    python -m benchmarks.hessian_eigs [--quick] [--threads N] [--train-steps 200]

Models, in float32, with all parameters as one block and the run's training split as data:

- ``mlp``: the ``paper-mlp`` preset (p = 97, 325,769 parameters), trained for ``--train-steps``
  steps from init seed 0 with ``train``, so the point is neither a random init nor a minimum;
- ``transformer``: the ``nanda-transformer`` preset (p = 113) at initialisation.

Part 1, HVP methods: seconds per ``HessianProblem.hvp`` with ``method="fwd_rev"`` and
``"double_backward"``, alternating, on both models, and the relative difference of their results.

Part 2, extreme eigenvalues of the MLP's Hessian, to the same residual: each method must return
eigenpairs of λ_max and λ_min with ``‖H v − λ v‖ ≤ --rtol · |λ_max|`` (``‖v‖ = 1``), the residual
measured with one more product afterwards. The methods:

- ``grokinterp_lanczos``: ``extreme_eigenvalues(solver="lanczos")``, one Lanczos run for both
  ends, with the largest ``tol`` of a fixed schedule that meets the residual;
- ``grokinterp_arpack``: ``extreme_eigenvalues(solver="arpack")`` (scipy's ARPACK, one run per
  end), calibrated the same way;
- ``eigenthings_lanczos``: ``hessian_eigenthings.lanczos`` on its ``HessianOperator``
  (``which="LA"`` and ``"SA"``), with the fewest Lanczos steps that meet the residual, found
  from one long run's residual estimates and checked with the true residual.

Calibration is untimed, so each method is timed at its best setting; the timed runs alternate
between methods. Power iteration (``hessian_eigenthings.power_iteration_one``) is left out: in a
trial it needed 194 products for λ_min, against 20 Lanczos steps, and missed the residual. The
script prints one JSON object with seconds, products per run and the eigenvalues found.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._common import at_least, base_parser, emit_json, environment_info, set_threads
from grokinterp.analysis.hessian import HessianProblem, extreme_eigenvalues, model_loss_fn
from grokinterp.checkpoint import load_checkpoint, resolve_checkpoint
from grokinterp.models import answer_logits, build_model
from grokinterp.training.config import apply_overrides
from grokinterp.training.loop import prepare_data, train
from grokinterp.training.presets import get_preset

TOL_SCHEDULE = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6)
SEED = 0


# ---------------------------------------------------------------------------------------------
# Models and data


def trained_mlp(train_steps: int, scratch: Path) -> tuple[nn.Module, Tensor, Tensor]:
    """Train the paper MLP for ``train_steps`` steps; return it with its training pairs."""
    cfg = apply_overrides(
        get_preset("paper-mlp"), [f"train.steps={train_steps}", "train.early_stop_evals=0"]
    )
    run_dir = scratch / "mlp"
    shutil.rmtree(run_dir, ignore_errors=True)
    train(cfg, run_dir, progress=False)
    model = load_checkpoint(resolve_checkpoint(run_dir)).model
    data = prepare_data(cfg)
    return model, data.train_tokens, data.train_labels


def initial_transformer() -> tuple[nn.Module, Tensor, Tensor]:
    """Return the reference transformer at initialisation with its training pairs."""
    cfg = get_preset("nanda-transformer")
    data = prepare_data(cfg)
    return build_model(cfg.model, cfg.task), data.train_tokens, data.train_labels


# ---------------------------------------------------------------------------------------------
# The two libraries' operators


def hessian_problem(
    model: nn.Module, tokens: Tensor, labels: Tensor, method: str = "auto"
) -> HessianProblem:
    """Return grokinterp's Hessian of the mean cross-entropy over all of ``model``'s parameters."""
    params = dict(model.named_parameters())
    return HessianProblem(model_loss_fn(model), params, tokens, labels, method=method)


def eigenthings_operator(model: nn.Module, tokens: Tensor, labels: Tensor):
    """Return hessian-eigenthings' Hessian of the same loss, data as one full batch."""
    from hessian_eigenthings import HessianOperator

    def loss_fn(module: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        return F.cross_entropy(answer_logits(module, inputs), targets)

    return HessianOperator(model, [(tokens, labels)], loss_fn)


def residual(hvp: Callable[[Tensor], Tensor], value: float, vector: Tensor) -> float:
    """Return ``‖H v − λ v‖`` for the unit vector along ``vector``."""
    unit = vector.detach().to(torch.float64)
    unit = unit / torch.linalg.vector_norm(unit)
    product = hvp(unit).detach().to(torch.float64)
    return float(torch.linalg.vector_norm(product - value * unit))


# ---------------------------------------------------------------------------------------------
# Both ends of the spectrum by each method


def grokinterp_ends(problem: HessianProblem, solver: str, tol: float) -> dict[str, dict]:
    """Compute λ_max and λ_min with one call of ``extreme_eigenvalues``."""
    generator = torch.Generator().manual_seed(SEED)
    result = extreme_eigenvalues(
        problem, problem.size, k=1, which="both", tol=tol, generator=generator,
        return_eigenvectors=True, solver=solver,
    )
    # n_matvecs includes the product with the start vector and the two for the residuals that
    # extreme_eigenvalues reports, all part of the timed work.
    products = result.n_matvecs
    return {
        "smallest": {
            "value": result.eigenvalues[0].item(),
            "vector": result.eigenvectors[:, 0],
            "products": products,
        },
        "largest": {
            "value": result.eigenvalues[1].item(),
            "vector": result.eigenvectors[:, 1],
            "products": products,
        },
    }


def eigenthings_end(operator, end: str, steps: int) -> dict[str, object]:
    """Compute one end with ``hessian_eigenthings.lanczos`` in ``steps`` Lanczos steps."""
    from hessian_eigenthings import lanczos

    which = "LA" if end == "largest" else "SA"
    result = lanczos(operator, k=1, max_iter=steps, which=which, seed=SEED)
    return {"value": result.eigenvalues[0].item(), "vector": result.eigenvectors[0], "products": steps}


def eigenthings_fewest_steps(
    operator, end: str, target: float, hvp: Callable[[Tensor], Tensor], max_steps: int
) -> int:
    """Return the fewest steps for which ``eigenthings_end`` meets the residual ``target``.

    A Lanczos run of m steps from the start vector of ``lanczos(seed=SEED)`` is the first m steps
    of a longer run from it, so one run of ``max_steps`` gives the Ritz residual estimate
    ``β_m |s_m|`` for every m. The first m whose estimate meets the target is then checked with
    the true residual, and raised until the true residual meets it too.
    """
    from hessian_eigenthings import lanczos_tridiagonal

    generator = torch.Generator().manual_seed(SEED)
    start = torch.randn(operator.size, dtype=operator.dtype, generator=generator)
    run = lanczos_tridiagonal(operator, start, max_steps, reorthogonalize=True)
    alphas, betas = run.alphas.double(), run.betas.double()
    steps = run.iterations
    for m in range(1, run.iterations + 1):
        tridiagonal = torch.diag(alphas[:m])
        if m > 1:
            tridiagonal += torch.diag(betas[: m - 1], 1) + torch.diag(betas[: m - 1], -1)
        values, vectors = torch.linalg.eigh(tridiagonal)
        column = -1 if end == "largest" else 0
        beta = float(betas[m - 1]) if m - 1 < len(betas) else run.last_beta
        if beta * float(vectors[-1, column].abs()) <= target:
            steps = m
            break
    while steps <= max_steps:
        result = eigenthings_end(operator, end, steps)
        if residual(hvp, result["value"], result["vector"]) <= target:
            return steps
        steps += 1
    raise RuntimeError(f"hessian-eigenthings did not reach {target:.3g} in {max_steps} steps.")


def grokinterp_largest_tol(
    problem: HessianProblem, solver: str, target: float
) -> float:
    """Return the largest tolerance of ``TOL_SCHEDULE`` whose eigenpairs meet ``target``."""
    for tol in TOL_SCHEDULE:
        ends = grokinterp_ends(problem, solver, tol)
        if all(
            residual(problem.hvp, result["value"], result["vector"]) <= target
            for result in ends.values()
        ):
            return tol
    raise RuntimeError(f"no tolerance in {TOL_SCHEDULE} reached the residual {target:.3g}.")


# ---------------------------------------------------------------------------------------------
# Timing


def time_hvp_methods(
    model: nn.Module, tokens: Tensor, labels: Tensor, repeats: int, number: int
) -> dict[str, object]:
    """Time one HVP of each method, alternating; return seconds and the results' difference."""
    problems = {
        method: hessian_problem(model, tokens, labels, method)
        for method in ("fwd_rev", "double_backward")
    }
    generator = torch.Generator().manual_seed(SEED)
    vector = torch.randn(problems["fwd_rev"].size, generator=generator)
    products = {method: problem.hvp(vector) for method, problem in problems.items()}
    difference = torch.linalg.vector_norm(products["fwd_rev"] - products["double_backward"])
    scale = torch.linalg.vector_norm(products["double_backward"])

    seconds: dict[str, list[float]] = {method: [] for method in problems}
    for repetition in range(repeats):
        order = list(problems) if repetition % 2 == 0 else list(problems)[::-1]
        for method in order:
            start = time.perf_counter()
            for _ in range(number):
                problems[method].hvp(vector)
            seconds[method].append((time.perf_counter() - start) / number)
    medians = {method: statistics.median(values) for method, values in seconds.items()}
    return {
        "parameters": problems["fwd_rev"].size,
        "examples": len(labels),
        "seconds_per_hvp": seconds,
        "median_seconds_per_hvp": medians,
        "double_backward_speedup": statistics.median(
            fr / db
            for fr, db in zip(seconds["fwd_rev"], seconds["double_backward"], strict=True)
        ),
        "relative_difference": float(difference / scale),
        "auto_method": hessian_problem(model, tokens, labels).method,
    }


def compare_eigensolvers(
    model: nn.Module, tokens: Tensor, labels: Tensor, rtol: float, repeats: int, max_steps: int
) -> dict[str, object]:
    """Calibrate and time the eigensolvers on both ends of the spectrum."""
    problem = hessian_problem(model, tokens, labels)
    operator = eigenthings_operator(model, tokens, labels)

    # The residual target is relative to |λ_max|, taken from a tight reference run.
    reference = grokinterp_ends(problem, "lanczos", 1e-7)
    target = rtol * abs(reference["largest"]["value"])

    settings = {
        "grokinterp_lanczos": {"tol": grokinterp_largest_tol(problem, "lanczos", target)},
        "grokinterp_arpack": {"tol": grokinterp_largest_tol(problem, "arpack", target)},
        "eigenthings_lanczos": {
            end: eigenthings_fewest_steps(operator, end, target, problem.hvp, max_steps)
            for end in ("largest", "smallest")
        },
    }
    runs: dict[str, Callable[[], dict[str, dict]]] = {
        "grokinterp_lanczos": lambda: grokinterp_ends(
            problem, "lanczos", settings["grokinterp_lanczos"]["tol"]
        ),
        "grokinterp_arpack": lambda: grokinterp_ends(
            problem, "arpack", settings["grokinterp_arpack"]["tol"]
        ),
        "eigenthings_lanczos": lambda: {
            end: eigenthings_end(operator, end, settings["eigenthings_lanczos"][end])
            for end in ("largest", "smallest")
        },
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    found: dict[str, dict[str, dict]] = {}
    for repetition in range(repeats):
        for name in list(runs) if repetition % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            found[name] = runs[name]()
            seconds[name].append(time.perf_counter() - start)

    summary: dict[str, dict] = {}
    for name, ends in found.items():
        summary[name] = {
            end: {
                "value": result["value"],
                "residual": residual(problem.hvp, result["value"], result["vector"]),
            }
            for end, result in ends.items()
        }
        summary[name]["products"] = (
            ends["largest"]["products"]
            if name.startswith("grokinterp")
            else ends["largest"]["products"] + ends["smallest"]["products"]
        )
        summary[name]["residual_target_met"] = all(
            summary[name][end]["residual"] <= target for end in ("largest", "smallest")
        )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratios = {
        name: [
            theirs / ours
            for theirs, ours in zip(seconds[name], seconds["grokinterp_lanczos"], strict=True)
        ]
        for name in runs
        if name != "grokinterp_lanczos"
    }
    return {
        "parameters": problem.size,
        "examples": len(labels),
        "hvp_method": problem.method,
        "reference": {end: reference[end]["value"] for end in ("largest", "smallest")},
        "residual_target": target,
        "rtol": rtol,
        "settings": settings,
        "results": summary,
        "seconds": seconds,
        "median_seconds": medians,
        "grokinterp_lanczos_speedup_over": {
            name: statistics.median(values) for name, values in ratios.items()
        },
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--train-steps",
        type=at_least(1),
        default=None,
        help="MLP training steps (default: 200, quick: 20)",
    )
    parser.add_argument(
        "--rtol", type=float, default=1e-3, help="residual target relative to |λ_max| (1e-3)"
    )
    parser.add_argument(
        "--repeats", type=at_least(1), default=None, help="timed repetitions (default: 5, quick: 1)"
    )
    parser.add_argument(
        "--max-steps", type=at_least(1), default=200,
        help="most Lanczos steps tried for hessian-eigenthings (default: 200)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    train_steps = args.train_steps if args.train_steps is not None else (20 if args.quick else 200)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)

    load_before = os.getloadavg()
    # HookedTransformer.to() prints "Moving model to device" (transformer-lens 3.9); stdout is
    # kept for the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        with tempfile.TemporaryDirectory(prefix="grokinterp-bench-") as scratch:
            mlp, mlp_tokens, mlp_labels = trained_mlp(train_steps, Path(scratch))
        transformer, transformer_tokens, transformer_labels = initial_transformer()

    hvp = {
        "mlp": time_hvp_methods(mlp, mlp_tokens, mlp_labels, repeats, number=1 if args.quick else 3),
        "transformer": time_hvp_methods(
            transformer, transformer_tokens, transformer_labels, repeats, number=1
        ),
    }
    eigen = compare_eigensolvers(mlp, mlp_tokens, mlp_labels, args.rtol, repeats, args.max_steps)

    from importlib.metadata import version

    emit_json(
        {
            "benchmark": "hessian_eigs",
            "setup": {
                "mlp": f"paper-mlp after {train_steps} training steps, init seed 0",
                "transformer": "nanda-transformer at initialisation, init seed 0",
                "dtype": "float32",
                "block": "all parameters",
                "data": "the training split, as one batch",
                "repetitions": repeats,
                "quick": args.quick,
            },
            "environment": {
                **environment_info(),
                "hessian_eigenthings": version("hessian-eigenthings"),
                "scipy": version("scipy"),
            },
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "hvp_methods": hvp,
            "extreme_eigenvalues_mlp": eigen,
        }
    )


if __name__ == "__main__":
    main()
