"""Benchmark training several seeds as one batched model against one ``train`` run per seed.

Run from the repository root::

    python -m benchmarks.batched_seeds [--quick] [--threads N] [--members 8] [--steps 300]

Setup: for each preset (``tiny`` and ``paper-mlp``) the script trains ``--members`` seeds
(``with_seed(cfg, 0..n-1)``) for ``--steps`` steps with early stopping off, three ways:

- ``sequential``: one ``grokinterp.training.loop.train`` call per seed;
- ``batched_matmul``: ``train_batched(..., first_layer="matmul")``, which repeats the operations
  of ``HookedMLP`` and gives the same weights as ``sequential``;
- ``batched_table``: ``train_batched(..., first_layer="table")``, the lookup-table first layer and
  fused Adam, equal to ``sequential`` to float32 rounding.

All three write full run directories (metrics, token statistics, checkpoints) into a temporary
directory that is removed after each repetition. The candidates alternate within each
repetition (forward, then reversed order), and the speed-up is the median over repetitions of
the ratio of paired wall times. A step-level comparison of the stacked forms (``torch.bmm`` on
stacked weights against ``torch.func.vmap`` over ``functional_call`` of one ``HookedMLP``) records
why the batched model uses ``bmm``. ``exact_batching_bound`` divides the machine's measured
``torch.mm`` peak by the rate of matrix-product operations that the sequential runs achieved: no
batching that keeps their multiply-adds can beat that ratio. The script prints one JSON object,
including the load average before and after, because the machine may be shared.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._common import (
    at_least,
    base_parser,
    emit_json,
    environment_info,
    matmul_flops,
    measure_matmul_peak,
    set_threads,
)
from grokinterp.experiments import with_seed
from grokinterp.models import build_model
from grokinterp.tasks import all_pairs, split_sizes
from grokinterp.training.batched import StackedMLP, check_batchable, train_batched
from grokinterp.training.components import build_optimizer
from grokinterp.training.config import RunConfig, apply_overrides
from grokinterp.training.loop import RunResult, train
from grokinterp.training.presets import get_preset

TARGET_SPEEDUP = 3.0


def benchmark_config(preset: str, steps: int) -> RunConfig:
    """Return ``preset`` with ``steps`` steps and early stopping off, so every side does equal work."""
    return apply_overrides(get_preset(preset), [f"train.steps={steps}", "train.early_stop_evals=0"])


def run_candidates(
    cfg: RunConfig, members: int, scratch: Path
) -> dict[str, Callable[[], list[RunResult]]]:
    """Return the three ways to train ``members`` seeds of ``cfg``, each into fresh directories."""
    configs = [with_seed(cfg, seed) for seed in range(members)]

    def fresh(name: str) -> list[Path]:
        root = scratch / name
        shutil.rmtree(root, ignore_errors=True)
        return [root / f"seed-{seed}" for seed in range(members)]

    def sequential() -> list[RunResult]:
        return [
            train(config, run_dir, progress=False)
            for config, run_dir in zip(configs, fresh("sequential"), strict=True)
        ]

    def batched(first_layer: str) -> Callable[[], list[RunResult]]:
        def run() -> list[RunResult]:
            return train_batched(
                configs, fresh(f"batched-{first_layer}"), progress=False, first_layer=first_layer
            )

        return run

    return {
        "sequential": sequential,
        "batched_matmul": batched("matmul"),
        "batched_table": batched("table"),
    }


def weight_difference(ours: list[RunResult], theirs: list[RunResult]) -> dict[str, float]:
    """Compare corresponding final weights of two sets of runs.

    Returns:
        ``max_abs``: the largest absolute difference of any weight; ``relative_l2``: the largest
        over runs of ``‖ours − theirs‖ / ‖theirs‖``, all parameters of a run taken as one vector.
    """
    max_abs, relative = 0.0, 0.0
    for our_run, their_run in zip(ours, theirs, strict=True):
        their_params = dict(their_run.model.named_parameters())
        squared_difference, squared_norm = 0.0, 0.0
        for name, param in our_run.model.named_parameters():
            difference = (param - their_params[name]).detach().double()
            max_abs = max(max_abs, float(difference.abs().max()))
            squared_difference += float(difference.pow(2).sum())
            squared_norm += float(their_params[name].detach().double().pow(2).sum())
        relative = max(relative, (squared_difference / squared_norm) ** 0.5)
    return {"max_abs": max_abs, "relative_l2": relative}


def time_runs(
    candidates: dict[str, Callable[[], list[RunResult]]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[RunResult]]]:
    """Time whole trainings, alternating the order of candidates between repetitions."""
    names = list(candidates)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, list[RunResult]] = {}
    for repetition in range(repeats):
        for name in names if repetition % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            results[name] = candidates[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds, results


def step_forms(cfg: RunConfig, members: int, steps: int, repeats: int) -> dict[str, object]:
    """Time one training step of the stacked model in three forms, without the loop around it.

    ``bmm`` is :class:`StackedMLP` with the matmul first layer, ``table`` with the lookup table,
    and ``vmap`` maps ``functional_call`` of one ``HookedMLP`` over the stacked parameters. All
    three take the same Adam step on the same batches.
    """
    models = [build_model(with_seed(cfg, seed).model, cfg.task) for seed in range(members)]
    pairs = all_pairs(cfg.task)
    position_tokens = [pairs.tokens[:, pos] for pos in range(cfg.task.n_ctx)]
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(len(pairs.tokens), (members, cfg.train.batch_size), generator=generator)
    tokens, labels = pairs.tokens[index], pairs.labels[index]

    def make_step(stacked: StackedMLP, forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
        optimizer = build_optimizer(stacked.params, cfg.optim)

        def step() -> None:
            logits = forward()
            losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
            loss = losses.view(members, -1).mean(dim=1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    matmul = StackedMLP(models, position_tokens, first_layer="matmul")
    table = StackedMLP(models, position_tokens, first_layer="table")
    mapped = StackedMLP(models, position_tokens, first_layer="matmul")
    template = models[0]

    def member_logits(params: dict[str, torch.Tensor], member_tokens: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(template, params, (member_tokens,))

    vmapped = torch.func.vmap(member_logits)
    candidates = {
        "bmm": make_step(matmul, lambda: matmul(tokens)),
        "table": make_step(table, lambda: table(tokens)),
        "vmap": make_step(mapped, lambda: vmapped(dict(mapped.params.named_parameters()), tokens)),
    }

    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for step in candidates.values():
        step()
    for repetition in range(repeats):
        for name in list(candidates) if repetition % 2 == 0 else list(candidates)[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                candidates[name]()
            seconds[name].append((time.perf_counter() - start) / steps)
    return {
        "steps_per_repetition": steps,
        "ms_per_step": {name: [1e3 * s for s in values] for name, values in seconds.items()},
        "median_ms_per_step": {
            name: 1e3 * statistics.median(values) for name, values in seconds.items()
        },
    }


def run_matmul_flops(cfg: RunConfig) -> dict[str, int]:
    """Count the matrix-product operations of one ``train`` run of the MLP config ``cfg``.

    The count assumes that the run takes all ``train.steps`` steps, as with early stopping off
    (``benchmark_config``); a run that stops early does less.

    A training step multiplies ``batch`` inputs through ``W_in`` ``[d_in, d_mlp]`` and ``W_U``
    ``[d_mlp, p]``. Its backward pass forms the gradients of both weights and of the hidden
    activations, and with a learned embedding also the gradient of the first layer's input. Each
    evaluation (at step 0, every ``eval_every`` steps and at the last step) runs the forward
    pass over the training and test pairs. Element-wise work (ReLU, softmax, Adam) is left out,
    so the counts are lower bounds on the arithmetic.

    Returns:
        ``{"train_step": ..., "evaluation": ..., "run": ...}``, in floating-point operations as
        :func:`matmul_flops` counts them.
    """
    model, task, train_cfg = cfg.model, cfg.task, cfg.train
    if model.kind != "mlp":
        raise ValueError(
            f"model.kind={model.kind!r} is invalid here: the count covers the MLP only, so pass an "
            "MLP config."
        )
    d_in = {"embed": task.n_ctx * model.d_embed, "onehot": task.n_ctx * task.d_vocab}.get(
        model.input_mode, task.n_ctx
    )
    n_train, n_test = split_sizes(task)
    batch = train_cfg.batch_size or n_train

    def forward(rows: int) -> int:
        return matmul_flops(rows, d_in, model.d_mlp) + matmul_flops(rows, model.d_mlp, task.p)

    input_gradient = matmul_flops(batch, model.d_mlp, d_in) if model.input_mode == "embed" else 0
    train_step = (
        2 * forward(batch)  # the forward pass and the two weight gradients
        + matmul_flops(batch, task.p, model.d_mlp)  # the gradient of the hidden activations
        + input_gradient
    )
    steps = train_cfg.steps
    evaluations = 1 + steps // train_cfg.eval_every + (1 if steps % train_cfg.eval_every else 0)
    evaluation = forward(n_train + n_test)
    return {
        "train_step": train_step,
        "evaluation": evaluation,
        "run": steps * train_step + evaluations * evaluation,
    }


def exact_batching_bound(
    cfg: RunConfig, members: int, sequential_seconds: float, peak_gflops: float
) -> dict[str, float]:
    """Bound the speed-up of any batching that performs the multiply-adds of sequential runs.

    Batched runs that reproduce sequential runs bit for bit do the same matrix products, so
    they take at least ``flops / peak`` seconds, where ``peak`` is the measured ``torch.mm``
    throughput of large square products. Dividing the sequential time by that gives the largest
    speed-up over sequential runs that this machine allows, however little overhead the batched
    runs have.
    """
    flops = members * run_matmul_flops(cfg)["run"]
    achieved = flops / sequential_seconds / 1e9
    return {
        "matmul_gflop": flops / 1e9,
        "sequential_gflops_per_s": achieved,
        "matmul_peak_gflops_per_s": peak_gflops,
        "sequential_fraction_of_peak": achieved / peak_gflops,
        "max_exact_speedup": peak_gflops / achieved,
    }


def summarize(seconds: dict[str, list[float]]) -> dict[str, object]:
    """Return median wall times and the median paired speed-up of each batched candidate."""
    speedups = {}
    for name in seconds:
        if name == "sequential":
            continue
        ratios = [s / b for s, b in zip(seconds["sequential"], seconds[name], strict=True)]
        speedups[name] = {
            "median_of_paired_ratios": statistics.median(ratios),
            "per_repetition": ratios,
            "target": TARGET_SPEEDUP,
            "target_met": statistics.median(ratios) >= TARGET_SPEEDUP,
        }
    return {
        "seconds": seconds,
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "speedup_over_sequential": speedups,
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--members",
        type=at_least(1),
        default=8,
        help="seeds per batch (default: 8)",
    )
    parser.add_argument(
        "--steps",
        type=at_least(1),
        default=None,
        help="training steps per run (default: 300, quick: 20)",
    )
    parser.add_argument(
        "--repeats", type=at_least(1), default=None, help="timed repetitions (default: 5, quick: 1)"
    )
    parser.add_argument(
        "--presets", nargs="+", default=["tiny", "paper-mlp"], help="presets to benchmark"
    )
    args = parser.parse_args()
    set_threads(args.threads)
    steps = args.steps if args.steps is not None else (20 if args.quick else 300)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    for preset in args.presets:
        try:
            check_batchable(benchmark_config(preset, steps))
        except (ValueError, NotImplementedError) as error:
            parser.error(f"--presets {preset}: {error}")

    load_before = os.getloadavg()
    peak = measure_matmul_peak(repeats=3 if args.quick else 5)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="grokinterp-bench-") as scratch:
        for preset in args.presets:
            cfg = benchmark_config(preset, steps)
            candidates = run_candidates(cfg, args.members, Path(scratch) / preset)
            seconds, runs = time_runs(candidates, repeats)
            summary = summarize(seconds)
            results[preset] = {
                **summary,
                "exact_batching_bound": exact_batching_bound(
                    cfg,
                    args.members,
                    summary["median_seconds"]["sequential"],
                    peak["peak_gflops"],
                ),
                "weight_difference_to_sequential": {
                    name: weight_difference(runs[name], runs["sequential"])
                    for name in ("batched_matmul", "batched_table")
                },
                "step_forms": step_forms(
                    cfg, args.members, steps=5 if args.quick else 20, repeats=repeats
                ),
            }

    emit_json(
        {
            "benchmark": "batched_seeds",
            "setup": {
                "members": args.members,
                "steps": steps,
                "repetitions": repeats,
                "early_stopping": "off",
                "quick": args.quick,
            },
            "environment": environment_info(),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "matmul_peak": peak,
            "presets": results,
        }
    )


if __name__ == "__main__":
    main()
