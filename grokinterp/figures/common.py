"""Helpers shared by the figure definitions: seed bands to curves, grok marks, colours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grokinterp.figure_plots import Curve, GrokMark
from grokinterp.figures.series import SeedBand, grok_steps, metric_band

ACCURACY_LABEL = "accuracy (fraction correct)"
STEP_LABEL = "training step (optimiser updates)"

METHOD_COLORS = {
    "Adam": "tab:blue",
    "Adam-LR": "tab:orange",
    "adaptive": "tab:green",
    "Adam, wd 0.005": "tab:purple",
}


def band_curve(
    band: SeedBand, label: str, color: str | None = None, linestyle: str = "-",
    linewidth: float = 1.6,
) -> Curve:
    """Turn a band into a :class:`Curve` of its mean with its min–max range."""
    return Curve(label=label, steps=band.steps, mean=band.mean, low=band.low, high=band.high,
                 color=color, linestyle=linestyle, linewidth=linewidth)


def test_grok_mark(run_dirs: Sequence[Path], color: str, label: str) -> list[GrokMark]:
    """Mark the mean test grok step of the seeds that grokked (no mark if none did)."""
    steps = grok_steps(run_dirs)
    mean = steps.mean_test()
    if mean is None:
        return []
    reached = sum(s is not None for s in steps.test)
    return [GrokMark(step=mean, color=color,
                     label=f"{label}: test ≥ 0.99 at {mean:.0f} ({reached}/{len(run_dirs)} seeds)")]


def accuracy_curves(
    run_dirs: Sequence[Path], label: str, color: str, with_train: bool = True
) -> tuple[list[Curve], dict[str, Any]]:
    """Build the test (solid) and train (dashed) accuracy curves of a condition, and their data."""
    test = metric_band(run_dirs, "test_acc")
    curves = [band_curve(test, f"{label}, test", color)]
    data: dict[str, Any] = {"test_acc": test.as_dict(), "grok": grok_steps(run_dirs).as_dict(),
                            "runs": [Path(d).name for d in run_dirs]}
    if with_train:
        train = metric_band(run_dirs, "train_acc")
        curves.append(band_curve(train, f"{label}, train", color, linestyle="--", linewidth=1.0))
        data["train_acc"] = train.as_dict()
    return curves, data
