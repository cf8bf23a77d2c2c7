"""Matplotlib figures of the figure set (``grokinterp figures``). Nothing here computes an analysis.

Like :mod:`grokinterp.plotting`, every function returns a ``matplotlib.figure.Figure`` built
without pyplot's global state; :func:`grokinterp.plotting.save_figure` writes one. Curves over
seeds are drawn as the mean with a shaded band from the minimum to the maximum over seeds. The
grok step of a condition is a dotted vertical line in the condition's colour, at the mean step
over the seeds that reached test accuracy 0.99.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

BAND_NOTE = "Lines: mean over {n} seed(s); shading: min–max over seeds."


@dataclass(frozen=True)
class Curve:
    """A mean curve over seeds with an optional min–max band."""

    label: str
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    color: str | None = None
    linestyle: str = "-"
    linewidth: float = 1.6


@dataclass(frozen=True)
class GrokMark:
    """A vertical line at a grok step."""

    step: float
    color: str
    label: str


@dataclass(frozen=True)
class Panel:
    """One axis of a :func:`plot_panels` grid."""

    title: str
    curves: Sequence[Curve]
    marks: Sequence[GrokMark] = field(default_factory=tuple)
    ylabel: str | None = None
    yscale: str = "linear"
    ylim: tuple[float, float] | None = None


def draw_curve(axis: Axes, curve: Curve) -> None:
    """Draw a curve's mean line and, when it has one, its min–max band."""
    (line,) = axis.plot(
        curve.steps, curve.mean, label=curve.label, color=curve.color,
        linestyle=curve.linestyle, linewidth=curve.linewidth,
    )
    if curve.low is not None and curve.high is not None:
        axis.fill_between(curve.steps, curve.low, curve.high, color=line.get_color(), alpha=0.18,
                          linewidth=0)


def draw_marks(axis: Axes, marks: Sequence[GrokMark]) -> None:
    for mark in marks:
        axis.axvline(mark.step, color=mark.color, linestyle=":", linewidth=1.3, label=mark.label)


