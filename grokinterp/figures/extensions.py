"""Figures beyond arXiv 2505.15624: the transformer, saddles, Fourier sparsity and rare tokens.

* ``ext1_transformer_methods``: the paper's embedding methods (Adam-LR and the adaptive ratio it
  derives but does not run) on a one-layer transformer, which the paper names as its main gap.
* ``ext2_saddles``: the smallest Hessian eigenvalue over training next to the grok step, the
  saddle points the bilinear coupling of E and W is argued to create.
* ``ext3_fourier_sparsity``: how concentrated the embedding's Fourier spectrum becomes over
  training, for the embedding MLP and the transformer.
* ``ext4_rare_token_norms``: per-token embedding norms under a skewed split, where rare tokens
  receive few gradient updates while weight decay shrinks them every step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from grokinterp.analysis.dynamics import read_token_history
from grokinterp.checkpoint import read_manifest, read_metrics
from grokinterp.figure_plots import Curve, Panel, plot_panels, plot_saddles, plot_token_norms
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
    transformer_config,
)
from grokinterp.figures.measures import fourier_measure
from grokinterp.figures.paper import (
    METHODS,
    count_checkpoints,
    curvature_series,
    method_conditions,
    task_title,
)
from grokinterp.figures.series import (
    SeedBand,
    checkpoint_series,
    grok_steps,
    metric_band,
    series_band,
    stack_over_seeds,
)
from grokinterp.tasks import all_pairs, make_split, split_statistics
from grokinterp.training.config import config_from_dict

# The transformer preset trains with AdamW (decoupled weight decay 1.0), so its methods are named
# after it. Their colours match those of the Adam methods in the MLP figures.
TRANSFORMER_METHODS = {
    "AdamW": ((), METHOD_COLORS["Adam"]),
    "AdamW-LR": (("optim.embed_lr_ratio=10",), METHOD_COLORS["Adam-LR"]),
    "adaptive": (("optim.lr_ratio=adaptive",), METHOD_COLORS["adaptive"]),
}


def _transformer_conditions(scale: FigureScale) -> Conditions:
    return {
        f"transformer/{method}": over_seeds(transformer_config(scale, *overrides), scale)
        for method, (overrides, _) in TRANSFORMER_METHODS.items()
    }


def _lr_ratio_band(run_dirs: list[Path]) -> SeedBand:
    """Read c = η_E / η_W at each evaluation from the learning rates logged in metrics.jsonl."""
    steps, ratios = [], []
    for run_dir in run_dirs:
        rows = read_metrics(run_dir)
        steps.append([row["step"] for row in rows])
        ratios.append([row["lr_embed"] / row["lr_rest"] for row in rows])
    return stack_over_seeds(steps, ratios)


@register(
    "ext1_transformer_methods",
    "AdamW vs AdamW-LR vs the adaptive ratio on a one-layer transformer",
    "extension",
    _transformer_conditions,
)
def _ext1(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    accuracy, ratio_curves, marks, data = [], [], [], {}
    for method, (_, color) in TRANSFORMER_METHODS.items():
        run_dirs = runs[f"transformer/{method}"]
        curves, data[method] = accuracy_curves(run_dirs, method, color)
        accuracy += curves
        marks += test_grok_mark(run_dirs, color, method)
        ratio = _lr_ratio_band(run_dirs)
        data[method]["embed_lr_ratio"] = ratio.as_dict()
        ratio_curves.append(band_curve(ratio, method, color))
    p = transformer_config(scale).task.p
    panels = [
        Panel(title=f"Accuracy, {task_title('add', p)}", curves=accuracy, marks=marks,
              ylim=(-0.02, 1.02)),
        Panel(title="Embedding learning-rate ratio c = η_E / η_W", curves=ratio_curves,
              marks=marks, yscale="log", ylabel="c (log scale)"),
    ]
    figure = plot_panels(
        panels,
        suptitle="Embedding learning-rate methods on a one-layer transformer (tiny-transformer: "
                 "full batch, AdamW,\nweight decay 1.0; adaptive c = (σ_max(E)/σ_max(W))·(f_W/f_E), "
                 "W = W_V)",
        xlabel=STEP_LABEL, ylabel=ACCURACY_LABEL, n_seeds=scale.seeds,
        legend_loc="center right",
    )
    return FigureOutput(figure, data)


def _ext2_conditions(scale: FigureScale) -> Conditions:
    return method_conditions(scale, ("add",), METHODS)


BLOCK_COLORS = {"E": "tab:green", "W": "tab:purple", "E+W": "tab:brown"}


@register(
    "ext2_saddles",
    "Smallest and largest Hessian eigenvalues and saddle verdicts over training",
    "extension",
    _ext2_conditions,
)
def _ext2(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    n_checkpoints = 3 * count_checkpoints(runs.values(), scale.max_checkpoints)
    series: dict[str, dict[str, list]] = {}
    with tqdm(total=n_checkpoints, desc="ext2 Hessian", unit="checkpoint",
              disable=not progress) as bar:
        for method in METHODS:
            series[method] = {block: curvature_series(runs[f"add/{method}"], block, scale, bar)
                              for block in BLOCK_COLORS}

    panels, data, marks, accuracy = [], {}, [], []
    verdict_steps, verdicts, verdict_labels = [], [], []
    for method in METHODS:
        run_dirs = runs[f"add/{method}"]
        color = METHOD_COLORS[method]
        marks += test_grok_mark(run_dirs, color, method)
        test = metric_band(run_dirs, "test_acc")
        accuracy.append(band_curve(test, f"{method}, test accuracy", color))
        curves = []
        for block, block_color in BLOCK_COLORS.items():
            block_series = series[method][block]
            low = series_band(block_series, "lambda_min")
            high = series_band(block_series, "lambda_max")
            curves.append(band_curve(high, f"λ_max({block})", block_color))
            curves.append(band_curve(low, f"λ_min({block}) bound θ_min", block_color,
                                     linestyle="--"))
            data[f"{method}/{block}"] = {
                "lambda_min": low.as_dict(), "lambda_max": high.as_dict(),
                "residual_min": series_band(block_series, "residual_min").as_dict(),
                "grad_norm": series_band(block_series, "grad_norm").as_dict(),
                "verdicts": [[row["verdict"] for row in rows] for rows in block_series],
            }
        for seed, rows in enumerate(series[method]["E+W"]):
            verdict_steps.append([row["step"] for row in rows])
            verdicts.append([row["verdict"] for row in rows])
            verdict_labels.append(f"{method}, E+W, seed {seed}")
        panels.append(Panel(title=f"{method}: extreme eigenvalues per block", curves=curves,
                            yscale="symlog", ylabel="Hessian eigenvalue (symlog)"))
        data[f"{method}/grok"] = grok_steps(run_dirs).as_dict()

    figure = plot_saddles(
        panels, verdict_steps, verdicts, verdict_labels, accuracy, marks,
        suptitle=f"Curvature of the training loss over E, W and E+W, {task_title('add', scale.p)}"
                 f"\n(λ_min bound: smallest Ritz value after {scale.lanczos_steps} Lanczos steps, "
                 "≥ λ_min; saddle: θ_min < −10⁻³·max|θ| with θ_max > 10⁻³·max|θ|)",
        n_seeds=scale.seeds,
    )
    return FigureOutput(figure, data)


def _ext3_conditions(scale: FigureScale) -> Conditions:
    mlp = method_conditions(scale, ("add",), METHODS)
    return {**{f"mlp/{key.split('/')[1]}": value for key, value in mlp.items()},
            **_transformer_conditions(scale)}


@register(
    "ext3_fourier_sparsity",
    "Sparsity of the embedding's Fourier spectrum over training, MLP and transformer",
    "extension",
    _ext3_conditions,
)
def _ext3(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    models = {
        "embedding MLP": {m: (runs[f"mlp/{m}"], METHOD_COLORS[m]) for m in METHODS},
        "transformer": {m: (runs[f"transformer/{m}"], color)
                        for m, (_, color) in TRANSFORMER_METHODS.items()},
    }
    n_runs = sum(len(d) for d in runs.values())
    series: dict[str, dict[str, list]] = {}
    with tqdm(total=n_runs, desc="ext3 Fourier", unit="run", disable=not progress) as bar:
        for model, methods in models.items():
            series[model] = {}
            for method, (run_dirs, _) in methods.items():
                series[model][method] = [
                    checkpoint_series(d, "fourier", {"energy_fraction": 0.95}, fourier_measure())
                    for d in run_dirs
                ]
                bar.update(len(run_dirs))

    panels, data = [], {}
    for quantity, ylabel in (("gini", "Gini coefficient of the energy"),
                             ("n_key_frequencies", "frequencies holding 95 % of the energy")):
        for model, methods in models.items():
            curves, marks = [], []
            for method, (run_dirs, color) in methods.items():
                band = series_band(series[model][method], quantity)
                data[f"{model}/{method}/{quantity}"] = band.as_dict()
                curves.append(band_curve(band, method, color))
                marks += test_grok_mark(run_dirs, color, method)
            panels.append(Panel(title=model, curves=curves, marks=marks, ylabel=ylabel))
    figure = plot_panels(
        panels,
        suptitle="How concentrated the embedding's Fourier spectrum is over training "
                 "(non-constant frequencies)\nGini 1 = one frequency, 0 = all equal",
        xlabel=STEP_LABEL, ylabel="", n_seeds=scale.seeds, legend_loc="best",
    )
    return FigureOutput(figure, data)


RARE_FRACTION = 0.1


def _ext4_conditions(scale: FigureScale) -> Conditions:
    cfg = mlp_config(scale, "task.split=skewed", f"train.batch_size={scale.small_batch_size}")
    return {"skewed": over_seeds(cfg, scale)}


@register(
    "ext4_rare_token_norms",
    "Per-token embedding norms over training under a skewed split, rare tokens highlighted",
    "extension",
    _ext4_conditions,
)
def _ext4(scale: FigureScale, runs: RunDirs, progress: bool) -> FigureOutput:
    run_dirs = runs["skewed"]
    group_steps: dict[str, list] = {"rarest 10 %": [], "favoured": [], "other": []}
    group_values: dict[str, list] = {name: [] for name in group_steps}
    per_seed: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        task = config_from_dict(read_manifest(run_dir)["config"]).task
        counts = split_statistics(task, all_pairs(task), make_split(task)).train_counts.numpy()
        # The step-0 row is written before any update, when no row norm has been measured yet.
        history = read_token_history(run_dir)
        measured = history.steps > 0
        steps = history.steps[measured].numpy()
        norms = history.embed_norm[measured, : task.p].numpy()
        n_rare = max(2, round(RARE_FRACTION * task.p))
        rare = np.zeros(task.p, dtype=bool)
        rare[np.argsort(counts, kind="stable")[:n_rare]] = True
        favoured = np.arange(task.p) < task.n_favoured
        groups = {"rarest 10 %": rare, "favoured": favoured & ~rare, "other": ~favoured & ~rare}
        for name, mask in groups.items():
            group_steps[name].append(steps)
            group_values[name].append(norms[:, mask].mean(axis=1) if mask.any()
                                      else np.full(len(steps), np.nan))
        per_seed.append({"steps": steps, "norms": norms, "counts": counts, "rare": rare,
                         "favoured": favoured})

    colors = {"rarest 10 %": "tab:red", "favoured": "tab:olive", "other": "tab:blue"}
    group_curves: list[Curve] = []
    data: dict[str, Any] = {"runs": [Path(d).name for d in run_dirs],
                            "grok": grok_steps(run_dirs).as_dict()}
    for name in group_steps:
        band = stack_over_seeds(group_steps[name], group_values[name])
        group_curves.append(band_curve(band, name, colors[name]))
        data[f"mean_norm/{name}"] = band.as_dict()
    first = per_seed[0]
    data["seed0"] = {"train_counts": first["counts"].tolist(),
                     "rare_tokens": np.flatnonzero(first["rare"]).tolist(),
                     "final_norms": first["norms"][-1].tolist()}
    marks = test_grok_mark(run_dirs, "black", "test")
    accuracy, data["accuracy"] = accuracy_curves(run_dirs, "skewed split", "tab:blue")
    figure = plot_token_norms(
        first["steps"], first["norms"], first["counts"], first["rare"], group_curves,
        np.concatenate([s["counts"] for s in per_seed]),
        np.concatenate([s["norms"][-1] for s in per_seed]),
        np.concatenate([s["rare"] for s in per_seed]),
        accuracy,
        marks,
        suptitle=f"Embedding row norms ‖e_i‖ under a skewed split, {task_title('add', scale.p)}"
                 f"\n(batch {scale.small_batch_size}, Adam, lr 0.01, weight decay 0.001; "
                 "favoured: the operand values the split over-represents)",
        n_seeds=scale.seeds,
    )
    return FigureOutput(figure, data)

