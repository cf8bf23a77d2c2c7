"""Benchmark the wall time of a full analysis report (``grokinterp analyze``) per model.

Run from the repository root::

    python -m benchmarks.report_time [--quick] [--threads N] [--repeats 5]

Setup: two runs are trained into a temporary directory, then ``grokinterp.report.build_report``
analyses each of them twice with the default ``ReportOptions``:

- ``checkpoint``: the run's final checkpoint file, as ``grokinterp analyze
  RUN/checkpoints/step_NNNNNN.safetensors`` does. Every section that a single checkpoint
  supports runs (all but the trajectory, which needs the run's other checkpoints). The targets
  apply to this report: under 60 s for the transformer and 20 s for the MLP.
- ``run_directory``: the run directory, as ``grokinterp analyze RUN`` does: the same sections
  plus the trajectory over the run's checkpoints (at most ``max_checkpoints``, the
  initialisation included). Recorded without a target.

The two runs:

- ``nanda-transformer``: the reference transformer (p = 113), trained for ``--transformer-steps``
  steps (default 100) with a checkpoint every 50, so the trajectory section has checkpoints;
- ``paper-mlp``: the paper's MLP, trained with its preset (early stopping after grokking, a
  checkpoint every 500 steps) or for ``--mlp-steps`` steps when given.

The reports alternate within each repetition. The script prints one JSON object with the wall
time of each report (median over repetitions), the median time of every section as the report
records it, the list of sections and whether each checkpoint report met its target.
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

from benchmarks._common import at_least, base_parser, emit_json, environment_info, set_threads
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
        "--repeats", type=at_least(1), default=None, help="timed repetitions (default: 5, quick: 1)"
    )
    parser.add_argument(
        "--transformer-steps",
        type=at_least(1),
        default=None,
        help="training steps of the transformer run (default: 100, quick: 20)",
    )
    parser.add_argument(
        "--mlp-steps",
        type=at_least(1),
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
        targets = {
            (name, kind): target
            for name, run_dir in runs.items()
            for kind, target in (
                ("checkpoint", list_checkpoints(run_dir)[-1][1]),
                ("run_directory", run_dir),
            )
        }
        seconds: dict[tuple[str, str], list[float]] = {key: [] for key in targets}
        sections: dict[tuple[str, str], dict[str, list[float]]] = {key: {} for key in targets}
        for repetition in range(repeats):
            order = list(targets) if repetition % 2 == 0 else list(targets)[::-1]
            for key in order:
                name, kind = key
                out_dir = Path(scratch) / f"report-{name}-{kind}-{repetition}"
                start = time.perf_counter()
                report = build_report(targets[key], out_dir=out_dir, progress=False)
                seconds[key].append(time.perf_counter() - start)
                for section, value in report.data["timings_s"].items():
                    sections[key].setdefault(section, []).append(value)

        for name, run_dir in runs.items():
            results[name] = {"checkpoints": [step for step, _ in list_checkpoints(run_dir)]}
            for kind in ("checkpoint", "run_directory"):
                median = statistics.median(seconds[name, kind])
                entry = {
                    "path": str(targets[name, kind].relative_to(scratch)),
                    "seconds": seconds[name, kind],
                    "median_seconds": median,
                    "median_section_seconds": {
                        section: statistics.median(values)
                        for section, values in sections[name, kind].items()
                    },
                }
                if kind == "checkpoint":
                    entry["target_seconds"] = TARGET_SECONDS[name]
                    entry["target_met"] = median < TARGET_SECONDS[name]
                results[name][kind] = entry

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
