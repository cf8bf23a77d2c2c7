"""Every figure of arXiv 2505.15624 and our extensions, regenerated from cached runs.

``grokinterp figures`` (or :func:`run_figures`) trains the runs each figure needs, reusing any
that already exist under the runs directory, and writes ``NAME.png`` with ``NAME.json`` (the
numbers behind it) for each figure in :data:`FIGURES`. The scripts in ``analyses/`` draw one
figure each with the same options.

Example:
    >>> from grokinterp.figures import QUICK_SCALE, run_figures
    >>> written = run_figures(["fig08"], QUICK_SCALE, out_dir="figures", runs_dir="runs")
    ... # doctest: +SKIP
"""

from __future__ import annotations

from grokinterp.figures import extensions, paper  # noqa: F401 - importing registers the figures
from grokinterp.figures.core import (
    FIGURES,
    PAPER_SCALE,
    QUICK_SCALE,
    FigureOutput,
    FigureScale,
    FigureSpec,
    mlp_config,
    over_seeds,
    resolve_names,
    transformer_config,
)
from grokinterp.figures.runner import (
    WrittenFigure,
    add_figure_arguments,
    planned_runs,
    run_figures,
    scale_for,
    script_main,
)

__all__ = [
    "FIGURES",
    "PAPER_SCALE",
    "QUICK_SCALE",
    "FigureOutput",
    "FigureScale",
    "FigureSpec",
    "WrittenFigure",
    "add_figure_arguments",
    "mlp_config",
    "over_seeds",
    "planned_runs",
    "resolve_names",
    "run_figures",
    "scale_for",
    "script_main",
    "transformer_config",
]
