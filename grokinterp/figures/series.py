"""Quantities over training, read from run directories and aggregated over seeds.

Curves come from ``metrics.jsonl``; quantities of the weights (ranks,
Fourier sparsity, Hessian eigenvalues) are computed at each checkpoint. Results of a checkpoint
analysis are cached as JSON in the run directory, under ``figure_cache/``, keyed by the analysis
and its settings, so redrawing a figure does not repeat an hour of Hessian-vector products.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grokinterp.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_manifest,
    read_metrics,
    write_json,
)

logger = logging.getLogger(__name__)

CACHE_DIR = "figure_cache"


@dataclass(frozen=True)
class SeedBand:
    """One quantity on a shared grid of steps, for each seed, with its mean and range.

    Attributes:
        steps: the grid, shape [n_steps]; only steps at which every seed has a value.
        values: shape [n_seeds, n_steps]; NaN where a seed's value is undefined.
    """

    steps: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.steps):
            raise ValueError(
                f"SeedBand got values of shape {self.values.shape} for {len(self.steps)} steps: "
                "expected [n_seeds, n_steps]."
            )

    @property
    def n_seeds(self) -> int:
        return self.values.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return _nan_reduce(np.nanmean, self.values)

    @property
    def low(self) -> np.ndarray:
        """Minimum over seeds at each step."""
        return _nan_reduce(np.nanmin, self.values)

    @property
    def high(self) -> np.ndarray:
        """Maximum over seeds at each step."""
        return _nan_reduce(np.nanmax, self.values)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation over seeds (ddof 0, so one seed gives 0)."""
        return _nan_reduce(np.nanstd, self.values)

    def as_dict(self) -> dict[str, Any]:
        """Return steps, per-seed values, mean, min, max and standard deviation as JSON lists."""
        return {
            "steps": self.steps.tolist(),
            "per_seed": _json_floats(self.values),
            "mean": _json_floats(self.mean),
            "min": _json_floats(self.low),
            "max": _json_floats(self.high),
            "std": _json_floats(self.std),
        }


def _nan_reduce(reduce: Callable[..., np.ndarray], values: np.ndarray) -> np.ndarray:
    # A column without a finite value stays NaN here, because numpy's nan-reductions warn on it.
    result = np.full(values.shape[1], np.nan)
    finite = np.isfinite(values).any(axis=0)
    if finite.any():
        result[finite] = reduce(values[:, finite], axis=0)
    return result


def _json_floats(array: Any) -> Any:
    """Convert an array to nested lists of floats, with NaN and infinities as None for JSON."""
    array = np.asarray(array, dtype=float)
    if array.ndim == 0:
        value = float(array)
        return value if np.isfinite(value) else None
    return [_json_floats(row) for row in array]


def stack_over_seeds(steps: Sequence[Any], values: Sequence[Any]) -> SeedBand:
    """Align per-seed series on the steps that all of them share.

    Args:
        steps: one sequence of integer steps per seed (lists, tuples or arrays).
        values: one sequence of numbers per seed, as long as its steps; None marks an
            undefined value.

    Returns:
        A :class:`SeedBand` on the common steps, in increasing order.
    """
    if len(steps) != len(values) or not steps:
        raise ValueError(
            f"stack_over_seeds got {len(steps)} step lists and {len(values)} value lists: pass "
            "one of each per seed, at least one seed."
        )
    lookups = []
    for seed_steps, seed_values in zip(steps, values, strict=True):
        if len(seed_steps) != len(seed_values):
            raise ValueError(
                f"a seed has {len(seed_steps)} steps but {len(seed_values)} values: pass one "
                "value per step."
            )
        lookups.append(dict(zip((int(s) for s in seed_steps), seed_values, strict=True)))
    common = sorted(set.intersection(*(set(lookup) for lookup in lookups)))
    grid = np.array(common, dtype=int)
    table = np.array(
        [[np.nan if lookup[s] is None else float(lookup[s]) for s in common] for lookup in lookups],
        dtype=float,
    ).reshape(len(lookups), len(common))
    return SeedBand(steps=grid, values=table)


def metric_band(run_dirs: Sequence[Path], key: str) -> SeedBand:
    """Read a column of ``metrics.jsonl`` (e.g. ``test_acc``) from each seed's run and align it."""
    steps, values = [], []
    for run_dir in run_dirs:
        rows = read_metrics(run_dir)
        if not rows or key not in rows[0]:
            raise ValueError(
                f"{run_dir}/metrics.jsonl has no column {key!r}: expected one of "
                f"{sorted(rows[0]) if rows else 'any (the file is empty)'}."
            )
        steps.append([row["step"] for row in rows])
        values.append([row[key] for row in rows])
    return stack_over_seeds(steps, values)


