"""Analysis reports: results of the analysis modules → ``report.md``, ``report.json``, figures.

:func:`build_report` takes a checkpoint file or a run directory. For a run directory it analyses
the latest checkpoint and adds the history recorded during training. Each section is computed by
a function of :mod:`grokinterp.analysis`; this module only gathers their results, draws the
figures through :mod:`grokinterp.plotting` and writes the files. The JSON layout is documented
in ``docs/report.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from grokinterp import plotting
from grokinterp.analysis.spectra import DEFAULT_RANK_RTOL, summarize_matrix
from grokinterp.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_path,
    load_checkpoint,
    read_manifest,
    read_metrics,
    resolve_checkpoint,
    write_json,
)
from grokinterp.models import first_layer_matrix
from grokinterp.tasks import all_pairs, make_split
from grokinterp.training.evaluate import evaluate

logger = logging.getLogger(__name__)

REPORT_VERSION = 1


@dataclass
class AnalysisContext:
    """What every section reads: the checkpoint, its run (if any) and the task's data."""

    checkpoint: Checkpoint
    run_dir: Path | None
    manifest: dict[str, Any] | None
    train_tokens: torch.Tensor
    train_labels: torch.Tensor
    test_tokens: torch.Tensor
    test_labels: torch.Tensor
    device: torch.device
    progress: bool

    @property
    def model(self) -> torch.nn.Module:
        return self.checkpoint.model

    @property
    def p(self) -> int:
        return self.checkpoint.config.task.p

    @property
    def has_embedding(self) -> bool:
        return "embed.W_E" in dict(self.model.named_parameters())


@dataclass
class SectionResult:
    """A section's JSON-ready data, its figures by file stem, and Markdown lines."""

    data: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)
    markdown: list[str] = field(default_factory=list)


def _accuracy_section(ctx: AnalysisContext) -> SectionResult:
    train = evaluate(ctx.model, ctx.train_tokens, ctx.train_labels)
    test = evaluate(ctx.model, ctx.test_tokens, ctx.test_labels)
    data: dict[str, Any] = {
        "step": ctx.checkpoint.step,
        "train_acc": train.accuracy,
        "test_acc": test.accuracy,
        "train_loss": train.loss,
        "test_loss": test.loss,
    }
    final = (ctx.manifest or {}).get("final") or {}
    if final.get("step") == ctx.checkpoint.step:
        data["manifest"] = {k: final[k] for k in ("train_acc", "test_acc", "train_loss", "test_loss")}
        data["matches_manifest"] = bool(
            final["train_acc"] == train.accuracy
            and final["test_acc"] == test.accuracy
            and abs(final["train_loss"] - train.loss) <= 1e-6 * max(1.0, abs(train.loss))
            and abs(final["test_loss"] - test.loss) <= 1e-6 * max(1.0, abs(test.loss))
        )
    markdown = [
        f"| set | accuracy | loss (nats) |\n|---|---|---|\n"
        f"| train | {train.accuracy:.4f} | {train.loss:.4g} |\n"
        f"| test | {test.accuracy:.4f} | {test.loss:.4g} |",
    ]
    if "matches_manifest" in data:
        verdict = "match" if data["matches_manifest"] else "DO NOT match"
        markdown.append(f"Recomputed from the weights, these {verdict} the manifest's final values.")
    return SectionResult(data=data, markdown=markdown)


