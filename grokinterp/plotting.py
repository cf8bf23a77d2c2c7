"""Matplotlib figures from analysis results. Nothing here computes an analysis.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot's global state, so
figures can be made in threads, notebooks and scripts alike; :func:`save_figure` writes one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from grokinterp.checkpoint import atomic_path


def save_figure(figure: Figure, path: Path, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG to ``path`` (atomically) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def mark_grok_steps(axis, grok: Mapping[str, int | None]) -> None:
    """Draw vertical lines at the train and test grok steps, where they exist."""
    styles = {"train_step": ("tab:blue", "train acc ≥ 0.99"), "test_step": ("tab:red", "test acc ≥ 0.99")}
    for key, (color, label) in styles.items():
        step = grok.get(key)
        if step is not None:
            axis.axvline(step, color=color, linestyle=":", linewidth=1.2, label=f"{label} (step {step})")


def plot_training_curves(
    metrics: Sequence[Mapping[str, Any]], grok: Mapping[str, int | None], title: str
) -> Figure:
    """Accuracy and loss on the train and test sets against the step, grok steps marked."""
    steps = np.array([row["step"] for row in metrics])
    figure = Figure(figsize=(11, 4))
    accuracy_axis, loss_axis = figure.subplots(1, 2)

    accuracy_axis.plot(steps, [row["train_acc"] for row in metrics], label="train", color="tab:blue")
    accuracy_axis.plot(steps, [row["test_acc"] for row in metrics], label="test", color="tab:red")
    accuracy_axis.set_ylim(-0.02, 1.02)
    accuracy_axis.set_xlabel("step")
    accuracy_axis.set_ylabel("accuracy (fraction correct)")
    accuracy_axis.set_title("Accuracy")
    mark_grok_steps(accuracy_axis, grok)
    accuracy_axis.legend(loc="lower right", fontsize=8)

    loss_axis.plot(steps, [row["train_loss"] for row in metrics], label="train", color="tab:blue")
    loss_axis.plot(steps, [row["test_loss"] for row in metrics], label="test", color="tab:red")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("cross-entropy loss (nats, log scale)")
    loss_axis.set_title("Loss")
    mark_grok_steps(loss_axis, grok)
    loss_axis.legend(loc="upper right", fontsize=8)

    figure.suptitle(title)
    return figure


def plot_spectrum(
    spectrum: Sequence[float], key_frequencies: Sequence[int], title: str, ylabel: str
) -> Figure:
    """Bar plot of a Fourier spectrum over frequencies 0..p//2 with key frequencies highlighted."""
    values = np.asarray(spectrum, dtype=float)
    frequencies = np.arange(len(values))
    colors = ["tab:red" if k in set(key_frequencies) else "tab:gray" for k in frequencies]
    figure = Figure(figsize=(9, 3.5))
    axis = figure.subplots()
    axis.bar(frequencies, values, color=colors, width=0.8)
    axis.set_xlabel("frequency k (cycles over the p residues)")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    if key_frequencies:
        key_patch = Patch(color="tab:red", label=f"key frequencies {list(key_frequencies)}")
        axis.legend(handles=[key_patch], loc="upper right", fontsize=8)
    return figure


# ---------------------------------------------------------------------------------------------
# Report figures: coupling, neurons, Hessian, token dynamics and trajectories


def plot_singular_values(
    values: Mapping[str, Sequence[float]], rank_rtol: float, title: str
) -> Figure:
    """Singular values of several matrices, largest first, on a log scale.

    A dotted line in each matrix's colour marks ``rank_rtol · σ_max``: the values above it count
    towards the numerical rank.
    """
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    for (name, singular), color in zip(values.items(), ("tab:blue", "tab:orange", "tab:green", "tab:purple"), strict=False):
        singular = np.asarray(singular, dtype=float)
        rank = int((singular > rank_rtol * singular[0]).sum()) if singular.size and singular[0] > 0 else 0
        positive = np.where(singular > 0, singular, np.nan)
        axis.plot(np.arange(1, len(singular) + 1), positive, color=color, label=f"{name} (rank {rank})")
        if singular.size and singular[0] > 0:
            axis.axhline(rank_rtol * singular[0], color=color, linestyle=":", linewidth=1)
    axis.set_yscale("log")
    axis.set_xlabel("index i (largest first)")
    axis.set_ylabel("singular value σ_i")
    axis.set_title(title)
    axis.legend(loc="upper right", fontsize=8)
    return figure


