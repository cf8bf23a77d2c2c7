"""Steps-to-grok comparison of training methods over seeds.

A comparison trains (or reads) one run per method and seed. Per method it reports the steps to
train accuracy ≥ 0.99 and to test accuracy ≥ 0.99, the fraction of seeds that reached the
threshold within the step budget, and the wall-clock time per run.

Fairness. Every method starts from the same base config (a preset plus common overrides), and a
method changes only its own fields (:mod:`grokinterp.methods`), so learning rate, weight decay,
batch size and budget are equal unless the method is that change. Each method's changed fields
are listed next to its results. Seed ``s`` sets the data split, initialisation and batch order
(:func:`~grokinterp.experiments.with_seed`), so every method sees the same splits and
initialisations.

Statistics. A seed that does not reach the threshold within its budget is right-censored: its
step count is only known to exceed the budget. The median and its interval are taken over all
seeds with censored seeds placed above every observed step, so the median is exact while fewer
than half the seeds are censored and is otherwise reported as "not reached". The 95 % interval is
a percentile bootstrap of the median (resampling seeds with replacement, a seeded
``numpy.random.Generator``); with 3-5 seeds it can only take the values of the observed steps.
Grok steps are those of evaluations, so they are exact to within ``train.eval_every`` steps.

Curves. Runs stop early once test accuracy has held the threshold (``train.early_stop_evals``),
so for the mean and min-max band over seeds each run's accuracy is held at its last value after
it stops. The figure's step axis ends at 1.5 times the last grok step of any run, so that a run
that never grokked does not squeeze the others.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grokinterp.checkpoint import (
    CheckpointError,
    atomic_path,
    read_manifest,
    read_metrics,
    write_json,
)
from grokinterp.experiments import ensure_runs, with_seed
from grokinterp.methods import apply_method, get_method, method_label
from grokinterp.training.config import RunConfig, config_from_dict, config_to_dict

logger = logging.getLogger(__name__)

SEED_FIELDS = ("task.data_seed", "model.init_seed", "train.batch_seed")
BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class RunRecord:
    """Data read from one completed run directory.

    ``train_step`` and ``test_step`` are the first evaluation steps with accuracy at or above
    the threshold, or None when the run never reached it within ``budget`` steps.
    ``curve_steps``, ``curve_train_acc`` and ``curve_test_acc`` are the evaluations from
    ``metrics.jsonl``.
    """

    run_dir: Path
    label: str
    seed: int
    config: RunConfig
    budget: int
    train_step: int | None
    test_step: int | None
    final_test_acc: float
    wall_time_s: float
    curve_steps: tuple[int, ...]
    curve_train_acc: tuple[float, ...]
    curve_test_acc: tuple[float, ...]


@dataclass(frozen=True)
class StepSummary:
    """Median steps to a threshold over seeds, with a bootstrap interval; None = not reached.

    ``median``, ``low`` and ``high`` are None where censored seeds decide them, i.e. where the
    value lies beyond the budget of ``budget`` steps.
    """

    median: float | None
    low: float | None
    high: float | None
    reached: int
    n_seeds: int
    budget: int

    def __post_init__(self) -> None:
        if not 0 <= self.reached <= self.n_seeds:
            raise ValueError(
                f"StepSummary got reached={self.reached}, n_seeds={self.n_seeds}: "
                "reached must lie in [0, n_seeds]."
            )

    @property
    def fraction(self) -> float:
        """Fraction of seeds that reached the threshold within the budget."""
        return self.reached / self.n_seeds


@dataclass(frozen=True)
class PairedSteps:
    """Seed-by-seed steps to test accuracy ≥ threshold of a method against a reference method.

    Both methods see the same data split and initialisation on a shared seed, so a per-seed
    comparison removes the seed-to-seed spread that the unpaired medians carry. A seed counts as
    ``faster`` when the method reached the threshold at an earlier evaluation than the reference,
    or reached it where the reference never did; ``slower`` is the converse, and ``ties``
    includes seeds on which neither reached it. ``median_ratio`` is the median over seeds where
    both reached it of (method's steps / reference's steps), or None when there are none.
    """

    reference: str
    faster: int
    slower: int
    ties: int
    median_ratio: float | None

    @property
    def n_seeds(self) -> int:
        return self.faster + self.slower + self.ties


@dataclass(frozen=True)
class MethodSummary:
    """The results of one method over its seeds.

    ``paired`` compares it seed by seed with the first method of the comparison; it is None for
    the first method itself and when the two share no seed.
    """

    label: str
    description: str
    changes: dict[str, Any]
    train: StepSummary
    test: StepSummary
    wall_time_median_s: float
    runs: tuple[RunRecord, ...]
    paired: PairedSteps | None = None


@dataclass(frozen=True)
class AccuracyBand:
    """Mean, minimum and maximum accuracy over seeds on a common step grid."""

    steps: np.ndarray
    train_mean: np.ndarray
    train_low: np.ndarray
    train_high: np.ndarray
    test_mean: np.ndarray
    test_low: np.ndarray
    test_high: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """A full comparison: per-method summaries and the settings they were computed with."""

    title: str
    baseline: str
    threshold: float
    methods: tuple[MethodSummary, ...]
    bootstrap_resamples: int
    bootstrap_seed: int
    confidence: float

    def method(self, label: str) -> MethodSummary:
        """Return the summary of the method called ``label``."""
        for summary in self.methods:
            if summary.label == label:
                return summary
        raise KeyError(f"no method {label!r} in this comparison: it has {self.labels}.")

    @property
    def labels(self) -> list[str]:
        return [summary.label for summary in self.methods]


def bootstrap_median_interval(
    values: Sequence[float],
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Return the median of ``values`` and a percentile-bootstrap interval for it.

    The values are resampled with replacement ``n_resamples`` times with
    ``numpy.random.default_rng(seed)``, and the interval runs between the
    ``(1 − confidence)/2`` and ``(1 + confidence)/2`` quantiles of the resampled medians
    (order statistics, no interpolation). ``math.inf`` marks a right-censored value, and a
    median or bound that depends on one is ``inf``.

    Returns:
        ``(median, low, high)``.
    """
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or len(data) == 0:
        raise ValueError(
            f"bootstrap_median_interval got {len(data)} values of shape {data.shape}: pass a "
            "non-empty 1-D sequence."
        )
    if np.isnan(data).any():
        raise ValueError(
            f"bootstrap_median_interval got NaN in {data.tolist()}: use math.inf for censored values."
        )
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r} is invalid: it must be a positive integer.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} is invalid: it must lie in (0, 1).")

    rng = np.random.default_rng(seed)
    resampled = data[rng.integers(0, len(data), size=(n_resamples, len(data)))]
    medians = _median_with_inf(resampled)
    tail = (1 - confidence) / 2
    low, high = np.quantile(medians, [tail, 1 - tail], method="inverted_cdf")
    return float(_median_with_inf(data[None, :])[0]), float(low), float(high)


