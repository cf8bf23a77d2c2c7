"""Command-line interface: ``grokinterp train | analyze | compare | figures``.

Every command prints its results, and every invalid input ends the command with exit status 2 and
one line, ``grokinterp: error: ...``, that names the problem and the fix.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grokinterp.checkpoint import CheckpointError
from grokinterp.training.config import apply_overrides
from grokinterp.training.presets import PRESETS, get_preset

EXIT_USAGE = 2


class CommandError(Exception):
    """An input problem to report as one line, without a traceback."""


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a preset and write a run directory",
        description="Train a model on modular arithmetic and write a run directory with "
        "manifest.json, metrics.jsonl and checkpoints.",
        epilog="Overrides are section.field=value pairs, for example task.op=multiply "
        "optim.lr=0.001 train.batch_size=0 (0 means full batch). Sections: task, model, optim, "
        "train.",
    )
    parser.add_argument(
        "--preset", default="paper-mlp", help=f"named config (default paper-mlp): {', '.join(PRESETS)}"
    )
    parser.add_argument("--out", type=Path, help="run directory (default runs/PRESET or runs/PRESET-seedN)")
    parser.add_argument(
        "--seed", type=int, help="seed of the data split, the initialisation and the batch order"
    )
    parser.add_argument("--steps", type=int, help="step budget (overrides train.steps)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--quiet", action="store_true", help="hide the progress bar")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    parser.set_defaults(handler=_run_train)


def _add_analyze(subparsers: argparse._SubParsersAction) -> None:
    from grokinterp.report import HESSIAN_DTYPES, SECTIONS, ReportOptions

    defaults = ReportOptions()
    parser = subparsers.add_parser(
        "analyze",
        help="analyse a run directory or checkpoint and write a report",
        description="Analyse a checkpoint (or a run directory's final checkpoint, its history and "
        "its checkpoints over training) and write report.md, report.json and figures/*.png. "
        "docs/report.md documents every key of report.json.",
    )
    parser.add_argument("path", type=Path, help="run directory or checkpoints/step_NNNNNN.safetensors file")
    parser.add_argument("--out", type=Path, help="report directory (default PATH/report, or beside the checkpoint)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=None,
        metavar="SECTION",
        help=f"sections to compute (default: all): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the analysis, cpu or cuda (default cpu)")
    parser.add_argument(
        "--max-checkpoints",
        type=int,
        default=defaults.max_checkpoints,
        help="maximum number of checkpoints in the trajectory section, the initialisation included "
        f"(default {defaults.max_checkpoints})",
    )
    parser.add_argument(
        "--hessian-dtype",
        choices=tuple(HESSIAN_DTYPES),
        default=defaults.hessian_dtype,
        help=f"dtype of the Hessian-vector products (default {defaults.hessian_dtype})",
    )
    parser.add_argument(
        "--hessian-k",
        type=int,
        default=defaults.hessian_k,
        help=f"largest Hessian eigenvalues per block (default {defaults.hessian_k})",
    )
    parser.add_argument(
        "--hessian-tol",
        type=float,
        default=defaults.hessian_tol,
        help=f"relative Lanczos tolerance of the largest eigenvalues (default {defaults.hessian_tol:g})",
    )
    parser.add_argument(
        "--trace-samples",
        type=int,
        default=defaults.hutchinson_samples,
        help="random vectors per Hutchinson trace estimate, 0 to skip the traces "
        f"(default {defaults.hutchinson_samples})",
    )
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads for the analysis (default: torch's choice)"
    )
    parser.add_argument("--quiet", action="store_true", help="hide progress bars")
    parser.set_defaults(handler=_run_analyze)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grokinterp",
        description="Train and analyse models that grok modular arithmetic.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(subparsers)
    _add_analyze(subparsers)
    for register in _EXTRA_COMMANDS:
        register(subparsers)
    return parser


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    from grokinterp.methods import METHODS

    parser = subparsers.add_parser(
        "compare",
        help="compare training methods by steps to grok over seeds",
        description="Train every method on every seed (reusing cached runs) or read existing "
        "run directories, and write comparison.md, comparison.json and comparison.png with "
        "the median steps to train and test accuracy >= 0.99, the fraction of seeds that "
        "grokked and the wall time per run.",
        epilog=f"Methods: {', '.join(METHODS)}. Overrides (section.field=value) apply to every "
        "method, so all methods share the learning rate, weight decay, batch size and budget "
        "unless the method is that change.",
    )
    parser.add_argument(
        "--preset", default="paper-mlp", help=f"base config (default paper-mlp): {', '.join(PRESETS)}"
    )
    parser.add_argument(
        "--methods", nargs="+", metavar="METHOD",
        help="methods to compare (default: adam adam-lr adaptive frequency grokfast-ema)",
    )
    parser.add_argument("--seeds", type=int, help="number of seeds, 0 .. N-1 (default 5)")
    parser.add_argument("--steps", type=int, help="step budget of every run (overrides train.steps)")
    parser.add_argument(
        "--runs", type=Path, default=Path("runs/cache"),
        help="cache directory of the runs (default runs/cache)",
    )
    parser.add_argument(
        "--from-runs", nargs="+", type=Path, metavar="RUN_DIR",
        help="compare these completed run directories instead of training, grouped by the "
        "method in each run's name (NAME+METHOD) or else by the whole name",
    )
    parser.add_argument("--out", type=Path, help="output directory (default runs/compare/PRESET)")
    parser.add_argument(
        "--bootstrap", type=int, default=10_000,
        help="bootstrap resamples for the median's 95%% interval (default 10000)",
    )
    parser.add_argument("--quiet", action="store_true", help="hide the progress bar")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    parser.set_defaults(handler=_run_compare)


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_compare]

DEFAULT_COMPARE_METHODS = ("adam", "adam-lr", "adaptive", "frequency", "grokfast-ema")


def _add_figures(subparsers: argparse._SubParsersAction) -> None:
    from grokinterp.figures import FIGURES, add_figure_arguments

    parser = subparsers.add_parser(
        "figures",
        help="regenerate the paper's figures and ours from cached runs",
        description="Train the runs each figure needs (reusing cached runs with the same config) "
        "and write NAME.png with NAME.json, the data behind it, for every figure.",
        epilog=f"Figures: {', '.join(FIGURES)}.",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME",
        help="figures to draw, by name or unique prefix such as fig02 (default: all)",
    )
    add_figure_arguments(parser)
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    parser.set_defaults(handler=_run_figures)


_EXTRA_COMMANDS.append(_add_figures)


def _run_figures(args: argparse.Namespace) -> int:
    from grokinterp.figures import FIGURES, resolve_names, run_figures, scale_for

    if args.list:
        for name, spec in FIGURES.items():
            print(f"{name:34s} {spec.source:24s} {spec.title}")
        return 0
    names = resolve_names(args.only)
    scale = scale_for(args.quick, args.seeds)
    written = run_figures(names, scale, args.out, args.runs, progress=not args.quiet)
    print(f"wrote {len(written)} figure(s) at the {scale.name} scale ({scale.seeds} seed(s)) "
          f"from runs in {args.runs}:")
    for figure in written:
        print(f"  {figure.png}  (data {figure.data.name}, {figure.elapsed_s:.1f} s)")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from grokinterp.training.loop import train

    cfg = get_preset(args.preset)
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides += [f"task.data_seed={args.seed}", f"model.init_seed={args.seed}",
                      f"train.batch_seed={args.seed}"]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = apply_overrides(cfg, overrides)
    if args.out is None:
        suffix = f"-seed{args.seed}" if args.seed is not None else ""
        args.out = Path("runs") / f"{args.preset}{suffix}"

    result = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    grok = f"train acc >= {cfg.train.grok_threshold} at step {result.grok_train_step}, " \
           f"test acc >= {cfg.train.grok_threshold} at step {result.grok_test_step}"
    print(f"run        {result.run_dir}")
    print(f"steps      {result.step} in {result.wall_time_s:.1f} s")
    print(f"grokking   {grok}")
    print(f"final      train acc {result.final['train_acc']:.4f}, test acc "
          f"{result.final['test_acc']:.4f}, train loss {result.final['train_loss']:.4g}, "
          f"test loss {result.final['test_loss']:.4g}")
    return 0


def _run_analyze(args: argparse.Namespace) -> int:
    import torch

    from grokinterp.report import ReportOptions, build_report

    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads {args.threads} is invalid: pass a positive number of threads.")
        torch.set_num_threads(args.threads)
    options = ReportOptions(
        max_checkpoints=args.max_checkpoints,
        hessian_dtype=args.hessian_dtype,
        hessian_k=args.hessian_k,
        hessian_tol=args.hessian_tol,
        hutchinson_samples=args.trace_samples,
    )
    report = build_report(
        args.path, out_dir=args.out, sections=args.sections, device=args.device,
        progress=not args.quiet, options=options,
    )
    print(report.summary())
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    import shlex

    from grokinterp.compare import compare_grid, compare_runs, format_table, write_comparison

    if args.from_runs:
        given = [name for name, value in (("--methods", args.methods), ("--seeds", args.seeds),
                                          ("--steps", args.steps), ("overrides", args.overrides))
                 if value]
        if given:
            raise CommandError(
                f"--from-runs reads finished runs, so {', '.join(given)} cannot apply: drop them, "
                "or drop --from-runs to train a grid."
            )
        comparison = compare_runs(args.from_runs, n_resamples=args.bootstrap)
        out = args.out or Path("runs/compare/from-runs")
        words = ["--from-runs", *map(str, args.from_runs)]
    else:
        seeds = 5 if args.seeds is None else args.seeds
        if seeds < 1:
            raise CommandError(f"--seeds {seeds} is invalid: run at least one seed.")
        overrides = list(args.overrides)
        if args.steps is not None:
            overrides.append(f"train.steps={args.steps}")
        base = apply_overrides(get_preset(args.preset), overrides)
        methods = args.methods or list(DEFAULT_COMPARE_METHODS)
        setting = " ".join([args.preset, *overrides])
        comparison = compare_grid(
            base, methods, seeds, args.runs, progress=not args.quiet, n_resamples=args.bootstrap,
            title=f"{setting}: {len(methods)} methods × {seeds} seeds",
        )
        out = args.out or Path("runs/compare") / args.preset
        words = ["--preset", args.preset, "--methods", *methods, "--seeds", str(seeds),
                 "--runs", str(args.runs), *overrides]

    # The command line is rebuilt from the parsed options so that comparison.md records the
    # complete settings, defaults included.
    command = shlex.join(["grokinterp", "compare", *words, "--out", str(out)])
    paths = write_comparison(comparison, out, command=command)
    print(format_table(comparison))
    print(f"wrote {paths['md']}, {paths['json'].name}, {paths['png'].name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except (CommandError, CheckpointError, ValueError, FileExistsError, FileNotFoundError,
            NotImplementedError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"grokinterp: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("grokinterp: interrupted; resume the run with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
