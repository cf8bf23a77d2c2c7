"""Regenerate figures: train or reuse their runs, draw them, write PNG and JSON side by side."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grokinterp.checkpoint import write_json
from grokinterp.experiments import config_hash, ensure_runs, run_directory
from grokinterp.figures.core import (
    FIGURES,
    PAPER_SCALE,
    QUICK_SCALE,
    FigureScale,
    resolve_names,
)
from grokinterp.plotting import save_figure
from grokinterp.training.config import RunConfig

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("figures")
DEFAULT_RUNS = Path("runs")


@dataclass(frozen=True)
class WrittenFigure:
    """Paths of one written figure and its data, and the seconds spent drawing it."""

    name: str
    png: Path
    data: Path
    elapsed_s: float


def scale_for(quick: bool, seeds: int | None = None) -> FigureScale:
    """:data:`QUICK_SCALE` or :data:`PAPER_SCALE`, with ``seeds`` seeds if given."""
    return (QUICK_SCALE if quick else PAPER_SCALE).with_seeds(seeds)


def planned_runs(names: Sequence[str] | None, scale: FigureScale) -> list[RunConfig]:
    """List every distinct run that the figures ``names`` need at ``scale``, in first-use order."""
    configs: dict[str, RunConfig] = {}
    for name in resolve_names(names):
        for seeds in FIGURES[name].conditions(scale).values():
            for cfg in seeds:
                configs.setdefault(f"{cfg.name}-{config_hash(cfg)}", cfg)
    return list(configs.values())


def run_figures(
    names: Sequence[str] | None = None,
    scale: FigureScale = PAPER_SCALE,
    out_dir: Path | str = DEFAULT_OUT,
    runs_dir: Path | str = DEFAULT_RUNS,
    progress: bool = True,
) -> list[WrittenFigure]:
    """Train the runs the figures need (or reuse cached ones) and write every figure.

    Runs are shared: a config that several figures need trains once, and a config already
    trained under ``runs_dir`` is reused (see :func:`grokinterp.experiments.ensure_runs`).

    Args:
        names: figure names or unique prefixes (``fig02``); None draws them all.
        scale: the experiment sizes, :data:`PAPER_SCALE` or :data:`QUICK_SCALE`.
        out_dir: directory for ``NAME.png`` and ``NAME.json`` (the data behind the figure).
        runs_dir: directory of the cached runs.
        progress: show a progress bar over runs and over checkpoint analyses.

    Returns:
        One :class:`WrittenFigure` per figure, in order.
    """
    chosen = resolve_names(names)
    out_dir, runs_dir = Path(out_dir), Path(runs_dir)
    ensure_runs(planned_runs(chosen, scale), runs_dir, progress=progress)

    written = []
    for name in chosen:
        spec = FIGURES[name]
        started = time.perf_counter()
        conditions = spec.conditions(scale)
        run_dirs = {
            label: [run_directory(cfg, runs_dir) for cfg in seeds]
            for label, seeds in conditions.items()
        }
        logger.info("drawing %s", name)
        output = spec.make(scale, run_dirs, progress)
        png = save_figure(output.figure, out_dir / f"{name}.png")
        elapsed = time.perf_counter() - started
        data_path = out_dir / f"{name}.json"
        write_json(data_path, {
            "figure": name,
            "title": spec.title,
            "source": spec.source,
            "scale": scale.as_dict(),
            "runs_dir": str(runs_dir),
            "conditions": {label: [d.name for d in dirs] for label, dirs in run_dirs.items()},
            "data": output.data,
            "elapsed_s": round(elapsed, 3),
        })
        written.append(WrittenFigure(name=name, png=png, data=data_path, elapsed_s=elapsed))
    return written


def add_figure_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options shared by ``grokinterp figures`` and the scripts in ``analyses/``."""
    parser.add_argument(
        "--quick", action="store_true",
        help=f"small models and budgets (p = {QUICK_SCALE.p}, {QUICK_SCALE.steps} steps, "
             f"{QUICK_SCALE.seeds} seed) for a preview in minutes; the default reproduces the "
             f"paper's settings (p = {PAPER_SCALE.p}, {PAPER_SCALE.seeds} seeds)",
    )
    parser.add_argument("--seeds", type=int, help="seeds per condition (default 3, or 1 with --quick)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"directory for the PNG and JSON files (default {DEFAULT_OUT})")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS,
                        help=f"directory of cached training runs (default {DEFAULT_RUNS})")
    parser.add_argument("--quiet", action="store_true", help="hide progress bars")


def script_main(name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of a figure script: parse the shared options, draw ``name``, print the files."""
    spec = FIGURES[resolve_names([name])[0]]
    parser = argparse.ArgumentParser(description=f"{spec.title} ({spec.source}).")
    add_figure_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        scale = scale_for(args.quick, args.seeds)
    except ValueError as error:
        parser.error(str(error))
    for figure in run_figures([spec.name], scale, args.out, args.runs, progress=not args.quiet):
        print(f"{figure.png}\n{figure.data}")
    return 0
