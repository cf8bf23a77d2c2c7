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
    from grokinterp.report import SECTIONS

    parser = subparsers.add_parser(
        "analyze",
        help="analyse a run directory or checkpoint and write a report",
        description="Analyse a checkpoint (or a run directory's final checkpoint and its history) "
        "and write report.md, report.json and figures/*.png.",
    )
    parser.add_argument("path", type=Path, help="run directory or checkpoints/step_NNNNNN.safetensors file")
    parser.add_argument("--out", type=Path, help="report directory (default PATH/report, or beside the checkpoint)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=None,
        help="sections to compute (default: all)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the analysis (default cpu)")
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


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


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
    from grokinterp.report import build_report

    report = build_report(
        args.path, out_dir=args.out, sections=args.sections, device=args.device,
        progress=not args.quiet,
    )
    print(report.summary())
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