def _fourier_section(ctx: AnalysisContext) -> SectionResult:
    from grokinterp.analysis.fourier import embedding_spectrum, key_frequencies, spectrum_sparsity

    if not ctx.has_embedding:
        return SectionResult(
            data={"skipped": "the model has no learned embedding"},
            markdown=["Skipped: the model has no learned embedding."],
        )
    W_E = ctx.model.embed.W_E.detach().double().cpu()
    spectrum = embedding_spectrum(W_E, ctx.p)
    keys = key_frequencies(spectrum)
    order = torch.argsort(spectrum[1:], descending=True)[:5] + 1
    top = [{"frequency": int(k), "norm": float(spectrum[k])} for k in order]
    sparsity = spectrum_sparsity(W_E, ctx.p, axis=0)
    data = {
        "embedding_spectrum": spectrum.tolist(),
        "key_frequencies": keys,
        "key_frequency_rule": "fewest non-constant frequencies holding 95 % of the non-constant energy",
        "top_frequencies": top,
        "embedding_gini": sparsity.gini,
        "embedding_ipr": sparsity.inverse_participation_ratio,
    }
    figure = plotting.plot_spectrum(
        spectrum.tolist(),
        keys,
        title=f"Embedding spectrum (DFT of W_E over residues mod {ctx.p}, step {ctx.checkpoint.step})",
        ylabel="‖DFT of W_E‖₂ over d_embed",
    )
    tops = ", ".join(f"{t['frequency']} ({t['norm']:.2f})" for t in top)
    markdown = [
        f"Key frequencies: {keys} (Gini {sparsity.gini:.3f}, IPR {sparsity.inverse_participation_ratio:.3f}).",
        f"Top frequencies by norm: {tops}.",
        "![embedding spectrum](figures/embedding_spectrum.png)",
    ]
    return SectionResult(data=data, figures={"embedding_spectrum": figure}, markdown=markdown)


def _coupling_section(ctx: AnalysisContext) -> SectionResult:
    if not ctx.has_embedding:
        return SectionResult(
            data={"skipped": "the model has no learned embedding"},
            markdown=["Skipped: the model has no learned embedding."],
        )
    E = ctx.model.embed.W_E.detach()
    W = first_layer_matrix(ctx.model)
    summaries = {
        "E": summarize_matrix(E),
        "W": summarize_matrix(W),
        "EW": summarize_matrix(E @ W),
    }
    data = {name: summary.as_dict() for name, summary in summaries.items()}
    data["sigma_ratio_E_over_W"] = summaries["E"].sigma_max / summaries["W"].sigma_max
    data["rank_rtol"] = DEFAULT_RANK_RTOL
    rows = "\n".join(
        f"| {name} | {'×'.join(map(str, s.shape))} | {s.sigma_max:.4g} | {s.rank} | {s.effective_rank:.1f} |"
        for name, s in summaries.items()
    )
    markdown = [
        "| matrix | shape | σ_max | rank | effective rank |\n|---|---|---|---|---|\n" + rows,
        f"σ_max(E) / σ_max(W) = {data['sigma_ratio_E_over_W']:.4g}. Ranks count singular values "
        f"above {DEFAULT_RANK_RTOL:g} · σ_max.",
    ]
    return SectionResult(data=data, markdown=markdown)


def _history_section(ctx: AnalysisContext) -> SectionResult:
    if ctx.run_dir is None:
        return SectionResult(
            data={"skipped": "a single checkpoint has no training history"},
            markdown=["Skipped: analyse the run directory for the training history."],
        )
    metrics = read_metrics(ctx.run_dir)
    grok = (ctx.manifest or {}).get("grok") or {}
    keys = ("step", "train_acc", "test_acc", "train_loss", "test_loss")
    data = {
        "grok": grok,
        "curves": {key: [row[key] for row in metrics] for key in keys},
    }
    figure = plotting.plot_training_curves(metrics, grok, title=f"{ctx.checkpoint.config.name}: training curves")
    markdown = [
        f"Train accuracy ≥ 0.99 first at step {grok.get('train_step')}, test accuracy ≥ 0.99 "
        f"first at step {grok.get('test_step')} (evaluation steps).",
        "![training curves](figures/training_curves.png)",
    ]
    return SectionResult(data=data, figures={"training_curves": figure}, markdown=markdown)


SECTION_FUNCTIONS: dict[str, Callable[[AnalysisContext], SectionResult]] = {
    "accuracy": _accuracy_section,
    "history": _history_section,
    "fourier": _fourier_section,
    "coupling": _coupling_section,
}
SECTIONS = tuple(SECTION_FUNCTIONS)