def plot_panels(
    panels: Sequence[Panel],
    suptitle: str,
    xlabel: str,
    ylabel: str,
    n_seeds: int,
    ncols: int = 2,
    legend: str = "all",
    panel_size: tuple[float, float] = (5.2, 3.6),
    legend_loc: str = "best",
) -> Figure:
    """Draw a grid of panels of curves over training steps, with grok steps marked.

    Args:
        panels: the panels, filled row by row.
        suptitle: the figure title.
        xlabel: x-axis label of every panel.
        ylabel: y-axis label of panels that set none of their own.
        n_seeds: seeds behind each curve, stated in the caption.
        ncols: panels per row.
        legend: ``"all"`` (a legend in every panel) or ``"first"`` (only in the first).
        panel_size: width and height of one panel, inches.
        legend_loc: matplotlib legend location.
    """
    if legend not in ("all", "first"):
        raise ValueError(f"legend={legend!r} is invalid: use 'all' or 'first'.")
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    figure = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.9))
    axes = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel()
    for index, (axis, panel) in enumerate(zip(axes, panels, strict=False)):
        for curve in panel.curves:
            draw_curve(axis, curve)
        draw_marks(axis, panel.marks)
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(panel.ylabel or ylabel)
        axis.set_yscale(panel.yscale)
        if panel.ylim is not None:
            axis.set_ylim(*panel.ylim)
        axis.grid(alpha=0.25)
        if legend == "all" or index == 0:
            axis.legend(fontsize=7, loc=legend_loc)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(suptitle)
    figure.text(0.5, 0.005, BAND_NOTE.format(n=n_seeds), ha="center", va="bottom", fontsize=8,
                color="dimgray")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def plot_gradient_heatmaps(
    gradients: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    steps: Sequence[int],
    absent: Sequence[Curve],
    theory: Sequence[tuple[str, float, str]],
    p: int,
    suptitle: str,
    n_seeds: int,
) -> Figure:
    """Draw heat maps of ∇_E L (rows: tokens, columns: embedding dimensions) and absent tokens.

    Args:
        gradients: ``gradients[row][col]`` is the gradient ``[vocab, d_embed]`` of one setting
            (row) at ``steps[col]``, from one seed.
        row_labels: the setting of each row, e.g. ``"batch 64"``.
        steps: the training step of each column.
        absent: per setting, the fraction of operand tokens with an all-zero gradient row at the
            recorded steps, over seeds.
        theory: per setting, ``(label, expected fraction, colour)`` drawn as a horizontal line.
        p: number of operand tokens; rows 0..p−1 are operands, the rest op and "=" tokens.
        suptitle: the figure title.
        n_seeds: seeds behind the absent-token curves.
    """
    nrows, ncols = len(gradients), len(steps)
    figure = Figure(figsize=(3.0 * ncols + 4.2, 3.3 * nrows + 0.8))
    grid = figure.add_gridspec(nrows, ncols + 1, width_ratios=[1] * ncols + [1.5])
    for row, (row_gradients, row_label) in enumerate(zip(gradients, row_labels, strict=True)):
        for col, (gradient, step) in enumerate(zip(row_gradients, steps, strict=True)):
            axis = figure.add_subplot(grid[row, col])
            # The op and "=" tokens are in every example, so their rows would set the scale and
            # wash out the operand rows; the colour scale follows the operand rows only.
            limit = float(np.abs(gradient[:p]).max()) or 1.0
            image = axis.imshow(gradient, aspect="auto", cmap="RdBu_r", interpolation="nearest",
                                norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit))
            axis.axhline(p - 0.5, color="black", linewidth=0.6, linestyle="--")
            absent_rows = np.flatnonzero(np.abs(gradient[:p]).sum(axis=1) == 0)
            absent_count = len(absent_rows)
            (markers,) = axis.plot(np.full(absent_count, -0.03), absent_rows, marker=">",
                                   color="black", linestyle="", markersize=3, clip_on=False,
                                   transform=axis.get_yaxis_transform())
            markers.set_in_layout(False)
            axis.set_title(f"{row_label}, step {step}\n{absent_count}/{p} operand rows zero (▶)",
                           fontsize=9)
            axis.set_xlabel("embedding dimension")
            if col == 0:
                axis.set_ylabel("token id (operands, then op, =)")
            colorbar = figure.colorbar(image, ax=axis, fraction=0.05, pad=0.02)
            colorbar.ax.tick_params(labelsize=6)
            colorbar.set_label("∂L/∂E per entry (op, = rows clipped)", fontsize=6)

    axis = figure.add_subplot(grid[:, ncols])
    for curve in absent:
        draw_curve(axis, curve)
        axis.plot(curve.steps, curve.mean, "o", color=curve.color, markersize=4)
    for label, value, color in theory:
        axis.axhline(value, color=color, linestyle="--", linewidth=1, label=label)
    axis.set_xlabel("training step")
    axis.set_ylabel("fraction of operand tokens absent from the batch")
    axis.set_ylim(-0.02, max(0.5, max((float(np.nanmax(c.high if c.high is not None else c.mean))
                                       for c in absent), default=0.0) + 0.05))
    axis.set_title("Tokens with a zero gradient row", fontsize=10)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.25)
    figure.suptitle(suptitle)
    figure.text(0.5, 0.005, "Heat maps: one seed (seed 0), colour scale per panel. "
                + BAND_NOTE.format(n=n_seeds), ha="center", va="bottom", fontsize=8,
                color="dimgray")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def plot_lr_ratio_sweep(
    curves: Sequence[Curve],
    ratios: Sequence[float],
    grok_mean: Sequence[float | None],
    grok_low: Sequence[float | None],
    grok_high: Sequence[float | None],
    reached: Sequence[str],
    step_budget: int,
    suptitle: str,
    n_seeds: int,
) -> Figure:
    """Draw test accuracy for each embedding lr ratio c, and the steps to grok against c."""
    figure = Figure(figsize=(12, 4.4))
    curve_axis, grok_axis = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    for curve in curves:
        draw_curve(curve_axis, curve)
    curve_axis.set_xlabel("training step")
    curve_axis.set_ylabel("test accuracy (fraction correct)")
    curve_axis.set_ylim(-0.02, 1.02)
    curve_axis.set_title("Test accuracy for each c = η_E / η_W", fontsize=10)
    curve_axis.legend(fontsize=7, ncol=2, title="c", title_fontsize=8)
    curve_axis.grid(alpha=0.25)

    positions = np.arange(len(ratios))
    for position, mean, low, high, label, curve in zip(
        positions, grok_mean, grok_low, grok_high, reached, curves, strict=True
    ):
        if mean is None:
            grok_axis.scatter([position], [step_budget], marker="^", color=curve.color, s=50)
        else:
            grok_axis.errorbar([position], [mean], yerr=[[mean - low], [high - mean]], fmt="o",
                               color=curve.color, capsize=4)
        grok_axis.annotate(label, (position, mean if mean is not None else step_budget),
                           textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    grok_axis.axhline(step_budget, color="gray", linestyle="--", linewidth=1,
                      label=f"step budget ({step_budget}); ▲ = no seed reached 0.99")
    grok_axis.set_xticks(positions, [f"{c:g}" for c in ratios])
    grok_axis.set_xlabel("embedding lr ratio c = η_E / η_W")
    grok_axis.set_ylabel("steps to test accuracy ≥ 0.99")
    grok_axis.set_title("Steps to grok (mean, min–max over seeds that grokked)", fontsize=10)
    grok_axis.legend(fontsize=7, loc="lower right")
    grok_axis.grid(alpha=0.25)
    grok_axis.set_ylim(0, step_budget * 1.15)
    figure.suptitle(suptitle)
    figure.text(0.5, 0.005, BAND_NOTE.format(n=n_seeds) + " Labels: seeds that grokked.",
                ha="center", va="bottom", fontsize=8, color="dimgray")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def plot_token_frequencies(
    panels: Sequence[tuple[str, Sequence[Curve]]],
    p: int,
    suptitle: str,
    n_seeds: int,
) -> Figure:
    """Draw per-operand-value counts in the train and test sets, one panel per split strategy."""
    figure = Figure(figsize=(5.0 * len(panels), 3.8))
    axes = np.atleast_1d(figure.subplots(1, len(panels), sharey=True))
    for axis, (title, curves) in zip(axes, panels, strict=True):
        for curve in curves:
            draw_curve(axis, curve)
        axis.set_xlim(-0.5, p - 0.5)
        axis.set_xlabel("operand value (token id)")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.25)
        axis.legend(fontsize=7)
    axes[0].set_ylabel("occurrences as a or b (count)")
    figure.suptitle(suptitle)
    figure.text(0.5, 0.005, BAND_NOTE.format(n=n_seeds).replace("seed(s)", "data seed(s)"),
                ha="center", va="bottom", fontsize=8, color="dimgray")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