def plot_neuron_frequencies(
    cluster_sizes: Mapping[int, int],
    n_unclustered: int,
    best_fractions: Sequence[float],
    n_frequencies: int,
    threshold: float,
    key_frequencies: Sequence[int],
    title: str,
) -> Figure:
    """Neurons per frequency cluster (left) and each neuron's best explained variance (right)."""
    figure = Figure(figsize=(11, 3.8))
    count_axis, share_axis = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})

    frequencies = np.arange(1, n_frequencies + 1)
    counts = np.array([cluster_sizes.get(int(k), 0) for k in frequencies])
    keys = set(int(k) for k in key_frequencies)
    colors = ["tab:red" if k in keys else "tab:gray" for k in frequencies]
    count_axis.bar(frequencies, counts, color=colors, width=0.8)
    count_axis.set_xlabel("frequency k of the neuron's cluster")
    count_axis.set_ylabel("neurons")
    count_axis.set_title(f"Neuron clusters (≥ {threshold:.0%} of variance); {n_unclustered} unclustered")
    if keys:
        key_patch = Patch(color="tab:red", label=f"key frequencies {sorted(keys)}")
        count_axis.legend(handles=[key_patch], loc="upper right", fontsize=8)

    share_axis.hist(np.asarray(best_fractions, dtype=float), bins=np.linspace(0, 1, 21), color="tab:blue")
    share_axis.axvline(threshold, color="black", linestyle=":", linewidth=1, label=f"threshold {threshold:g}")
    share_axis.set_xlabel("variance share of the neuron's best frequency")
    share_axis.set_ylabel("neurons")
    share_axis.set_title("Best single-frequency share")
    share_axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    return figure


