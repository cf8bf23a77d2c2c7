"""The figures of "Mechanistic Insights into Grokking from the Embedding Layer" (arXiv 2505.15624).

Each figure is registered with the runs it needs; see :mod:`grokinterp.figures.core` for the
scales. The paper shows one run per setting; these figures show the mean and the min–max range
over seeds. Settings the paper does not state are ours and are named where they are set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from grokinterp.analysis.coupling import batch_token_probability
from grokinterp.analysis.dynamics import read_embed_gradients
from grokinterp.figure_plots import (
    Panel,
    plot_embedding_spectra,
    plot_gradient_heatmaps,
    plot_lr_ratio_sweep,
    plot_panels,
    plot_token_frequencies,
)
from grokinterp.figures.common import (
    ACCURACY_LABEL,
    METHOD_COLORS,
    STEP_LABEL,
    accuracy_curves,
    band_curve,
    test_grok_mark,
)
from grokinterp.figures.core import (
    Conditions,
    FigureOutput,
    FigureScale,
    RunDirs,
    mlp_config,
    over_seeds,
    register,
)
from grokinterp.figures.measures import (
    absent_token_fraction,
    curvature_measure,
    fourier_measure,
    rank_measure,
)
from grokinterp.figures.series import (
    SeedBand,
    checkpoint_series,
    grok_steps,
    select_checkpoints,
    series_band,
    stack_over_seeds,
)
from grokinterp.tasks import all_pairs, make_split, split_statistics
from grokinterp.training.token_stats import HEATMAP_STEPS

OPERATIONS = ("add", "multiply", "divide", "square_sum")
OPERATION_TITLES = {"add": "a + b", "multiply": "a · b", "divide": "a / b", "square_sum": "a² + b²"}
LR_RATIOS = (0.5, 1.0, 4.0, 8.0, 10.0, 16.0, 24.0, 32.0)
SPLITS = ("random", "uniform", "skewed")
SPLIT_COLORS = {"random": "tab:blue", "uniform": "tab:green", "skewed": "tab:red"}

# The two optimisers compared throughout: Adam, and Adam with 10x the embedding's learning rate.
METHODS = {"Adam": (), "Adam-LR": ("optim.embed_lr_ratio=10",)}


def task_title(op: str, p: int) -> str:
    return f"({OPERATION_TITLES[op]}) mod {p}"


def method_conditions(scale: FigureScale, ops: tuple[str, ...], methods: dict) -> Conditions:
    """Map ``"{op}/{method}"`` to the seeds of the embedding MLP at lr 0.01 and the main batch."""
    return {
        f"{op}/{method}": over_seeds(mlp_config(scale, f"task.op={op}", *overrides), scale)
        for op in ops
        for method, overrides in methods.items()
    }


# ---------------------------------------------------------------------------------------------
# Fig. 2: the embedding causes the delay


def _fig02_conditions(scale: FigureScale) -> Conditions:
    conditions = {}
    for op in ("add", "multiply"):
        conditions[f"{op}/embedding"] = over_seeds(mlp_config(scale, f"task.op={op}"), scale)
        conditions[f"{op}/no embedding"] = over_seeds(
            mlp_config(scale, f"task.op={op}", "model.input_mode=numeric"), scale
        )
    return conditions


@register(
    "fig02_embedding_vs_noembedding",
    "Train and test accuracy of the MLP with a learned embedding and fed the numbers",
    "arXiv 2505.15624 Fig. 2",
    _fig02_conditions,
)
def _fig02(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    panels, data = [], {}
    for op in ("add", "multiply"):
        curves, marks = [], []
        for model, color in (("embedding", "tab:blue"), ("no embedding", "tab:gray")):
            run_dirs = runs[f"{op}/{model}"]
            model_curves, data[f"{op}/{model}"] = accuracy_curves(run_dirs, model, color)
            curves += model_curves
            marks += test_grok_mark(run_dirs, color, model)
        panels.append(Panel(title=task_title(op, scale.p), curves=curves, marks=marks,
                            ylim=(-0.02, 1.02)))
    figure = plot_panels(
        panels,
        suptitle="MLP with a learned embedding vs the same MLP fed the token ids as numbers\n"
                 f"(Adam, lr 0.01, batch {scale.batch_size}, 30 % of pairs for training)",
        xlabel=STEP_LABEL, ylabel=ACCURACY_LABEL, n_seeds=scale.seeds, legend_loc="center right",
    )
    return FigureOutput(figure, data)


# ---------------------------------------------------------------------------------------------
# Fig. 3: rows of the embedding gradient are empty for tokens absent from the batch


def _fig03_batch_sizes(scale: FigureScale) -> tuple[int, int]:
    return (scale.small_batch_size, scale.batch_size)


def _fig03_conditions(scale: FigureScale) -> Conditions:
    steps = ",".join(str(s) for s in HEATMAP_STEPS)
    return {
        f"batch {batch}": over_seeds(
            mlp_config(scale, f"train.batch_size={batch}", f"train.record_grad_steps={steps}",
                       f"train.steps={HEATMAP_STEPS[-1]}", f"train.eval_every={HEATMAP_STEPS[-1]}"),
            scale,
        )
        for batch in _fig03_batch_sizes(scale)
    }


@register(
    "fig03_embedding_gradients",
    "Embedding gradient ∇_E L at steps 1, 12, 40 and 68, and the share of absent tokens",
    "arXiv 2505.15624 Fig. 3",
    _fig03_conditions,
)
def _fig03(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    gradients, row_labels, absent, theory, data = [], [], [], [], {}
    colors = ("tab:red", "tab:blue")
    for batch, color in zip(_fig03_batch_sizes(scale), colors, strict=True):
        label = f"batch {batch}"
        run_dirs = runs[label]
        per_seed = [read_embed_gradients(d, HEATMAP_STEPS) for d in run_dirs]
        gradients.append([per_seed[0][step].double().numpy() for step in HEATMAP_STEPS])
        row_labels.append(label)
        fractions = [[absent_token_fraction(seed[step], scale.p) for step in HEATMAP_STEPS]
                     for seed in per_seed]
        band = stack_over_seeds([HEATMAP_STEPS] * len(per_seed), fractions)
        absent.append(band_curve(band, f"{label}: measured", color))
        expected = 1.0 - batch_token_probability(scale.p, batch)
        theory.append((f"{label}: (1 − 1/p)^(2B) = {expected:.3g}", expected, color))
        data[label] = {"absent_fraction": band.as_dict(), "expected_absent_fraction": expected,
                       "runs": [Path(d).name for d in run_dirs],
                       "row_norms_seed0": {str(step): per_seed[0][step].norm(dim=1).tolist()
                                           for step in HEATMAP_STEPS}}
    figure = plot_gradient_heatmaps(
        gradients, row_labels, HEATMAP_STEPS, absent, theory, scale.p,
        suptitle="Embedding gradient ∇_E L early in training: rows of tokens absent from the "
                 f"batch are zero\n(addition mod {scale.p}, Adam, lr 0.01; dashed line: last "
                 "operand row)",
        n_seeds=scale.seeds,
    )
    return FigureOutput(figure, data)


# ---------------------------------------------------------------------------------------------
# Fig. 4: split strategies and batch sizes at lr 0.001


def _fig04_conditions(scale: FigureScale) -> Conditions:
    conditions = {}
    for op in OPERATIONS:
        for batch in scale.split_batch_sizes:
            for split in SPLITS:
                # Only curves are drawn, so the run keeps its final checkpoint only.
                cfg = mlp_config(scale, f"task.op={op}", f"task.split={split}", "optim.lr=0.001",
                                 f"train.batch_size={batch}", f"train.steps={scale.slow_steps}",
                                 f"train.checkpoint_every={scale.slow_steps}")
                conditions[f"{op}/b{batch}/{split}"] = over_seeds(cfg, scale)
    return conditions


@register(
    "fig04_split_strategies",
    "Test accuracy for random, uniform and skewed splits at three batch sizes, lr 0.001",
    "arXiv 2505.15624 Fig. 4",
    _fig04_conditions,
)
def _fig04(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    panels, data = [], {}
    for op in OPERATIONS:
        for batch in scale.split_batch_sizes:
            curves, marks = [], []
            for split in SPLITS:
                key = f"{op}/b{batch}/{split}"
                color = SPLIT_COLORS[split]
                split_curves, data[key] = accuracy_curves(runs[key], split, color, with_train=False)
                curves += split_curves
                marks += test_grok_mark(runs[key], color, split)
            panels.append(Panel(title=f"{task_title(op, scale.p)}, batch {batch}", curves=curves,
                                marks=marks, ylim=(-0.02, 1.02)))
    figure = plot_panels(
        panels,
        suptitle="Train/test split strategies: test accuracy by operation (rows) and batch size "
                 "(columns)\n(Adam, lr 0.001; dotted lines: mean step of test accuracy ≥ 0.99)",
        xlabel=STEP_LABEL, ylabel="test accuracy", n_seeds=scale.seeds,
        ncols=len(scale.split_batch_sizes), legend="first", panel_size=(4.6, 3.0),
    )
    return FigureOutput(figure, data)


# ---------------------------------------------------------------------------------------------
# Fig. 5: the embedding learning-rate ratio c


def _fig05_conditions(scale: FigureScale) -> Conditions:
    return {
        f"c={c:g}": over_seeds(mlp_config(scale, f"optim.embed_lr_ratio={c}"), scale)
        for c in LR_RATIOS
    }


@register(
    "fig05_lr_ratio_sweep",
    "Test accuracy and steps to grok for each embedding learning-rate ratio c",
    "arXiv 2505.15624 Fig. 5",
    _fig05_conditions,
)
def _fig05(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = colormaps["viridis"]
    curves, means, lows, highs, reached, data = [], [], [], [], [], {}
    for index, c in enumerate(LR_RATIOS):
        run_dirs = runs[f"c={c:g}"]
        color = to_hex(palette(index / (len(LR_RATIOS) - 1)))
        condition_curves, data[f"c={c:g}"] = accuracy_curves(run_dirs, f"{c:g}", color,
                                                             with_train=False)
        curves.append(dataclasses.replace(condition_curves[0], label=f"{c:g}"))
        summary = grok_steps(run_dirs).as_dict()["test"]
        means.append(summary["mean"])
        lows.append(summary["min"])
        highs.append(summary["max"])
        reached.append(f"{summary['n_reached']}/{summary['n_seeds']}")
    figure = plot_lr_ratio_sweep(
        curves, LR_RATIOS, means, lows, highs, reached, scale.steps,
        suptitle=f"Embedding learning-rate ratio c = η_E / η_W on {task_title('add', scale.p)}\n"
                 f"(Adam, lr η_W = 0.01, batch {scale.batch_size})",
        n_seeds=scale.seeds,
    )
    return FigureOutput(figure, data)


# ---------------------------------------------------------------------------------------------
# Fig. 6: Adam vs Adam-LR on four operations


def _fig06_conditions(scale: FigureScale) -> Conditions:
    return method_conditions(scale, OPERATIONS, METHODS)


@register(
    "fig06_adam_vs_adamlr",
    "Adam vs Adam-LR (embedding lr ×10) on four operations, lr 0.01, batch 512",
    "arXiv 2505.15624 Fig. 6",
    _fig06_conditions,
)
def _fig06(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    panels, data = [], {}
    for op in OPERATIONS:
        curves, marks = [], []
        for method in METHODS:
            key = f"{op}/{method}"
            color = METHOD_COLORS[method]
            method_curves, data[key] = accuracy_curves(runs[key], method, color)
            curves += method_curves
            marks += test_grok_mark(runs[key], color, method)
        panels.append(Panel(title=task_title(op, scale.p), curves=curves, marks=marks,
                            ylim=(-0.02, 1.02)))
    figure = plot_panels(
        panels,
        suptitle="Adam vs Adam-LR (embedding learning rate ×10)\n"
                 f"(lr 0.01, batch {scale.batch_size}, weight decay 0.001)",
        xlabel=STEP_LABEL, ylabel=ACCURACY_LABEL, n_seeds=scale.seeds, legend_loc="center right",
    )
    return FigureOutput(figure, data)


# ---------------------------------------------------------------------------------------------
# Fig. 7: largest Hessian eigenvalue of the E and W blocks


def curvature_series(
    run_dirs: list[Path], block: str, scale: FigureScale, bar: Any
) -> list[list[dict[str, Any]]]:
    """Measure, per seed, the curvature of ``block`` at up to ``scale.max_checkpoints`` checkpoints."""
    settings = {"block": block, "lanczos_steps": scale.lanczos_steps, "relative_tau": 1e-3,
                "dtype": "float32", "max_checkpoints": scale.max_checkpoints}
    return [
        checkpoint_series(d, f"curvature-{block}", settings,
                          curvature_measure(block, scale.lanczos_steps), scale.max_checkpoints, bar)
        for d in run_dirs
    ]


def count_checkpoints(run_dirs: Iterable[list[Path]], max_checkpoints: int) -> int:
    """Count the checkpoints that the curvature figures analyse in these runs."""
    return sum(len(select_checkpoints(d, max_checkpoints)) for dirs in run_dirs for d in dirs)


def _fig07_conditions(scale: FigureScale) -> Conditions:
    return method_conditions(scale, ("add",), METHODS)


@register(
    "fig07_hessian_lambda_max",
    "Largest Hessian eigenvalue of the embedding block E and the first-layer block W",
    "arXiv 2505.15624 Fig. 7",
    _fig07_conditions,
)
def _fig07(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    n_checkpoints = 2 * count_checkpoints(runs.values(), scale.max_checkpoints)
    bands: dict[str, dict[str, SeedBand]] = {}
    data: dict[str, Any] = {}
    with tqdm(total=n_checkpoints, desc="fig07 Hessian", unit="checkpoint",
              disable=not progress) as bar:
        for method in METHODS:
            run_dirs = runs[f"add/{method}"]
            bands[method] = {}
            for block in ("E", "W"):
                series = curvature_series(run_dirs, block, scale, bar)
                bands[method][block] = series_band(series, "lambda_max")
                data[f"{method}/{block}"] = {
                    "lambda_max": bands[method][block].as_dict(),
                    "residual_max": series_band(series, "residual_max").as_dict(),
                }
            data[f"{method}/grok"] = grok_steps(run_dirs).as_dict()

    panels = []
    block_colors = {"E": "tab:green", "W": "tab:purple"}
    for method in METHODS:
        marks = test_grok_mark(runs[f"add/{method}"], METHOD_COLORS[method], method)
        curves = [band_curve(bands[method][block], f"λ_max({block})", block_colors[block])
                  for block in ("E", "W")]
        panels.append(Panel(title=method, curves=curves, marks=marks, yscale="log",
                            ylabel="λ_max of the block's Hessian (log scale)"))
    ratio_curves, ratio_marks = [], []
    for method in METHODS:
        ratio = SeedBand(steps=bands[method]["W"].steps,
                         values=bands[method]["W"].values / bands[method]["E"].values)
        ratio_curves.append(band_curve(ratio, method, METHOD_COLORS[method]))
        ratio_marks += test_grok_mark(runs[f"add/{method}"], METHOD_COLORS[method], method)
        data[f"{method}/ratio_W_over_E"] = ratio.as_dict()
    panels.append(Panel(title="λ_max(W) / λ_max(E)", curves=ratio_curves, marks=ratio_marks,
                        yscale="log", ylabel="ratio (log scale)"))
    figure = plot_panels(
        panels,
        suptitle=f"Largest Hessian eigenvalue of the training loss over E and over W, "
                 f"{task_title('add', scale.p)}\n(Lanczos, {scale.lanczos_steps} Hessian-vector "
                 "products per block and checkpoint; other parameters fixed)",
        xlabel=STEP_LABEL, ylabel="λ_max", n_seeds=scale.seeds, ncols=3,
    )
    return FigureOutput(figure, data)


# ---------------------------------------------------------------------------------------------
# Fig. 8: token frequencies of each split strategy


@register(
    "fig08_token_frequencies",
    "How often each operand value occurs in the train and test sets of each split strategy",
    "arXiv 2505.15624 Fig. 8",
    lambda scale: {},
)
def _fig08(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    panels, data = [], {}
    tokens = np.arange(scale.p)
    for split in SPLITS:
        train_counts, test_counts = [], []
        for seed in range(scale.seeds):
            task = mlp_config(scale, f"task.split={split}", f"task.data_seed={seed}").task
            stats = split_statistics(task, all_pairs(task), make_split(task))
            train_counts.append(stats.train_counts.tolist())
            test_counts.append(stats.test_counts.tolist())
        train = stack_over_seeds([tokens] * scale.seeds, train_counts)
        test = stack_over_seeds([tokens] * scale.seeds, test_counts)
        panels.append((f"{split} split", [band_curve(train, "train", "tab:blue"),
                                          band_curve(test, "test", "tab:red")]))
        data[split] = {
            "train_counts": train.as_dict(), "test_counts": test.as_dict(),
            "train_min": float(train.values.min()), "train_max": float(train.values.max()),
            "train_std_over_tokens": float(train.values.std(axis=1).mean()),
        }
    figure = plot_token_frequencies(
        panels, scale.p,
        suptitle=f"Operand-value frequencies in the training (30 %) and test (20 %) sets, "
                 f"p = {scale.p}",
        n_seeds=scale.seeds,
    )
    return FigureOutput(figure, data)


# ---------------------------------------------------------------------------------------------
# Fig. 10: ranks of E, W and EW


RANK_METHODS = {**METHODS, "Adam, wd 0.005": ("optim.weight_decay=0.005",)}


def _fig10_conditions(scale: FigureScale) -> Conditions:
    return method_conditions(scale, ("add",), RANK_METHODS)


@register(
    "fig10_ranks",
    "Numerical and effective ranks of E, W and EW over training",
    "arXiv 2505.15624 Fig. 10",
    _fig10_conditions,
)
def _fig10(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    settings = {"rtol": 1e-2}
    series = {}
    n_runs = sum(len(d) for d in runs.values())
    with tqdm(total=n_runs, desc="fig10 ranks", unit="run", disable=not progress) as bar:
        for method in RANK_METHODS:
            series[method] = [checkpoint_series(d, "ranks", settings, rank_measure(1e-2))
                              for d in runs[f"add/{method}"]]
            bar.update(len(series[method]))

    panels, data = [], {}
    for quantity, ylabel in (("rank", "numerical rank (σ > 0.01 σ_max)"),
                             ("effective_rank", "effective rank exp H(σ/Σσ)")):
        for matrix in ("E", "W", "EW"):
            curves, marks = [], []
            for method in RANK_METHODS:
                band = series_band(series[method], matrix, quantity)
                data[f"{method}/{matrix}/{quantity}"] = band.as_dict()
                curves.append(band_curve(band, method, METHOD_COLORS[method]))
                marks += test_grok_mark(runs[f"add/{method}"], METHOD_COLORS[method], method)
            panels.append(Panel(title=f"{quantity.replace('_', ' ')} of {matrix}", curves=curves,
                                marks=marks, ylabel=ylabel))
    for method in RANK_METHODS:
        data[f"{method}/grok"] = grok_steps(runs[f"add/{method}"]).as_dict()
    figure = plot_panels(
        panels,
        suptitle=f"Ranks of the embedding E, the first layer W and their product EW, "
                 f"{task_title('add', scale.p)}\n(W as a d_embed × (n_ctx·d_mlp) matrix; lr 0.01, "
                 f"batch {scale.batch_size})",
        xlabel=STEP_LABEL, ylabel="rank", n_seeds=scale.seeds, ncols=3, legend="first",
        panel_size=(4.8, 3.3),
    )
    return FigureOutput(figure, data)


# ---------------------------------------------------------------------------------------------
# Fig. 11: the embedding's Fourier spectrum


FIG11_CONDITIONS = {
    "add/Adam": ("add", ()),
    "divide/Adam": ("divide", ()),
    "add/Adam-LR": ("add", ("optim.embed_lr_ratio=10",)),
}


def _fig11_conditions(scale: FigureScale) -> Conditions:
    return {
        key: over_seeds(mlp_config(scale, f"task.op={op}", *overrides), scale)
        for key, (op, overrides) in FIG11_CONDITIONS.items()
    }


@register(
    "fig11_embedding_dft",
    "Fourier spectrum of the trained embedding: addition, division, addition with Adam-LR",
    "arXiv 2505.15624 Fig. 11",
    _fig11_conditions,
)
def _fig11(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    columns, data = [], {}
    for key, (op, _) in FIG11_CONDITIONS.items():
        results = [checkpoint_series(d, "fourier", {"energy_fraction": 0.95}, fourier_measure(),
                                     last_only=True)[0] for d in runs[key]]
        sorted_amplitudes = []
        for result in results:
            amplitudes = np.sort(np.asarray(result["spectrum"][1:]))[::-1]
            sorted_amplitudes.append(amplitudes / np.linalg.norm(amplitudes))
        ranks = np.arange(1, len(sorted_amplitudes[0]) + 1)
        band = stack_over_seeds([ranks] * len(results), sorted_amplitudes)
        gini = np.array([r["gini"] for r in results])
        n_keys = np.array([r["n_key_frequencies"] for r in results])
        method = key.split("/")[1]
        columns.append({
            "title": f"{task_title(op, scale.p)}, {method}, step {results[0]['step']}",
            "spectrum": results[0]["spectrum"],
            "key_frequencies": results[0]["key_frequencies"],
            "sorted": band_curve(band, "sorted spectrum", METHOD_COLORS[method]),
            "summary": f"Gini {gini.mean():.2f} (min {gini.min():.2f}, max {gini.max():.2f}); "
                       f"key frequencies {n_keys.mean():.1f} ({n_keys.min()}–{n_keys.max()})",
        })
        data[key] = {
            "per_seed": results, "sorted_normalised": band.as_dict(),
            "gini_mean": float(gini.mean()), "n_key_frequencies_mean": float(n_keys.mean()),
            "runs": [Path(d).name for d in runs[key]],
        }
    figure = plot_embedding_spectra(
        columns,
        suptitle="DFT of the embedding along the vocabulary axis (L2 norm over the embedding "
                 "dimension) at the end of training",
        n_seeds=scale.seeds,
    )
    return FigureOutput(figure, data)