def _median_with_inf(rows: np.ndarray) -> np.ndarray:
    # np.median averages the two middle values, and inf among them must give inf, not nan.
    ordered = np.sort(rows, axis=1)
    n = ordered.shape[1]
    lower, upper = ordered[:, (n - 1) // 2], ordered[:, n // 2]
    both_finite = np.isfinite(upper)
    return np.where(both_finite, (lower + np.where(both_finite, upper, 0.0)) / 2, math.inf)


def summarize_steps(
    steps: Sequence[int | None],
    budget: int,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> StepSummary:
    """Summarize steps-to-threshold over seeds; None marks a seed censored at ``budget``."""
    values = [math.inf if step is None else float(step) for step in steps]
    median, low, high = bootstrap_median_interval(values, n_resamples, confidence, seed)
    return StepSummary(
        median=_finite_or_none(median),
        low=_finite_or_none(low),
        high=_finite_or_none(high),
        reached=sum(step is not None for step in steps),
        n_seeds=len(steps),
        budget=budget,
    )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def paired_steps(
    runs: Sequence[RunRecord], reference_runs: Sequence[RunRecord], reference: str
) -> PairedSteps | None:
    """Compare steps to test accuracy ≥ threshold seed by seed; None when no seed is shared."""
    reference_steps = {record.seed: record.test_step for record in reference_runs}
    shared = [record for record in runs if record.seed in reference_steps]
    if not shared:
        return None

    faster = slower = ties = 0
    ratios = []
    for record in shared:
        ours = math.inf if record.test_step is None else record.test_step
        theirs = reference_steps[record.seed]
        theirs = math.inf if theirs is None else theirs
        if ours < theirs:
            faster += 1
        elif ours > theirs:
            slower += 1
        else:
            ties += 1
        if math.isfinite(ours) and math.isfinite(theirs) and theirs > 0:
            ratios.append(ours / theirs)
    median_ratio = float(np.median(ratios)) if ratios else None
    return PairedSteps(reference, faster, slower, ties, median_ratio)


def grid_configs(
    base: RunConfig, methods: Sequence[str], seeds: int
) -> list[tuple[str, RunConfig]]:
    """Return ``(method, config)`` for every method and seed ``0 .. seeds−1``, seed-major."""
    check_grid(methods, seeds)
    return [
        (method, with_seed(apply_method(base, method), seed))
        for seed in range(seeds)
        for method in methods
    ]


def check_grid(methods: Sequence[str], seeds: int) -> None:
    """Reject an empty or repeated method list, unknown methods and a seed count below 1."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} is invalid: run at least one seed (--seeds 1 or more).")
    if not methods:
        raise ValueError("no methods given: name at least one, e.g. --methods adam adam-lr.")
    repeated = sorted({name for name in methods if list(methods).count(name) > 1})
    if repeated:
        raise ValueError(f"method {repeated[0]!r} is listed twice: name each method once.")
    for name in methods:
        get_method(name)


def run_grid(
    base: RunConfig,
    methods: Sequence[str],
    seeds: int,
    runs_dir: Path | str,
    progress: bool = True,
) -> list[RunRecord]:
    """Train (or reuse from the cache in ``runs_dir``) every method × seed run and load them."""
    grid = grid_configs(base, methods, seeds)
    logger.info("comparing %d methods x %d seeds of %s in %s", len(methods), seeds, base.name, runs_dir)
    directories = ensure_runs([cfg for _, cfg in grid], runs_dir, progress=progress)
    return [
        load_run(directory, label=method)
        for (method, _), directory in zip(grid, directories, strict=True)
    ]


def load_run(run_dir: Path | str, label: str | None = None) -> RunRecord:
    """Read a completed run directory; ``label`` defaults to the method in the run's name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found: pass a directory of a run.")
    manifest = read_manifest(run_dir)
    if manifest.get("status") != "completed":
        raise CheckpointError(
            f"{run_dir} is not a completed run (status {manifest.get('status')!r}): finish it "
            "with 'grokinterp train --resume' or leave it out."
        )
    config = config_from_dict(manifest["config"])
    metrics = read_metrics(run_dir)
    grok = manifest.get("grok", {})
    return RunRecord(
        run_dir=run_dir,
        label=label if label is not None else method_label(config.name),
        seed=config.model.init_seed,
        config=config,
        budget=config.train.steps,
        train_step=grok.get("train_step"),
        test_step=grok.get("test_step"),
        final_test_acc=float(manifest["final"]["test_acc"]),
        wall_time_s=float(manifest.get("wall_time_s", 0.0)),
        curve_steps=tuple(int(row["step"]) for row in metrics),
        curve_train_acc=tuple(float(row["train_acc"]) for row in metrics),
        curve_test_acc=tuple(float(row["test_acc"]) for row in metrics),
    )


def group_runs(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Group runs by label, in order of first appearance, checking each group is one config.

    Runs of one label may differ only in their seeds; anything else would mix two settings
    in one row of the comparison.
    """
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.label, []).append(record)
    for label, group in groups.items():
        reference = group[0]
        for record in group[1:]:
            differences = config_differences(record.config, reference.config)
            if differences:
                key, value = next(iter(differences.items()))
                raise ValueError(
                    f"runs {reference.run_dir} and {record.run_dir} are both labelled {label!r} "
                    f"but differ in {key} ({config_value(reference.config, key)!r} vs "
                    f"{value!r}): rename one run or compare them separately."
                )
        seeds = [record.seed for record in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(
                f"method {label!r} has two runs with the same seed ({sorted(seeds)}): each seed "
                "should appear once per method."
            )
    return groups


def config_value(cfg: RunConfig, key: str) -> Any:
    """Return the value of the dotted config field ``key`` (``"optim.lr"``)."""
    return _flatten(config_to_dict(cfg))[key]


def config_differences(cfg: RunConfig, baseline: RunConfig) -> dict[str, Any]:
    """Return the fields of ``cfg`` that differ from ``baseline``, as ``{"optim.lr": 0.001}``.

    The run name and the seeds are left out: they differ between rows by design.
    """
    ours = _flatten(config_to_dict(cfg))
    theirs = _flatten(config_to_dict(baseline))
    ignored = {"name", *SEED_FIELDS}
    return {key: value for key, value in ours.items() if key not in ignored and theirs.get(key) != value}


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def summarize(
    groups: Mapping[str, Sequence[RunRecord]],
    baseline: RunConfig,
    title: str,
    baseline_name: str,
    descriptions: Mapping[str, str] | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Comparison:
    """Summarize grouped runs into a :class:`Comparison`; ``changes`` are relative to ``baseline``.

    Every method's bootstrap uses the same ``seed``, so a method's interval does not depend on
    which other methods are in the comparison.
    """
    if not groups:
        raise ValueError("summarize got no runs: train or pass at least one run per method.")
    thresholds = {record.config.train.grok_threshold for runs in groups.values() for record in runs}
    if len(thresholds) != 1:
        raise ValueError(
            f"the runs use different train.grok_threshold values {sorted(thresholds)}: compare "
            "runs with one threshold."
        )

    summaries = []
    reference_label, reference_runs = next(iter(groups.items()))
    for label, runs in groups.items():
        runs = sorted(runs, key=lambda record: record.seed)
        budget = max(record.budget for record in runs)
        paired = None if label == reference_label else paired_steps(runs, reference_runs, reference_label)
        summaries.append(
            MethodSummary(
                label=label,
                description=(descriptions or {}).get(label, ""),
                changes=config_differences(runs[0].config, baseline),
                train=summarize_steps([r.train_step for r in runs], budget, n_resamples, confidence, seed),
                test=summarize_steps([r.test_step for r in runs], budget, n_resamples, confidence, seed),
                wall_time_median_s=float(np.median([record.wall_time_s for record in runs])),
                runs=tuple(runs),
                paired=paired,
            )
        )
    return Comparison(
        title=title,
        baseline=baseline_name,
        threshold=thresholds.pop(),
        methods=tuple(summaries),
        bootstrap_resamples=n_resamples,
        bootstrap_seed=seed,
        confidence=confidence,
    )


def compare_grid(
    base: RunConfig,
    methods: Sequence[str],
    seeds: int,
    runs_dir: Path | str,
    progress: bool = True,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    bootstrap_seed: int = 0,
    title: str | None = None,
) -> Comparison:
    """Run (or reuse) the methods × seeds grid on ``base`` and summarize it.

    Changed fields are listed relative to ``base``, the preset with the common overrides.
    ``title`` defaults to the base config's name and the grid size.
    """
    records = run_grid(base, methods, seeds, runs_dir, progress=progress)
    groups = {method: [r for r in records if r.label == method] for method in methods}
    return summarize(
        groups,
        baseline=base,
        title=title or f"{base.name}: {len(methods)} methods × {seeds} seeds",
        baseline_name=f"preset {base.name}",
        descriptions={method: get_method(method).description for method in methods},
        n_resamples=n_resamples,
        seed=bootstrap_seed,
    )


def compare_runs(
    run_dirs: Sequence[Path | str],
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    bootstrap_seed: int = 0,
) -> Comparison:
    """Summarize existing run directories, grouped by the method label of each run's name.

    Changed fields are listed relative to the first group's config.
    """
    if not run_dirs:
        raise ValueError("no run directories given: pass at least one to --from-runs.")
    groups = group_runs([load_run(directory) for directory in run_dirs])
    first_label, first_runs = next(iter(groups.items()))
    descriptions = {}
    for label in groups:
        try:
            descriptions[label] = get_method(label).description
        except ValueError:
            descriptions[label] = ""
    return summarize(
        groups,
        baseline=first_runs[0].config,
        title=f"{len(run_dirs)} runs in {len(groups)} groups",
        baseline_name=f"the runs labelled {first_label!r}",
        descriptions=descriptions,
        n_resamples=n_resamples,
        seed=bootstrap_seed,
    )


def accuracy_band(runs: Sequence[RunRecord]) -> AccuracyBand:
    """Mean, minimum and maximum train and test accuracy over ``runs`` on a shared step grid.

    A run that stopped early keeps its last accuracy up to the longest run's last step, and
    evaluation steps that differ between runs are joined by linear interpolation.
    """
    if not runs:
        raise ValueError("accuracy_band got no runs: pass at least one run.")
    steps = np.unique(np.concatenate([np.asarray(run.curve_steps, dtype=float) for run in runs]))
    train = np.stack([np.interp(steps, run.curve_steps, run.curve_train_acc) for run in runs])
    test = np.stack([np.interp(steps, run.curve_steps, run.curve_test_acc) for run in runs])
    return AccuracyBand(
        steps=steps,
        train_mean=train.mean(axis=0),
        train_low=train.min(axis=0),
        train_high=train.max(axis=0),
        test_mean=test.mean(axis=0),
        test_low=test.min(axis=0),
        test_high=test.max(axis=0),
    )


def plot_step_limit(comparison: Comparison, margin: float = 1.5) -> float | None:
    """Return where to cut the step axis: ``margin`` times the last grok step of any run.

    Returns None (no cut) when no run grokked or the cut would not shorten the axis.
    """
    grok_steps = [
        step
        for summary in comparison.methods
        for run in summary.runs
        for step in (run.train_step, run.test_step)
        if step is not None
    ]
    last_step = max(max(run.curve_steps) for summary in comparison.methods for run in summary.runs)
    if not grok_steps or margin * max(grok_steps) >= last_step:
        return None
    return margin * max(grok_steps)


def comparison_to_dict(comparison: Comparison) -> dict[str, Any]:
    """Return the comparison as JSON-ready data (``comparison.json``)."""
    return {
        "title": comparison.title,
        "baseline": comparison.baseline,
        "threshold": comparison.threshold,
        "statistics": {
            "median": "over all seeds; a seed that never reached the threshold counts as "
            "censored above the budget, and a median or bound it decides is null",
            "interval": f"{comparison.confidence:.0%} percentile bootstrap of the median over "
            "seeds",
            "bootstrap_resamples": comparison.bootstrap_resamples,
            "bootstrap_seed": comparison.bootstrap_seed,
            "step_resolution": "grok steps are evaluation steps (train.eval_every)",
        },
        "methods": [
            {
                "method": summary.label,
                "description": summary.description,
                "changes": summary.changes,
                "n_seeds": summary.test.n_seeds,
                "budget": summary.test.budget,
                "train_steps": dataclasses.asdict(summary.train),
                "test_steps": dataclasses.asdict(summary.test),
                "grokked_fraction": summary.test.fraction,
                "paired_test_steps": None if summary.paired is None else dataclasses.asdict(summary.paired),
                "wall_time_median_s": summary.wall_time_median_s,
                "runs": [
                    {
                        "run_dir": str(run.run_dir),
                        "seed": run.seed,
                        "train_step": run.train_step,
                        "test_step": run.test_step,
                        "final_test_acc": run.final_test_acc,
                        "wall_time_s": run.wall_time_s,
                    }
                    for run in summary.runs
                ],
            }
            for summary in comparison.methods
        ],
    }


def format_table(comparison: Comparison) -> str:
    """Return the Markdown table of a comparison: one row per method."""
    percent = f"{comparison.confidence:.0%}"
    threshold = f"{comparison.threshold:g}"
    lines = [
        f"| method | changes vs {comparison.baseline} | seeds | steps to train acc ≥ {threshold}, "
        f"median [{percent} CI] | steps to test acc ≥ {threshold}, median [{percent} CI] | "
        f"grokked | vs {comparison.methods[0].label} on the same seeds: earlier / later / tied, "
        "median step ratio | wall time per run (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for summary in comparison.methods:
        changes = ", ".join(f"{key}={value}" for key, value in summary.changes.items()) or "none"
        lines.append(
            f"| {summary.label} | {changes} | {summary.test.n_seeds} | {_format_steps(summary.train)} "
            f"| {_format_steps(summary.test)} | {summary.test.reached}/{summary.test.n_seeds} "
            f"| {_format_paired(summary.paired)} | {summary.wall_time_median_s:.1f} s |"
        )
    return "\n".join(lines)


def _format_paired(paired: PairedSteps | None) -> str:
    if paired is None:
        return "reference"
    ratio = "n/a" if paired.median_ratio is None else f"×{paired.median_ratio:.2f}"
    return f"{paired.faster} / {paired.slower} / {paired.ties}, {ratio}"


def _format_steps(summary: StepSummary) -> str:
    def number(value: float | None) -> str:
        return f"> {summary.budget}" if value is None else f"{value:.0f}"

    return f"{number(summary.median)} [{number(summary.low)}, {number(summary.high)}]"


def format_markdown(comparison: Comparison, command: str | None = None) -> str:
    """Return ``comparison.md``: title, the command, the table and how to read it."""
    budgets = sorted({summary.test.budget for summary in comparison.methods})
    parts = [f"# {comparison.title}", ""]
    if command:
        parts += ["```", command, "```", ""]
    parts += [format_table(comparison), ""]
    parts += [f"- **{s.label}**: {s.description}" for s in comparison.methods if s.description]
    parts += [
        "",
        f"Steps are evaluation steps, the first at which accuracy was ≥ {comparison.threshold:g}. "
        f"Medians are over all seeds; a seed that did not reach the threshold within its budget "
        f"({', '.join(map(str, budgets))} steps) is censored above it, and a median or interval "
        f"bound that such seeds decide is shown as \"> budget\". Intervals are "
        f"{comparison.confidence:.0%} percentile bootstraps of the median "
        f"({comparison.bootstrap_resamples} resamples of the seeds, seed "
        f"{comparison.bootstrap_seed}). \"grokked\" counts seeds with test accuracy ≥ "
        f"{comparison.threshold:g} within the budget. The paired column compares each method with "
        f"{comparison.methods[0].label} seed by seed (same split and initialisation): the seeds "
        "on which it reached test accuracy ≥ the threshold earlier, later or at the same "
        "evaluation (a seed that never reached it counts as latest), and the median over seeds "
        "where both reached it of its steps divided by the reference's. Wall time is the median "
        "over seeds of each "
        "run's training time from its manifest, including evaluations and the early-stop tail.",
        "",
        "![train and test accuracy against steps](comparison.png)",
        "",
        "The figure shows the mean (line) and the min–max range (band) over seeds, a run's "
        "accuracy held at its last value after it stopped early, and each method's median step "
        "to test accuracy ≥ the threshold as a dotted line.",
        "",
    ]
    return "\n".join(parts)


def write_comparison(
    comparison: Comparison, out_dir: Path | str, command: str | None = None
) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.json`` and ``comparison.png`` to ``out_dir``."""
    from grokinterp.plotting import plot_method_comparison, save_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": out_dir / "comparison.md",
        "json": out_dir / "comparison.json",
        "png": out_dir / "comparison.png",
    }

    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(format_markdown(comparison, command))
    data = comparison_to_dict(comparison)
    if command:
        data["command"] = command
    write_json(paths["json"], data)

    bands = {summary.label: accuracy_band(summary.runs) for summary in comparison.methods}
    medians = {summary.label: summary.test.median for summary in comparison.methods}
    figure = plot_method_comparison(
        bands, medians, comparison.threshold, comparison.title, max_step=plot_step_limit(comparison)
    )
    save_figure(figure, paths["png"])
    return paths