def plot_hessian_eigenvalues(
    blocks: Mapping[str, Sequence[float]], taus: Mapping[str, float], title: str
) -> Figure:
    """Computed extreme eigenvalues of each Hessian block as labelled bars, one panel per block.

    The y axis is symmetric-logarithmic, linear within [-τ, τ] (the grey band, where
    eigenvalues count as flat in the saddle verdict), so eigenvalues of very different sizes
    and both signs share a panel. Bars below -τ are red.
    """
    count = max(1, len(blocks))
    figure = Figure(figsize=(4.6 * count, 4.2))
    axes = np.atleast_1d(figure.subplots(1, count))
    for axis, (label, values) in zip(axes, blocks.items(), strict=False):
        values = np.asarray(values, dtype=float)
        tau = float(taus.get(label) or 0.0)
        scale = float(np.max(np.abs(values))) if values.size else 1.0
        colors = ["tab:red" if value < -tau else "tab:blue" for value in values]
        positions = np.arange(len(values))
        axis.bar(positions, values, color=colors, width=0.6)
        axis.set_yscale("symlog", linthresh=max(tau, 1e-9 * scale, 1e-30))
        axis.set_ylim(-1.5 * scale, 1.5 * scale)
        if tau:
            axis.axhspan(-tau, tau, color="0.88", zorder=0)
        axis.axhline(0, color="black", linewidth=0.8)
        for position, value in zip(positions, values, strict=True):
            axis.annotate(
                f"{value:.3g}",
                (position, value),
                xytext=(0, 3 if value >= 0 else -10),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
        axis.set_xticks(positions)
        axis.set_xticklabels([f"λ{i + 1}" for i in positions], fontsize=8)
        axis.set_title(f"block {label} (τ = {tau:.2g})", fontsize=10)
    axes[0].set_ylabel("eigenvalue (symlog; grey: |λ| ≤ τ)")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_token_dynamics(
    steps: Sequence[int],
    embed_norm: np.ndarray,
    final_counts: Sequence[int],
    candidates: Sequence[int],
    stagnant: Sequence[int],
    title: str,
) -> Figure:
    """Row norms of E over training (left) and final norm against update frequency (right).

    ``embed_norm`` is [step, vocab]; only the ``candidates`` columns are drawn, with the
    stagnant tokens in red.
    """
    steps = np.asarray(steps)
    embed_norm = np.asarray(embed_norm, dtype=float)
    stagnant_set = set(int(token) for token in stagnant)
    figure = Figure(figsize=(11, 4))
    norm_axis, count_axis = figure.subplots(1, 2)

    # Row norms are first recorded after the first training step, so step 0 is left out.
    recorded = steps > 0
    for token in candidates:
        is_stagnant = int(token) in stagnant_set
        norm_axis.plot(
            steps[recorded],
            embed_norm[recorded, token],
            color="tab:red" if is_stagnant else "0.6",
            linewidth=1.2 if is_stagnant else 0.5,
            alpha=1.0 if is_stagnant else 0.6,
        )
    median = np.median(embed_norm[:, list(candidates)], axis=1)
    norm_axis.plot(steps[recorded], median[recorded], color="black", linewidth=1.5, label="median")
    norm_axis.set_xlabel("step")
    norm_axis.set_ylabel("‖e_i‖ (row norm of W_E)")
    norm_axis.set_title("Embedding row norms (red: stagnant)")
    norm_axis.legend(loc="best", fontsize=8)

    # Counts divided by the step give an axis in [0, 1] that reads the same for every run length.
    frequency = np.asarray(final_counts, dtype=float) / max(int(steps[-1]), 1)
    columns = np.asarray(candidates)
    colors = ["tab:red" if int(token) in stagnant_set else "tab:blue" for token in columns]
    count_axis.scatter(frequency[columns], embed_norm[-1, columns], c=colors, s=12)
    count_axis.set_xlim(-0.03, 1.03)
    count_axis.set_xlabel(f"update frequency (appearances per step, steps 1–{int(steps[-1])})")
    count_axis.set_ylabel("final ‖e_i‖")
    count_axis.set_title(f"Norm against update frequency ({len(stagnant_set)} stagnant)")
    figure.suptitle(title)
    return figure


def plot_gradient_heatmaps(gradients: Mapping[int, np.ndarray], title: str) -> Figure:
    """Heat maps of ∇_E L at several steps: one row per token, one column per embedding unit.

    Each panel has its own symmetric colour range, because gradient sizes change by orders of
    magnitude during training. The range ends at the 99th percentile of |∇|, so the few large
    rows of the op and "=" tokens (present in every batch) do not wash out the operand rows.
    Rows of tokens absent from the batch are exactly 0 (white).
    """
    count = max(1, len(gradients))
    figure = Figure(figsize=(3.4 * count + 0.8, 4.8), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, count))
    for axis, (step, gradient) in zip(axes, gradients.items(), strict=False):
        gradient = np.asarray(gradient, dtype=float)
        limit = float(np.percentile(np.abs(gradient), 99)) or float(np.max(np.abs(gradient))) or 1.0
        image = axis.imshow(gradient, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        empty = int((np.abs(gradient).sum(axis=1) == 0).sum())
        axis.set_title(f"step {step} ({empty} empty rows)", fontsize=9)
        axis.set_xlabel("embedding unit")
        figure.colorbar(image, ax=axis, fraction=0.08, pad=0.02)
    axes[0].set_ylabel("token id")
    figure.suptitle(title)
    return figure


def plot_trajectory(
    points: Sequence[Mapping[str, Any]], grok: Mapping[str, int | None], title: str
) -> Figure:
    """Six panels over the analysed checkpoints, grok steps marked.

    Accuracy; λ_max of E, W and all parameters with |λ_min| (log scale); ranks of E, W and EW;
    σ_max(E)/σ_max(W); Gini of the W_E and W_U spectra; the restricted, excluded and full
    training losses where they exist. A missing value (None) is left out of its line.
    """
    steps = np.array([point["step"] for point in points])

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if point.get(key) is None else point[key] for point in points], dtype=float)

    figure = Figure(figsize=(14, 7.5))
    axes = figure.subplots(2, 3).ravel()

    axes[0].plot(steps, series("train_acc"), "o-", color="tab:blue", label="train")
    axes[0].plot(steps, series("test_acc"), "o-", color="tab:red", label="test")
    axes[0].set_ylabel("accuracy (fraction correct)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_title("Accuracy")

    for key, color, label in (
        ("lambda_max_E", "tab:green", "λ_max(E)"),
        ("lambda_max_W", "tab:orange", "λ_max(W)"),
        ("lambda_max", "black", "λ_max(all)"),
    ):
        axes[1].plot(steps, series(key), "o-", color=color, label=label)
    axes[1].plot(steps, np.abs(np.minimum(series("lambda_min"), 0)), "s--", color="tab:purple", label="|λ_min(all)| (if < 0)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("Hessian eigenvalue (log)")
    axes[1].set_title("Curvature")

    for key, color, label in (("rank_E", "tab:green", "rank E"), ("rank_W", "tab:orange", "rank W"), ("rank_EW", "tab:blue", "rank EW")):
        axes[2].plot(steps, series(key), "o-", color=color, label=label)
    axes[2].set_ylabel("numerical rank")
    axes[2].set_title("Ranks")

    axes[3].plot(steps, series("sigma_ratio"), "o-", color="tab:blue", label="σ_max(E)/σ_max(W)")
    axes[3].set_yscale("log")
    axes[3].set_ylabel("ratio (log)")
    axes[3].set_title("Singular-value ratio")

    axes[4].plot(steps, series("embed_gini"), "o-", color="tab:green", label="W_E spectrum")
    axes[4].plot(steps, series("unembed_gini"), "o-", color="tab:purple", label="W_U spectrum")
    axes[4].set_ylim(-0.02, 1.02)
    axes[4].set_ylabel("Gini of the Fourier energies")
    axes[4].set_title("Fourier sparsity")

    axes[5].plot(steps, series("grid_train_loss"), "o-", color="black", label="full")
    axes[5].plot(steps, series("restricted_loss"), "o-", color="tab:blue", label="restricted")
    axes[5].plot(steps, series("excluded_loss"), "o-", color="tab:red", label="excluded")
    axes[5].set_yscale("log")
    axes[5].set_ylabel("train loss (nats, log)")
    axes[5].set_title("Progress measures (addition)")

    for index, axis in enumerate(axes):
        mark_grok_steps(axis, grok)
        axis.set_xlabel("step")
        handles, labels = axis.get_legend_handles_labels()
        # The grok-step lines are the same in every panel, so only the first panel lists them.
        if index > 0:
            kept = [(h, label) for h, label in zip(handles, labels, strict=True) if "acc ≥" not in label]
            handles, labels = [h for h, _ in kept], [label for _, label in kept]
        if handles:
            axis.legend(handles, labels, loc="best", fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_method_comparison(
    bands: Mapping[str, Any],
    test_medians: Mapping[str, float | None],
    threshold: float,
    title: str,
    max_step: float | None = None,
) -> Figure:
    """Train and test accuracy against the step per method: mean line, min–max band over seeds.

    ``bands`` maps a method to an object with ``steps`` and ``{train,test}_{mean,low,high}``
    arrays (:class:`grokinterp.compare.AccuracyBand`); ``test_medians`` gives each method's
    median step to test accuracy ≥ ``threshold`` (None when not reached), drawn as a dotted line.
    ``max_step`` cuts the step axis, so that one long run does not squeeze the others.
    """
    figure = Figure(figsize=(12, 4.2))
    train_axis, test_axis = figure.subplots(1, 2, sharey=True)
    colors = [f"C{i}" for i in range(10)]
    for index, (label, band) in enumerate(bands.items()):
        color = colors[index % len(colors)]
        train_axis.plot(band.steps, band.train_mean, color=color, label=label)
        train_axis.fill_between(band.steps, band.train_low, band.train_high, color=color, alpha=0.15)
        test_axis.plot(band.steps, band.test_mean, color=color, label=label)
        test_axis.fill_between(band.steps, band.test_low, band.test_high, color=color, alpha=0.15)
        median = test_medians.get(label)
        if median is not None:
            test_axis.axvline(median, color=color, linestyle=":", linewidth=1.2)

    for axis, split in ((train_axis, "train"), (test_axis, "test")):
        axis.axhline(threshold, color="gray", linewidth=0.8, linestyle="--")
        axis.set_ylim(-0.02, 1.02)
        if max_step is not None:
            axis.set_xlim(0, max_step)
        axis.set_xlabel("step" if max_step is None else f"step (axis cut at {max_step:.0f})")
        axis.set_title(f"{split} accuracy: mean and min–max over seeds")
    train_axis.set_ylabel("accuracy (fraction correct)")
    # Train accuracy saturates early, so the train panel's lower right is free for the legend.
    train_axis.legend(loc="lower right", fontsize=8, title="dotted (test panel): median grok step")
    figure.suptitle(title)
    return figure