def plot_embedding_spectra(
    columns: Sequence[dict],
    suptitle: str,
    n_seeds: int,
) -> Figure:
    """Draw the embedding DFT per condition: seed 0's spectrum above, all seeds' sorted below.

    Each column is a dict with these keys:

    - ``title``: the column title.
    - ``spectrum``: amplitudes of frequencies 0..p//2 for seed 0.
    - ``key_frequencies``: the key frequencies of seed 0.
    - ``sorted``: a :class:`Curve` over seeds of the non-constant amplitudes in decreasing
      order, normalised to unit energy.
    - ``summary``: a line of text under the sorted spectra.
    """
    ncols = len(columns)
    figure = Figure(figsize=(4.8 * ncols, 7.0))
    axes = figure.subplots(2, ncols, squeeze=False)
    # One log scale for every sorted spectrum, so a flat spectrum looks flat next to a sparse one.
    for axis in axes[1, 1:]:
        axis.sharey(axes[1, 0])
    for col, column in enumerate(columns):
        axis = axes[0, col]
        spectrum = np.asarray(column["spectrum"], dtype=float)
        frequencies = np.arange(1, len(spectrum))
        keys = set(column["key_frequencies"])
        colors = ["tab:red" if k in keys else "tab:gray" for k in frequencies]
        axis.bar(frequencies, spectrum[1:], color=colors, width=0.85)
        axis.set_ylim(0, 1.3 * float(spectrum[1:].max()))
        axis.set_xlabel("frequency k (cycles over the p residues)")
        axis.set_ylabel("‖DFT of E‖₂ over the embedding dimension")
        axis.set_title(f"{column['title']}\nseed 0", fontsize=10)
        axis.legend(handles=[Patch(color="tab:red", label="key frequencies (95 % of energy)"),
                             Patch(color="tab:gray", label="other frequencies")], fontsize=7)
        axis.grid(alpha=0.25, axis="y")

        axis = axes[1, col]
        draw_curve(axis, column["sorted"])
        axis.set_yscale("log")
        axis.set_xlabel("rank of the frequency by amplitude")
        axis.set_ylabel("amplitude / ‖spectrum‖₂ (log scale)")
        axis.set_title(column["summary"], fontsize=9)
        axis.grid(alpha=0.25)
        axis.legend(fontsize=7)
    figure.suptitle(suptitle)
    figure.text(0.5, 0.005, "Bottom: " + BAND_NOTE.format(n=n_seeds), ha="center", va="bottom",
                fontsize=8, color="dimgray")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


