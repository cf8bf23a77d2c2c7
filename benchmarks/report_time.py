"""Benchmark the wall time of a full analysis report (``grokinterp analyze``) per model.

Run from the repository root::

    python -m benchmarks.report_time [--quick] [--threads N] [--repeats 5]

Setup: two runs are trained into a temporary directory, then ``grokinterp.report.build_report``
analyses each run directory with every section and the default ``ReportOptions``, as
``grokinterp analyze RUN_DIR`` does:

- ``nanda-transformer``: the reference transformer (p = 113), trained for ``--transformer-steps``
  steps (default 100) with a checkpoint every 50, so the trajectory section has checkpoints;
- ``paper-mlp``: the paper's MLP, trained with its preset (early stopping after grokking, a
  checkpoint every 500 steps) or for ``--mlp-steps`` steps when given.

The two reports alternate within each repetition. The script prints one JSON object with the
wall time of each report (median over repetitions), the median time of every section as the
report records it, the list of sections and whether each model met its target.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import base_parser, emit_json, environment_info, set_threads
from grokinterp.checkpoint import list_checkpoints
from grokinterp.report import SECTIONS, build_report
from grokinterp.training.config import apply_overrides
from grokinterp.training.loop import train
from grokinterp.training.presets import get_preset

TARGET_SECONDS = {"nanda-transformer": 60.0, "paper-mlp": 20.0}


def train_runs(scratch: Path, transformer_steps: int, mlp_steps: int | None) -> dict[str, Path]:
    """Train the two runs that the reports analyse; return their run directories."""
    transformer = apply_overrides(
        get_preset("nanda-transformer"),
        [f"train.steps={transformer_steps}", "train.checkpoint_every=50", "train.eval_every=25"],
    )
    mlp = get_preset("paper-mlp")
    if mlp_steps is not None:
        mlp = apply_overrides(mlp, [f"train.steps={mlp_steps}"])

    runs = {}
    for name, cfg in (("nanda-transformer", transformer), ("paper-mlp", mlp)):
        runs[name] = scratch / name
        train(cfg, runs[name], progress=False)
    return runs


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repetitions (default: 5, quick: 1)"
    )
    parser.add_argument(
        "--transformer-steps",
        type=int,
        default=None,
        help="training steps of the transformer run (default: 100, quick: 20)",
    )
    parser.add_argument(
        "--mlp-steps",
        type=int,
        default=None,
        help="training steps of the MLP run (default: the preset's, quick: 100)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    transformer_steps = args.transformer_steps or (20 if args.quick else 100)
    mlp_steps = args.mlp_steps if args.mlp_steps is not None else (100 if args.quick else None)

    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    # HookedTransformer.to() prints "Moving model to device" (transformer-lens 3.9); stdout is
    # kept for the JSON.
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(
        prefix="grokinterp-bench-"
    ) as scratch:
        runs = train_runs(Path(scratch), transformer_steps, mlp_steps)
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        sections: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
        for repetition in range(repeats):
            for name in list(runs) if repetition % 2 == 0 else list(runs)[::-1]:
                out_dir = Path(scratch) / f"report-{name}-{repetition}"
                start = time.perf_counter()
                report = build_report(runs[name], out_dir=out_dir, progress=False)
                seconds[name].append(time.perf_counter() - start)
                for section, value in report.data["timings_s"].items():
                    sections[name].setdefault(section, []).append(value)

        for name, run_dir in runs.items():
            median = statistics.median(seconds[name])
            results[name] = {
                "checkpoints": [step for step, _ in list_checkpoints(run_dir)],
                "seconds": seconds[name],
                "median_seconds": median,
                "median_section_seconds": {
                    section: statistics.median(values) for section, values in sections[name].items()
                },
                "target_seconds": TARGET_SECONDS[name],
                "target_met": median < TARGET_SECONDS[name],
            }

    emit_json(
        {
            "benchmark": "report_time",
            "setup": {
                "sections": list(SECTIONS),
                "options": "ReportOptions() defaults",
                "transformer_steps": transformer_steps,
                "mlp_steps": mlp_steps if mlp_steps is not None else "preset (early stopping)",
                "repetitions": repeats,
                "quick": args.quick,
            },
            "environment": {**environment_info(), "torch_threads_used": torch.get_num_threads()},
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "reports": results,
        }
    )


if __name__ == "__main__":
    main()
