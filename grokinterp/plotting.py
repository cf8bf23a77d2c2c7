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
        axis.bar([], [], color="tab:red", label=f"key frequencies {list(key_frequencies)}")
        axis.legend(loc="upper right", fontsize=8)
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
