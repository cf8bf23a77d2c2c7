"""Benchmark the embedding-layer training methods by steps to grok, over seeds.

Run from the repository root::

    python -m benchmarks.steps_to_grok [--quick] [--threads N] [--runs DIR] [--out DIR]
        [--preset NAME] [--methods M ...] [--seeds N] [section.field=value ...]

The standard grid is the ``paper-mlp`` preset ((a + b) mod 97, embedding MLP, Adam, lr 0.01,
weight decay 0.001, batch 512, 5,000-step budget) with the methods adam, adam-lr, adaptive,
frequency and grokfast-ema, each on seeds 0-4: 25 runs. On 2 CPU cores shared with other jobs
(load average about 5) a run took 12 to 38 s, 25 s in the median, and the grid 12 minutes. A run
that groks early is short, because it stops once test accuracy has held 0.99.
Runs are cached by config hash under ``--runs``, so a second call only re-reads them.
``--quick`` runs a tiny grid instead (p = 23, 2 methods × 2 seeds, 200 steps) that checks the
script in seconds but measures nothing worth quoting.

The script prints one JSON object: the environment, the command-line settings and the
comparison of :func:`grokinterp.compare.comparison_to_dict` (per method: median steps to train
and test accuracy ≥ 0.99 with bootstrap intervals, the grokked fraction and wall time per run).
With ``--out`` it also writes comparison.md, comparison.json and comparison.png there.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks._common import at_least, base_parser, emit_json, environment_info, set_threads
from grokinterp.compare import compare_grid, comparison_to_dict, write_comparison
from grokinterp.training.config import apply_overrides
from grokinterp.training.presets import get_preset

STANDARD_METHODS = ("adam", "adam-lr", "adaptive", "frequency", "grokfast-ema")
QUICK_OVERRIDES = (
    "task.p=23",
    "model.d_embed=16",
    "model.d_mlp=64",
    "train.batch_size=64",
    "train.steps=200",
    "train.eval_every=10",
    "train.checkpoint_every=60",
)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="base config (default paper-mlp; tiny with --quick)")
    parser.add_argument("--methods", nargs="+", default=None, help=f"methods (default {' '.join(STANDARD_METHODS)})")
    parser.add_argument(
        "--seeds",
        type=at_least(1),
        default=None,
        help="seeds 0 .. N-1 (default 5; 2 with --quick)",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/cache"), help="run cache (default runs/cache)")
    parser.add_argument("--out", type=Path, default=None, help="also write comparison.md/json/png here")
    parser.add_argument("--progress", action="store_true", help="show a progress bar over runs on stderr")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    args = parser.parse_args()
    set_threads(args.threads)

    if args.quick:
        preset = args.preset or "tiny"
        methods = args.methods or ["adam", "adam-lr"]
        seeds = args.seeds or 2
        overrides = [*QUICK_OVERRIDES, *args.overrides]
    else:
        preset = args.preset or "paper-mlp"
        methods = args.methods or list(STANDARD_METHODS)
        seeds = args.seeds or 5
        overrides = list(args.overrides)

    base = apply_overrides(get_preset(preset), overrides)
    comparison = compare_grid(base, methods, seeds, args.runs, progress=args.progress)
    if args.out is not None:
        write_comparison(comparison, args.out)
    emit_json(
        {
            "benchmark": "steps_to_grok",
            "quick": args.quick,
            "preset": preset,
            "methods": methods,
            "seeds": seeds,
            "overrides": overrides,
            "runs": str(args.runs),
            "environment": environment_info(),
            "comparison": comparison_to_dict(comparison),
        }
    )


if __name__ == "__main__":
    main()