VERDICT_COLORS = {
    "saddle": "tab:red",
    "minimum": "tab:green",
    "maximum": "tab:purple",
    "flat": "tab:gray",
    "non-stationary": "tab:orange",
}


def plot_saddles(
    eigen_panels: Sequence[Panel],
    verdict_steps: Sequence[Sequence[int]],
    verdicts: Sequence[Sequence[str]],
    verdict_labels: Sequence[str],
    accuracy: Sequence[Curve],
    marks: Sequence[GrokMark],
    suptitle: str,
    n_seeds: int,
) -> Figure:
    """Draw extreme Hessian eigenvalues over training, accuracy and each seed's saddle verdicts.

    Args:
        eigen_panels: panels of λ curves (e.g. λ_min and λ_max per block).
        verdict_steps: per verdict row, the checkpoint steps.
        verdicts: per verdict row, the verdict at each step (see ``VERDICT_COLORS``).
        verdict_labels: the label of each verdict row, e.g. ``"E+W, seed 0"``.
        accuracy: accuracy curves drawn above the verdicts.
        marks: grok steps, drawn on every axis.
        suptitle: the figure title.
        n_seeds: seeds behind each curve.
    """
    n_panels = len(eigen_panels)
    figure = Figure(figsize=(5.6 * max(n_panels, 2), 10.0))
    # Row 1 is one legend for all eigenvalue panels, which share their curve labels and marks.
    grid = figure.add_gridspec(
        4, n_panels, height_ratios=[1.6, 0.32, 0.8, 0.25 + 0.12 * len(verdicts)]
    )
    legend_entries: dict[str, Any] = {}
    for col, panel in enumerate(eigen_panels):
        axis = figure.add_subplot(grid[0, col])
        for curve in panel.curves:
            draw_curve(axis, curve)
        draw_marks(axis, marks)
        axis.set_yscale(panel.yscale, **({"linthresh": 1e-4} if panel.yscale == "symlog" else {}))
        axis.axhline(0.0, color="black", linewidth=0.6)
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel("training step")
        axis.set_ylabel(panel.ylabel or "Hessian eigenvalue")
        axis.grid(alpha=0.25)
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            legend_entries.setdefault(label, handle)

    legend_axis = figure.add_subplot(grid[1, :])
    legend_axis.axis("off")
    legend_axis.legend(
        list(legend_entries.values()),
        list(legend_entries),
        fontsize=7,
        loc="center",
        ncol=4,
        frameon=False,
    )

    accuracy_axis = figure.add_subplot(grid[2, :])
    for curve in accuracy:
        draw_curve(accuracy_axis, curve)
    draw_marks(accuracy_axis, marks)
    accuracy_axis.set_ylim(-0.02, 1.02)
    accuracy_axis.set_ylabel("accuracy (fraction correct)")
    accuracy_axis.set_title("Test accuracy and grok steps", fontsize=10)
    accuracy_axis.legend(fontsize=7, loc="center right")
    accuracy_axis.grid(alpha=0.25)

    verdict_axis = figure.add_subplot(grid[3, :], sharex=accuracy_axis)
    for row, (steps, row_verdicts) in enumerate(zip(verdict_steps, verdicts, strict=True)):
        colors = [VERDICT_COLORS.get(v, "black") for v in row_verdicts]
        verdict_axis.scatter(steps, [row] * len(steps), c=colors, marker="s", s=36)
    draw_marks(verdict_axis, marks)
    verdict_axis.set_yticks(range(len(verdict_labels)), verdict_labels, fontsize=7)
    verdict_axis.set_ylim(-0.7, len(verdict_labels) - 0.3)
    verdict_axis.invert_yaxis()
    verdict_axis.set_xlabel("training step")
    verdict_axis.set_title("Curvature verdict of each checkpoint (from the eigenvalues only: the "
                           "gradient is not required to vanish)", fontsize=10)
    handles = [Line2D([], [], marker="s", linestyle="", color=color, label=name)
               for name, color in VERDICT_COLORS.items()]
    verdict_axis.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(suptitle)
    figure.text(0.5, 0.005, BAND_NOTE.format(n=n_seeds), ha="center", va="bottom", fontsize=8,
                color="dimgray")
    figure.tight_layout(rect=(0, 0.02, 1, 1))
    return figure