@dataclass(frozen=True)
class GrokSteps:
    """First evaluation steps with train and test accuracy ≥ the grok threshold, per seed."""

    train: list[int | None]
    test: list[int | None]

    @staticmethod
    def _summary(steps: list[int | None]) -> dict[str, Any]:
        reached = [s for s in steps if s is not None]
        return {
            "per_seed": steps,
            "n_reached": len(reached),
            "n_seeds": len(steps),
            "mean": float(np.mean(reached)) if reached else None,
            "min": min(reached) if reached else None,
            "max": max(reached) if reached else None,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"train": self._summary(self.train), "test": self._summary(self.test)}

    def mean_test(self) -> float | None:
        """Mean test grok step over the seeds that reached it (None if none did)."""
        return self._summary(self.test)["mean"]

    def mean_train(self) -> float | None:
        return self._summary(self.train)["mean"]


def grok_steps(run_dirs: Sequence[Path]) -> GrokSteps:
    """Grok steps of each seed's run, from its manifest."""
    train, test = [], []
    for run_dir in run_dirs:
        grok = read_manifest(run_dir).get("grok") or {}
        train.append(grok.get("train_step"))
        test.append(grok.get("test_step"))
    return GrokSteps(train=train, test=test)


def select_checkpoints(run_dir: Path, max_count: int | None = None) -> list[tuple[int, Path]]:
    """List the run's checkpoints, thinned evenly to at most ``max_count`` (first and last kept)."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ValueError(f"{run_dir} has no checkpoints: train the run first.")
    if max_count is None or len(checkpoints) <= max_count:
        return checkpoints
    picks = np.unique(np.round(np.linspace(0, len(checkpoints) - 1, max_count)).astype(int))
    return [checkpoints[i] for i in picks]


def checkpoint_series(
    run_dir: Path,
    analysis: str,
    settings: Mapping[str, Any],
    measure: Callable[[Checkpoint], dict[str, Any]],
    max_checkpoints: int | None = None,
    progress_bar: Any = None,
    last_only: bool = False,
) -> list[dict[str, Any]]:
    """Apply ``measure`` to checkpoints of a run; results are cached in the run directory.

    Args:
        run_dir: a finished run directory.
        analysis: name of the measurement, part of the cache key.
        settings: every setting that changes the measurement's result (JSON-ready), part of
            the cache key.
        measure: checkpoint → JSON-ready dict of values.
        max_checkpoints: analyse at most this many checkpoints (see :func:`select_checkpoints`).
        progress_bar: a tqdm bar to advance once per checkpoint, or None.
        last_only: analyse only the final checkpoint.

    Returns:
        One dict per checkpoint, in step order, each with ``"step"`` and the measured values.
    """
    key = json.dumps({"analysis": analysis, **settings}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    cache_path = Path(run_dir) / CACHE_DIR / f"{analysis}-{digest}.json"
    cache: dict[str, Any] = {}
    if cache_path.is_file():
        stored = json.loads(cache_path.read_text())
        if stored.get("key") == key:
            cache = stored.get("results", {})

    results = []
    checkpoints = select_checkpoints(run_dir, max_checkpoints)
    for step, path in checkpoints[-1:] if last_only else checkpoints:
        if str(step) not in cache:
            logger.info("measuring %s at step %d of %s", analysis, step, run_dir)
            cache[str(step)] = measure(load_checkpoint(path))
            write_json(cache_path, {"key": key, "results": cache})
        results.append({"step": step, **cache[str(step)]})
        if progress_bar is not None:
            progress_bar.update(1)
    return results


def series_band(series: Sequence[Sequence[Mapping[str, Any]]], *path: str) -> SeedBand:
    """Align one value of per-seed checkpoint series (from :func:`checkpoint_series`).

    ``path`` names the value inside each row: ``series_band(series, "E", "lambda_max")`` reads
    ``row["E"]["lambda_max"]``.
    """
    if not path:
        raise ValueError("series_band needs the key of the value to align, e.g. 'gini'.")

    def pick(row: Mapping[str, Any]) -> Any:
        value: Any = row
        for key in path:
            value = value[key]
        return value

    return stack_over_seeds(
        [[row["step"] for row in rows] for rows in series],
        [[pick(row) for row in rows] for rows in series],
    )