@dataclass
class Report:
    """A written report: where it is, its JSON data and how long each section took."""

    out_dir: Path
    data: dict[str, Any]

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [f"report     {self.out_dir / 'report.md'}"]
        accuracy = self.data["sections"].get("accuracy")
        if accuracy:
            lines.append(
                f"accuracy   train {accuracy['train_acc']:.4f}, test {accuracy['test_acc']:.4f} "
                f"at step {accuracy['step']}"
            )
        fourier = self.data["sections"].get("fourier", {})
        if "key_frequencies" in fourier:
            lines.append(f"fourier    key frequencies {fourier['key_frequencies']}")
        coupling = self.data["sections"].get("coupling", {})
        if "sigma_ratio_E_over_W" in coupling:
            lines.append(
                f"coupling   σ_max(E)/σ_max(W) = {coupling['sigma_ratio_E_over_W']:.4g}, "
                f"rank E/W/EW = {coupling['E']['rank']}/{coupling['W']['rank']}/{coupling['EW']['rank']}"
            )
        lines.append(f"time       {self.data['elapsed_s']:.1f} s")
        return "\n".join(lines)


def build_context(path: Path, device: str = "cpu", progress: bool = True) -> AnalysisContext:
    """Load the checkpoint that ``path`` names and the task data it was trained on."""
    path = Path(path)
    checkpoint = load_checkpoint(resolve_checkpoint(path), device=device)
    run_dir = checkpoint.run_dir
    manifest = read_manifest(run_dir) if run_dir is not None else None
    cfg = checkpoint.config
    pairs = all_pairs(cfg.task)
    split = make_split(cfg.task)
    target = torch.device(device)
    return AnalysisContext(
        checkpoint=checkpoint,
        run_dir=run_dir,
        manifest=manifest,
        train_tokens=pairs.tokens[split.train].to(target),
        train_labels=pairs.labels[split.train].to(target),
        test_tokens=pairs.tokens[split.test].to(target),
        test_labels=pairs.labels[split.test].to(target),
        device=target,
        progress=progress,
    )


def build_report(
    path: Path | str,
    out_dir: Path | str | None = None,
    sections: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Report:
    """Analyse ``path`` and write ``report.md``, ``report.json`` and ``figures/*.png``.

    ``path`` is a run directory (its latest checkpoint is analysed, with the run's history) or a
    checkpoint file. The report goes to ``out_dir``, by default ``PATH/report`` for a run
    directory and ``report_step_NNNNNN`` beside a checkpoint file.
    """
    path = Path(path)
    chosen = list(sections) if sections else list(SECTIONS)
    unknown = [name for name in chosen if name not in SECTION_FUNCTIONS]
    if unknown:
        raise ValueError(f"section {unknown[0]!r} is unknown: choose from {', '.join(SECTIONS)}.")
    if not path.exists():
        raise CheckpointError(f"{path} not found: pass a run directory or a .safetensors checkpoint.")

    started = time.perf_counter()
    ctx = build_context(path, device=device, progress=progress)
    if out_dir is None:
        out_dir = path / "report" if path.is_dir() else path.parent / f"report_{path.stem}"
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"

    results: dict[str, SectionResult] = {}
    timings: dict[str, float] = {}
    for name in chosen:
        section_started = time.perf_counter()
        logger.info("computing section %s", name)
        results[name] = SECTION_FUNCTIONS[name](ctx)
        timings[name] = round(time.perf_counter() - section_started, 3)

    written = []
    for result in results.values():
        for stem, figure in result.figures.items():
            written.append(str(plotting.save_figure(figure, figures_dir / f"{stem}.png").relative_to(out_dir)))

    cfg = ctx.checkpoint.config
    data = {
        "report_version": REPORT_VERSION,
        "source": str(path),
        "checkpoint": str(ctx.checkpoint.path),
        "step": ctx.checkpoint.step,
        "config": ctx.checkpoint.meta["config"],
        "sections": {name: result.data for name, result in results.items()},
        "figures": written,
        "timings_s": timings,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    write_json(out_dir / "report.json", data)
    _write_markdown(out_dir / "report.md", cfg.name, data, results)
    return Report(out_dir=out_dir, data=data)


def _write_markdown(path: Path, name: str, data: dict[str, Any], results: dict[str, SectionResult]) -> None:
    lines = [
        f"# grokinterp report: {name}, step {data['step']}",
        "",
        f"Checkpoint: `{data['checkpoint']}`. Analysis took {data['elapsed_s']:.1f} s.",
        "",
    ]
    for section, result in results.items():
        lines += [f"## {section.capitalize()}", ""]
        for block in result.markdown:
            lines += [block, ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