def plot_token_norms(
    steps: np.ndarray,
    norms: np.ndarray,
    counts: np.ndarray,
    rare: np.ndarray,
    group_curves: Sequence[Curve],
    final_counts: np.ndarray,
    final_norms: np.ndarray,
    final_rare: np.ndarray,
    accuracy: Sequence[Curve],
    marks: Sequence[GrokMark],
    suptitle: str,
    n_seeds: int,
) -> Figure:
    """Draw per-token embedding norms over training, rare tokens highlighted, and accuracy.

    Args:
        steps: evaluation steps of seed 0, shape [n_evals].
        norms: ‖e_i‖ of each operand token at each step, seed 0, shape [n_evals, p].
        counts: training-set count of each operand value, seed 0, shape [p].
        rare: mask of the rare tokens of seed 0, shape [p].
        group_curves: mean norms of the rare and the other tokens, over seeds.
        final_counts, final_norms, final_rare: per token of every seed, at the last step.
        accuracy: train and test accuracy curves over seeds.
        marks: grok steps.
        suptitle: the figure title.
        n_seeds: seeds behind the group curves and the scatter.
    """
    figure = Figure(figsize=(13, 8.6))
    token_axis, group_axis, scatter_axis, accuracy_axis = figure.subplots(2, 2).ravel()
    normalize = Normalize(vmin=float(counts.min()), vmax=float(counts.max()))
    colormap = "viridis"
    palette = colormaps[colormap]
    for token in np.argsort(~rare, kind="stable")[::-1]:
        if rare[token]:
            token_axis.plot(steps, norms[:, token], color="tab:red", linewidth=1.4, zorder=3)
        else:
            token_axis.plot(steps, norms[:, token], color=palette(normalize(counts[token])),
                            linewidth=0.7, alpha=0.7)
    token_axis.plot([], [], color="tab:red", label=f"rare tokens ({int(rare.sum())})")
    draw_marks(token_axis, marks)
    mappable = token_axis.scatter([], [], c=[], cmap=colormap, norm=normalize)
    colorbar = figure.colorbar(mappable, ax=token_axis)
    colorbar.set_label("training-set occurrences of the token")
    token_axis.set_xlabel("training step")
    token_axis.set_ylabel("‖e_i‖₂ (embedding row norm)")
    token_axis.set_title("Each operand token, seed 0", fontsize=10)
    token_axis.legend(fontsize=7)
    token_axis.grid(alpha=0.25)

    for curve in group_curves:
        draw_curve(group_axis, curve)
    draw_marks(group_axis, marks)
    group_axis.set_xlabel("training step")
    group_axis.set_ylabel("mean ‖e_i‖₂ over the group")
    group_axis.set_title("Rare vs other tokens", fontsize=10)
    group_axis.legend(fontsize=7)
    group_axis.grid(alpha=0.25)

    scatter_axis.scatter(final_counts[~final_rare], final_norms[~final_rare], s=12,
                         color="tab:blue", alpha=0.6, label="other tokens")
    scatter_axis.scatter(final_counts[final_rare], final_norms[final_rare], s=16,
                         color="tab:red", alpha=0.8, label="rare tokens")
    scatter_axis.set_xlabel("training-set occurrences of the token (count)")
    scatter_axis.set_ylabel("final ‖e_i‖₂")
    scatter_axis.set_title("Final norm against frequency, all seeds", fontsize=10)
    scatter_axis.legend(fontsize=7)
    scatter_axis.grid(alpha=0.25)

    for curve in accuracy:
        draw_curve(accuracy_axis, curve)
    draw_marks(accuracy_axis, marks)
    accuracy_axis.set_ylim(-0.02, 1.02)
    accuracy_axis.set_xlabel("training step")
    accuracy_axis.set_ylabel("accuracy (fraction correct)")
    accuracy_axis.set_title("Train and test accuracy", fontsize=10)
    accuracy_axis.legend(fontsize=7)
    accuracy_axis.grid(alpha=0.25)
    figure.suptitle(suptitle)
    figure.text(0.5, 0.005, "Group norms and accuracy: " + BAND_NOTE.format(n=n_seeds),
                ha="center", va="bottom",
                fontsize=8, color="dimgray")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure
