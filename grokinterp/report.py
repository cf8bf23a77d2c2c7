"""Analysis reports: results of the analysis modules → ``report.md``, ``report.json``, figures.

:func:`build_report` takes a checkpoint file or a run directory. For a run directory it analyses
the latest checkpoint, adds the history recorded during training and follows the analysis over
a subsample of the run's checkpoints (the trajectory section). Each section is computed by
functions of :mod:`grokinterp.analysis`; this module only gathers their results, draws the
figures through :mod:`grokinterp.plotting` and writes the files. The JSON layout is documented,
key by key, in ``docs/report.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from grokinterp import plotting
from grokinterp.analysis.coupling import UpdateFrequencies
from grokinterp.analysis.spectra import DEFAULT_RANK_RTOL
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
from grokinterp.devices import resolve_device
from grokinterp.models import HookedMLP, embedding_names
from grokinterp.tasks import PairData, Split, all_pairs, make_split
from grokinterp.training.evaluate import evaluate

logger = logging.getLogger(__name__)

REPORT_VERSION = 2
HESSIAN_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class ReportOptions:
    """Settings of a report's analyses. The defaults aim at a short report of the p = 97 MLP.

    Attributes:
        hessian_k: largest Hessian eigenvalues per block.
        hessian_k_smallest: smallest Hessian eigenvalues per block.
        hessian_tol: ARPACK's relative tolerance for the largest eigenvalues.
        hessian_tol_smallest: tolerance for the smallest, relative to λ_max (see
            `grokinterp.analysis.curvature.block_curvature`).
        hessian_dtype: "float32" or "float64", the dtype of the Hessian-vector products.
        hessian_chunk_size: training samples per chunk of the Hessian, or None for all at once.
        hessian_method: the HVP method, "auto", "fwd_rev" or "double_backward".
        hutchinson_samples: random vectors of the trace estimates (0 skips them, else >= 2).
        tau_factor: τ of the saddle verdict as a fraction of max |λ| of the block.
        mixed_tol: Lanczos tolerance of the E–W mixed Hessian block norm.
        rank_rtol: singular values above rank_rtol · σ_max count towards a rank.
        neuron_threshold: variance share for a neuron to join a frequency cluster.
        key_min_share: share of the clustered neurons that makes a cluster's frequency key.
        stagnation_norm_fraction, stagnation_count_fraction: the stagnant-token criterion (see
            `grokinterp.analysis.dynamics.stagnant_tokens`).
        heatmap_steps: recorded gradient steps to draw, or None for at most the first four.
        max_checkpoints: maximum number of checkpoints in the trajectory, initialisation included.
        trajectory_hessian: whether trajectory points compute Hessian eigenvalues.
        trajectory_tol: Lanczos tolerance of the trajectory's k = 1 eigenvalues.
        seed: seeds the Lanczos start vectors and the trace's random vectors.
    """

    hessian_k: int = 3
    hessian_k_smallest: int = 1
    hessian_tol: float = 1e-4
    hessian_tol_smallest: float = 1e-3
    hessian_dtype: str = "float32"
    hessian_chunk_size: int | None = None
    hessian_method: str = "double_backward"
    hutchinson_samples: int = 8
    tau_factor: float = 1e-3
    mixed_tol: float = 1e-3
    rank_rtol: float = DEFAULT_RANK_RTOL
    neuron_threshold: float = 0.85
    key_min_share: float = 0.05
    stagnation_norm_fraction: float = 0.5
    stagnation_count_fraction: float = 0.5
    heatmap_steps: tuple[int, ...] | None = None
    max_checkpoints: int = 10
    trajectory_hessian: bool = True
    trajectory_tol: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hessian_dtype not in HESSIAN_DTYPES:
            raise ValueError(
                f"hessian_dtype={self.hessian_dtype!r} is unknown: choose one of "
                f"{', '.join(HESSIAN_DTYPES)}."
            )
        if self.hessian_method not in ("auto", "fwd_rev", "double_backward"):
            raise ValueError(
                f"hessian_method={self.hessian_method!r} is unknown: choose auto, fwd_rev or "
                "double_backward."
            )
        for name in ("hessian_k", "hessian_k_smallest"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is invalid: it must be >= 1.")
        for name in ("hessian_tol", "hessian_tol_smallest", "mixed_tol", "trajectory_tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: it must be > 0.")
        if self.hutchinson_samples == 1 or self.hutchinson_samples < 0:
            raise ValueError(
                f"hutchinson_samples={self.hutchinson_samples} is invalid: use 0 to skip the "
                "trace or at least 2."
            )
        if self.max_checkpoints < 2:
            raise ValueError(
                f"max_checkpoints={self.max_checkpoints} is invalid: a trajectory needs at least 2."
            )

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of ``hessian_dtype``."""
        return HESSIAN_DTYPES[self.hessian_dtype]


@dataclass
class AnalysisContext:
    """The inputs of every section: the checkpoint, its run (if any), the task's data, options."""

    checkpoint: Checkpoint
    run_dir: Path | None
    is_run: bool
    manifest: dict[str, Any] | None
    pairs: PairData
    split: Split
    train_tokens: torch.Tensor
    train_labels: torch.Tensor
    test_tokens: torch.Tensor
    test_labels: torch.Tensor
    device: torch.device
    progress: bool
    options: ReportOptions

    @property
    def model(self) -> torch.nn.Module:
        return self.checkpoint.model

    @property
    def p(self) -> int:
        return self.checkpoint.config.task.p

    @property
    def has_embedding(self) -> bool:
        return bool(embedding_names(self.model))

    @property
    def grok(self) -> dict[str, int | None]:
        return dict((self.manifest or {}).get("grok") or {})


@dataclass
class SectionResult:
    """A section's JSON-ready data, its figures by file stem, and Markdown lines."""

    data: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)
    markdown: list[str] = field(default_factory=list)


def _skipped(reason: str) -> SectionResult:
    return SectionResult(data={"skipped": reason}, markdown=[f"Skipped: {reason}."])


def _finite(value: float | None) -> float | None:
    """JSON has no inf or NaN, so an undefined ratio is written as null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


# ---------------------------------------------------------------------------------------------
# Sections


def _accuracy_section(ctx: AnalysisContext) -> SectionResult:
    train = evaluate(ctx.model, ctx.train_tokens, ctx.train_labels)
    test = evaluate(ctx.model, ctx.test_tokens, ctx.test_labels)
    data: dict[str, Any] = {
        "step": ctx.checkpoint.step,
        "train_acc": train.accuracy,
        "test_acc": test.accuracy,
        "train_loss": train.loss,
        "test_loss": test.loss,
        "n_train": len(ctx.split.train),
        "n_test": len(ctx.split.test),
        "manifest": None,
        "matches_manifest": None,
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
        f"| set | pairs | accuracy | loss (nats) |\n|---|---|---|---|\n"
        f"| train | {data['n_train']} | {train.accuracy:.4f} | {train.loss:.4g} |\n"
        f"| test | {data['n_test']} | {test.accuracy:.4f} | {test.loss:.4g} |",
    ]
    if data["matches_manifest"] is not None:
        verdict = "match" if data["matches_manifest"] else "DO NOT match"
        markdown.append(f"Recomputed from the weights, these {verdict} the manifest's final values.")
    return SectionResult(data=data, markdown=markdown)


def _history_section(ctx: AnalysisContext) -> SectionResult:
    if ctx.run_dir is None:
        return _skipped("a checkpoint outside a run directory has no training history")
    metrics = read_metrics(ctx.run_dir)
    keys = ("step", "train_acc", "test_acc", "train_loss", "test_loss")
    data = {
        "grok": ctx.grok,
        "curves": {key: [row[key] for row in metrics] for key in keys},
    }
    figure = plotting.plot_training_curves(
        metrics, ctx.grok, title=f"{ctx.checkpoint.config.name}: training curves"
    )
    markdown = [
        f"Train accuracy ≥ 0.99 first at step {ctx.grok.get('train_step')}, test accuracy ≥ 0.99 "
        f"first at step {ctx.grok.get('test_step')} (evaluation steps).",
        "![training curves](figures/training_curves.png)",
    ]
    return SectionResult(data=data, figures={"training_curves": figure}, markdown=markdown)


def _fourier_section(ctx: AnalysisContext) -> SectionResult:
    from grokinterp.analysis.fourier import (
        embedding_spectrum,
        key_frequencies,
        residue_spectrum,
        spectrum_sparsity,
    )

    step = ctx.checkpoint.step
    data: dict[str, Any] = {
        "key_frequency_rule": "fewest non-constant frequencies holding 95 % of the non-constant energy",
        "embedding_spectrum": None,
        "key_frequencies": None,
        "top_frequencies": None,
        "embedding_gini": None,
        "embedding_ipr": None,
    }
    figures: dict[str, Figure] = {}
    markdown: list[str] = []

    if ctx.has_embedding:
        W_E = ctx.model.embed.W_E.detach().double().cpu()
        spectrum = embedding_spectrum(W_E, ctx.p)
        keys = key_frequencies(spectrum)
        order = torch.argsort(spectrum[1:], descending=True)[:5] + 1
        sparsity = spectrum_sparsity(W_E, ctx.p, axis=0)
        data.update(
            embedding_spectrum=spectrum.tolist(),
            key_frequencies=keys,
            top_frequencies=[{"frequency": int(k), "norm": float(spectrum[k])} for k in order],
            embedding_gini=sparsity.gini,
            embedding_ipr=sparsity.inverse_participation_ratio,
        )
        figures["embedding_spectrum"] = plotting.plot_spectrum(
            spectrum.tolist(),
            keys,
            title=f"Embedding spectrum (DFT of W_E over residues mod {ctx.p}, step {step})",
            ylabel="‖DFT of W_E‖₂ over d_embed",
        )
        tops = ", ".join(f"{t['frequency']} ({t['norm']:.2f})" for t in data["top_frequencies"])
        markdown += [
            f"Embedding key frequencies: {keys} (Gini {sparsity.gini:.3f}, IPR "
            f"{sparsity.inverse_participation_ratio:.3f}). Top frequencies by norm: {tops}.",
            "![embedding spectrum](figures/embedding_spectrum.png)",
        ]
    else:
        markdown.append("The model has no learned embedding, so only W_U is analysed.")

    W_U = ctx.model.unembed.W_U.detach().double().cpu()
    unembed = residue_spectrum(W_U, ctx.p, axis=1)
    unembed_keys = key_frequencies(unembed)
    unembed_sparsity = spectrum_sparsity(W_U, ctx.p, axis=1)
    data.update(
        unembedding_spectrum=unembed.tolist(),
        unembedding_key_frequencies=unembed_keys,
        unembedding_gini=unembed_sparsity.gini,
        unembedding_ipr=unembed_sparsity.inverse_participation_ratio,
    )
    figures["unembedding_spectrum"] = plotting.plot_spectrum(
        unembed.tolist(),
        unembed_keys,
        title=f"Unembedding spectrum (DFT of W_U over output residues mod {ctx.p}, step {step})",
        ylabel="‖DFT of W_U‖₂ over the hidden units",
    )
    markdown += [
        f"Unembedding key frequencies: {unembed_keys} (Gini {unembed_sparsity.gini:.3f}, IPR "
        f"{unembed_sparsity.inverse_participation_ratio:.3f}).",
        "![unembedding spectrum](figures/unembedding_spectrum.png)",
    ]
    return SectionResult(data=data, figures=figures, markdown=markdown)


def _update_frequencies(ctx: AnalysisContext) -> UpdateFrequencies:
    from grokinterp.analysis.coupling import frequencies_from_batches, frequencies_from_counts
    from grokinterp.checkpoint import TOKEN_STATS

    # The last interval between two token_stats rows matches the recent window over which the
    # adaptive controller measures f_E; without a run the batch size predicts it.

    cfg = ctx.checkpoint.config
    if ctx.run_dir is not None:
        rows = [row for row in read_metrics(ctx.run_dir, TOKEN_STATS) if row["step"] <= ctx.checkpoint.step]
        if len(rows) >= 2 and rows[-1]["step"] > rows[-2]["step"]:
            return frequencies_from_counts(
                rows[-2]["appearance_count"], rows[-1]["appearance_count"], rows[-2]["step"], rows[-1]["step"]
            )
    return frequencies_from_batches(ctx.p, cfg.task.d_vocab, cfg.train.batch_size, ctx.train_tokens)


def _optimizer_learning_rates(ctx: AnalysisContext) -> dict[str, float] | None:
    groups = (ctx.checkpoint.meta.get("optim") or {}).get("param_groups") or []
    rates = {group.get("name"): float(group["lr"]) for group in groups if "lr" in group}
    return rates if {"embed", "rest"} <= set(rates) else None


def _coupling_section(ctx: AnalysisContext) -> SectionResult:
    from grokinterp.analysis.coupling import bilinear_coupling, update_balance
    from grokinterp.analysis.curvature import answer_loss_fn
    from grokinterp.analysis.hessian import mixed_block_norm
    from grokinterp.analysis.spectra import singular_values
    from grokinterp.models import first_layer_matrix

    options = ctx.options
    has_E = ctx.has_embedding
    result = bilinear_coupling(
        ctx.model,
        ctx.train_tokens if has_E else None,
        ctx.train_labels if has_E else None,
        rank_rtol=options.rank_rtol,
    )
    data: dict[str, Any] = {
        "W_name": result.W_name,
        "E": result.E.as_dict() if result.E else None,
        "W": result.W.as_dict(),
        "EW": result.EW.as_dict() if result.EW else None,
        "sigma_ratio_E_over_W": _finite(result.sigma_ratio),
        "rank_rtol": result.rank_rtol,
        "gradients": None,
        "update_balance": None,
        "mixed_hessian_norm": None,
    }
    markdown: list[str] = []
    summaries = {"E": result.E, "W": result.W, "EW": result.EW}
    rows = "\n".join(
        f"| {name} | {'×'.join(map(str, s.shape))} | {s.sigma_max:.4g} | {s.rank} | {s.effective_rank:.1f} |"
        for name, s in summaries.items()
        if s is not None
    )
    markdown.append(
        f"W is `{result.W_name}` as a [d_embed, ·] matrix whose rows multiply one token's embedding.\n\n"
        "| matrix | shape | σ_max | rank | effective rank |\n|---|---|---|---|---|\n" + rows
    )

    W = first_layer_matrix(ctx.model)
    values = {"W": singular_values(W).tolist()}
    if has_E:
        E = ctx.model.embed.W_E.detach()
        values = {
            "E": singular_values(E).tolist(),
            "W": values["W"],
            "EW": singular_values(E.double() @ W.double()).tolist(),
        }
    figure = plotting.plot_singular_values(
        values,
        options.rank_rtol,
        title=f"Singular values (step {ctx.checkpoint.step}; dotted: {options.rank_rtol:g}·σ_max)",
    )

    if not has_E:
        markdown.append("The model has no learned embedding, so there is no E–W coupling.")
        markdown.append("![singular values](figures/singular_values.png)")
        return SectionResult(data=data, figures={"singular_values": figure}, markdown=markdown)

    relation = result.gradients
    data["gradients"] = {
        "data": "train",
        "loss": result.loss,
        "grad_norm_E": relation.grad_norm_E,
        "grad_norm_W": relation.grad_norm_W,
        "grad_ratio_E_over_W": _finite(relation.grad_ratio),
        "predicted_ratio": _finite(relation.predicted_ratio),
        "agreement": _finite(relation.agreement),
        "upstream_norm": relation.upstream_norm,
        "alignment_E": _finite(relation.alignment_E),
        "alignment_W": _finite(relation.alignment_W),
    }
    markdown.append(
        f"σ_max(E) / σ_max(W) = {result.sigma_ratio:.4g}. On the training set, "
        f"‖∇_E L‖ = {relation.grad_norm_E:.4g} and ‖∇_W L‖ = {relation.grad_norm_W:.4g}: their ratio "
        f"{relation.grad_ratio:.4g} against σ_max(W)/σ_max(E) = {relation.predicted_ratio:.4g}, a "
        f"quotient of {relation.agreement:.3g} (1 when the bilinear prediction is exact)."
    )
    if relation.alignment_E is not None:
        markdown.append(
            f"With G = ∂L/∂(EW), ‖G‖ = {relation.upstream_norm:.4g}; the alignment factors "
            f"‖∇_E L‖/(σ_max(W)‖G‖) = {relation.alignment_E:.3g} and ‖∇_W L‖/(σ_max(E)‖G‖) = "
            f"{relation.alignment_W:.3g} (each ≤ 1; their quotient is the quotient above)."
        )
    else:
        markdown.append(
            "E also reaches the loss through the queries, keys and the residual stream, so the "
            "bilinear relation covers only part of ∇_E L here."
        )

    rates = _optimizer_learning_rates(ctx)
    if rates is not None:
        cfg = ctx.checkpoint.config
        frequencies = _update_frequencies(ctx)
        balance = update_balance(
            result,
            frequencies,
            rates["embed"],
            rates["rest"],
            k=cfg.optim.adaptive_k,
            c_min=cfg.optim.adaptive_c_min,
            c_max=cfg.optim.adaptive_c_max,
        )
        data["update_balance"] = {
            "lr_E": balance.lr_E,
            "lr_W": balance.lr_W,
            "lr_ratio": balance.lr_ratio,
            "f_E": frequencies.f_E,
            "f_W": frequencies.f_W,
            "frequency_source": frequencies.source,
            "frequency_window": list(frequencies.window) if frequencies.window else None,
            "effective_update_ratio": _finite(balance.effective_update_ratio),
            "k": balance.k,
            "adaptive_ratio": _finite(balance.adaptive_ratio),
            "adaptive_ratio_clipped": balance.adaptive_ratio_clipped,
            "c_min": cfg.optim.adaptive_c_min,
            "c_max": cfg.optim.adaptive_c_max,
        }
        window = (
            f"measured over steps {frequencies.window[0]}–{frequencies.window[1]} from token_stats.jsonl"
            if frequencies.window
            else f"from the {frequencies.source.replace('_', ' ')}"
        )
        markdown.append(
            f"Learning rates: η_E = {balance.lr_E:g}, η_W = {balance.lr_W:g} (c = {balance.lr_ratio:g}). "
            f"Update frequencies f_E = {frequencies.f_E:.3f}, f_W = {frequencies.f_W:g} ({window}). "
            f"Effective update ratio η_E f_E ‖∇_E L‖ / (η_W f_W ‖∇_W L‖) = "
            f"{balance.effective_update_ratio:.3g}. The adaptive rule k·σ_max(E)/σ_max(W)·f_W/f_E "
            f"(k = {balance.k:g}) would pick c = {balance.adaptive_ratio:.3g} "
            f"({balance.adaptive_ratio_clipped:.3g} after clipping to "
            f"[{cfg.optim.adaptive_c_min:g}, {cfg.optim.adaptive_c_max:g}])."
        )

    started = time.perf_counter()
    mixed = mixed_block_norm(
        answer_loss_fn(ctx.model),
        dict(ctx.model.named_parameters()),
        ctx.train_tokens,
        ctx.train_labels,
        ["embed.W_E"],
        [result.W_name],
        chunk_size=options.hessian_chunk_size,
        method=options.hessian_method,
        dtype=options.dtype,
        tol=options.mixed_tol,
        generator=torch.Generator().manual_seed(options.seed),
    )
    data["mixed_hessian_norm"] = {
        "value": mixed,
        "tol": options.mixed_tol,
        "dtype": options.hessian_dtype,
        "seconds": round(time.perf_counter() - started, 3),
    }
    markdown.append(
        f"Spectral norm of the mixed Hessian block ‖∂²L/∂E∂W‖₂ = {mixed:.4g} (Lanczos, tol "
        f"{options.mixed_tol:g})."
    )
    markdown.append("![singular values](figures/singular_values.png)")
    return SectionResult(data=data, figures={"singular_values": figure}, markdown=markdown)


def _progress_section(ctx: AnalysisContext) -> SectionResult:
    from grokinterp.analysis.progress import pair_mask, progress_measures

    options = ctx.options
    measures = progress_measures(
        ctx.model,
        ctx.checkpoint.config.task,
        pair_mask(ctx.pairs, ctx.split.train, ctx.p),
        threshold=options.neuron_threshold,
        min_share=options.key_min_share,
    )
    best = measures.fractions.max(dim=1).values
    hook = "mlp.hook_post" if isinstance(ctx.model, HookedMLP) else "blocks.0.mlp.hook_post (last position)"
    data = {
        "hook": hook,
        "d_mlp": int(measures.fractions.shape[0]),
        "cluster_threshold": measures.cluster_threshold,
        "key_min_share": options.key_min_share,
        "cluster_sizes": {str(k): v for k, v in measures.cluster_sizes.items()},
        "n_unclustered": measures.n_unclustered,
        "mean_best_fraction": float(best.mean()),
        "key_frequencies": list(measures.key_frequencies),
        "key_frequency_source": measures.key_frequency_source,
        "projection": "joint",
        "train_loss": measures.train_loss,
        "restricted_loss": measures.restricted_loss,
        "excluded_loss": measures.excluded_loss,
        "not_applicable": measures.not_applicable,
    }
    figure = plotting.plot_neuron_frequencies(
        measures.cluster_sizes,
        measures.n_unclustered,
        best.tolist(),
        measures.fractions.shape[1],
        measures.cluster_threshold,
        measures.key_frequencies,
        title=f"Neurons of {hook} over the {ctx.p}×{ctx.p} input grid (step {ctx.checkpoint.step})",
    )
    sizes = ", ".join(f"{k}: {v}" for k, v in sorted(measures.cluster_sizes.items(), key=lambda item: -item[1])[:8])
    markdown = [
        f"Neurons with ≥ {measures.cluster_threshold:.0%} of their variance in one frequency, by "
        f"frequency: {sizes or 'none'}; {measures.n_unclustered} of {data['d_mlp']} unclustered. "
        f"Key frequencies ({measures.key_frequency_source}): {list(measures.key_frequencies)}.",
    ]
    if measures.not_applicable is None:
        markdown.append(
            f"On the training pairs: full loss {measures.train_loss:.4g}, restricted loss "
            f"{measures.restricted_loss:.4g}, excluded loss {measures.excluded_loss:.4g} (nats)."
        )
    else:
        markdown.append(f"Restricted and excluded losses: not applicable, because {measures.not_applicable}.")
    markdown.append("![neuron frequencies](figures/neuron_frequencies.png)")
    return SectionResult(data=data, figures={"neuron_frequencies": figure}, markdown=markdown)


def _dynamics_section(ctx: AnalysisContext) -> SectionResult:
    from grokinterp.analysis.dynamics import (
        RECORD_HINT,
        read_embed_gradients,
        read_token_history,
        stagnant_tokens,
    )

    if not ctx.has_embedding:
        return _skipped("the model has no learned embedding")
    if ctx.run_dir is None:
        return _skipped("a checkpoint outside a run directory has no token statistics")
    try:
        history = read_token_history(ctx.run_dir, max_step=ctx.checkpoint.step)
    except FileNotFoundError as error:
        return _skipped(str(error).rstrip("."))

    options = ctx.options
    candidates = range(ctx.p)
    stagnation = stagnant_tokens(
        history,
        candidates,
        norm_fraction=options.stagnation_norm_fraction,
        count_fraction=options.stagnation_count_fraction,
    )
    frequency = history.update_frequency()[-1]
    data: dict[str, Any] = {
        "step": stagnation.step,
        "candidates": f"operand tokens 0..{ctx.p - 1}",
        "stagnation": {
            "criterion": "embed_norm < norm_fraction · median AND appearance_count < count_fraction · mean, over the candidates",
            "norm_fraction": stagnation.norm_fraction,
            "count_fraction": stagnation.count_fraction,
            "norm_threshold": stagnation.norm_threshold,
            "count_threshold": stagnation.count_threshold,
            "tokens": list(stagnation.tokens),
        },
        "embed_norm": history.embed_norm[-1].tolist(),
        "appearance_count": history.appearance_count[-1].tolist(),
        "update_frequency": frequency.tolist(),
        "grad_norm_mean": history.grad_norm_mean[-1].tolist(),
        "gradient_heatmap": None,
    }
    figures = {
        "token_dynamics": plotting.plot_token_dynamics(
            history.steps.tolist(),
            history.embed_norm.numpy(),
            history.appearance_count[-1].tolist(),
            list(candidates),
            stagnation.tokens,
            title=f"Embedding rows over training (operand tokens, up to step {stagnation.step})",
        )
    }
    operand_frequency = frequency[: ctx.p]
    markdown = [
        f"Operand update frequency per step at step {stagnation.step}: min "
        f"{float(operand_frequency.min()):.3f}, mean {float(operand_frequency.mean()):.3f}, max "
        f"{float(operand_frequency.max()):.3f}. Stagnant tokens (‖e_i‖ < "
        f"{stagnation.norm_fraction:g} × median and count < {stagnation.count_fraction:g} × mean): "
        f"{list(stagnation.tokens) or 'none'}.",
        "![token dynamics](figures/token_dynamics.png)",
    ]

    try:
        gradients = read_embed_gradients(ctx.run_dir, options.heatmap_steps)
    except FileNotFoundError as error:
        data["gradient_heatmap"] = {"steps": [], "missing": str(error)}
        markdown.append(f"No gradient heat map: {RECORD_HINT}.")
    else:
        if options.heatmap_steps is None:
            gradients = dict(list(gradients.items())[:4])
        data["gradient_heatmap"] = {"steps": list(gradients), "missing": None}
        figures["gradient_heatmap"] = plotting.plot_gradient_heatmaps(
            {step: gradient.double().numpy() for step, gradient in gradients.items()},
            title="Embedding gradient ∇_E L (rows: tokens)",
        )
        markdown.append("![gradient heat map](figures/gradient_heatmap.png)")
    return SectionResult(data=data, figures=figures, markdown=markdown)


def _curvature_dict(block) -> dict[str, Any]:
    verdict = block.verdict
    return {
        "names": list(block.names),
        "size": block.size,
        "eigenvalues": list(block.eigenvalues),
        "residuals": list(block.residuals),
        "residual_bounds": list(block.residual_bounds),
        "converged": block.converged,
        "lambda_max": block.lambda_max,
        "lambda_min": block.lambda_min,
        "grad_norm": block.grad_norm,
        "trace": block.trace,
        "trace_standard_error": block.trace_standard_error,
        "tau": verdict.tau if verdict else None,
        "verdict": verdict.verdict if verdict else None,
        "n_negative": verdict.n_negative if verdict else None,
        "n_positive": verdict.n_positive if verdict else None,
        "n_matvecs": block.n_matvecs,
        "seconds": round(block.seconds, 3),
    }


def _hessian_section(ctx: AnalysisContext) -> SectionResult:
    from grokinterp.analysis.curvature import RESIDUAL_SLACK, model_curvature

    options = ctx.options
    blocks = model_curvature(
        ctx.model,
        ctx.train_tokens,
        ctx.train_labels,
        k=options.hessian_k,
        tol=options.hessian_tol,
        dtype=options.dtype,
        chunk_size=options.hessian_chunk_size,
        k_smallest=options.hessian_k_smallest,
        tol_smallest=options.hessian_tol_smallest,
        trace_samples=options.hutchinson_samples,
        tau_factor=options.tau_factor,
        seed=options.seed,
        method=options.hessian_method,
    )
    cfg = ctx.checkpoint.config
    decay_note = (
        f"coupled L2 weight decay {cfg.optim.weight_decay:g} would add {cfg.optim.weight_decay:g} "
        "to every eigenvalue"
        if cfg.optim.name == "adam"
        else f"decoupled weight decay ({cfg.optim.name}) is not part of the loss"
    )
    data = {
        "loss": "mean cross-entropy of the answer logits on the training set, without weight decay",
        "n_samples": len(ctx.split.train),
        "dtype": options.hessian_dtype,
        "method": options.hessian_method,
        "k": options.hessian_k,
        "k_smallest": options.hessian_k_smallest,
        "tol": options.hessian_tol,
        "tol_smallest": options.hessian_tol_smallest,
        "tau_rule": f"tau = {options.tau_factor:g} * max |eigenvalue| of the block",
        "tau_factor": options.tau_factor,
        "hutchinson_samples": options.hutchinson_samples,
        "chunk_size": options.hessian_chunk_size,
        "weight_decay_note": decay_note,
        "blocks": {label: _curvature_dict(block) for label, block in blocks.items()},
    }
    rows = "\n".join(
        f"| {label} | {block.size} | {block.lambda_max:.4g} | {block.lambda_min:.3g} | "
        f"{max(block.residuals):.1e} | {block.grad_norm:.3g} | "
        f"{'—' if block.trace is None else f'{block.trace:.4g} ± {block.trace_standard_error:.2g}'} | "
        f"{block.verdict.verdict} (τ = {block.verdict.tau:.2g}) | {block.seconds:.1f} |"
        for label, block in blocks.items()
    )
    figure = plotting.plot_hessian_eigenvalues(
        {label: block.eigenvalues for label, block in blocks.items()},
        {label: block.verdict.tau for label, block in blocks.items()},
        title=f"Extreme Hessian eigenvalues of the training loss (step {ctx.checkpoint.step})",
    )
    markdown = [
        "| block | parameters | λ_max | λ_min | max residual | ‖∇L‖ | trace | verdict | s |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + rows,
        f"Lanczos (ARPACK) on Hessian-vector products in {options.hessian_dtype}: the "
        f"{options.hessian_k} largest eigenvalues to relative tolerance {options.hessian_tol:g} and "
        f"the {options.hessian_k_smallest} smallest to {options.hessian_tol_smallest:g} · λ_max. "
        f"The verdict counts eigenvalues beyond τ = {options.tau_factor:g} · max |λ|; it describes "
        f"curvature only, and ‖∇L‖ shows how far the point is from stationary. The loss is the "
        f"training cross-entropy; {decay_note}.",
        "![Hessian eigenvalues](figures/hessian_eigenvalues.png)",
    ]
    unconverged = [label for label, block in blocks.items() if not block.converged]
    if unconverged:
        markdown.insert(
            0,
            f"**Warning:** the residuals of blocks {unconverged} exceed {RESIDUAL_SLACK:g} × the "
            f"Lanczos tolerance × max |λ|, so their eigenvalues and verdicts are not reliable. "
            f"The {options.hessian_dtype} Hessian-vector products are too coarse for this "
            "point; rerun with --hessian-dtype float64.",
        )
    return SectionResult(data=data, figures={"hessian_eigenvalues": figure}, markdown=markdown)


def _trajectory_section(ctx: AnalysisContext) -> SectionResult:
    from grokinterp.analysis.trajectory import checkpoint_trajectory

    if not ctx.is_run:
        return _skipped("a trajectory needs a run directory; pass the run directory, not one checkpoint")
    options = ctx.options
    trajectory = checkpoint_trajectory(
        ctx.run_dir,
        max_checkpoints=options.max_checkpoints,
        hessian=options.trajectory_hessian,
        hessian_tol=options.trajectory_tol,
        dtype=options.dtype,
        tau_factor=options.tau_factor,
        rank_rtol=options.rank_rtol,
        device=ctx.device,
        progress=ctx.progress,
        method=options.hessian_method,
    )
    points = [
        {key: (_finite(value) if isinstance(value, float) else value) for key, value in dataclasses.asdict(point).items()}
        for point in trajectory.points
    ]
    data = {
        "available_steps": list(trajectory.available_steps),
        "steps": [point["step"] for point in points],
        "max_checkpoints": options.max_checkpoints,
        "hessian_k": trajectory.hessian_k,
        "hessian_tol": trajectory.hessian_tol,
        "tau_factor": trajectory.tau_factor,
        "rank_rtol": trajectory.rank_rtol,
        "key_frequencies": list(trajectory.key_frequencies),
        "grok": ctx.grok,
        "points": points,
    }
    figure = plotting.plot_trajectory(points, ctx.grok, title=f"{ctx.checkpoint.config.name}: over training")
    verdicts = ", ".join(f"{point['step']}: {point['verdict']}" for point in points if point["verdict"])
    markdown = [
        f"{len(points)} of {len(trajectory.available_steps)} checkpoints (step 0 is the "
        f"initialisation rebuilt from the config): steps {data['steps']}. Hessian settings: k = 1, "
        f"tol {options.trajectory_tol:g}. Restricted and excluded losses use the key frequencies "
        f"{list(trajectory.key_frequencies)} at every step.",
        f"Saddle verdicts of the whole Hessian by step: {verdicts or 'not computed'}.",
    ]
    unconverged = [point["step"] for point in points if point["hessian_converged"] is False]
    if unconverged:
        markdown.append(
            f"**Warning:** at steps {unconverged} the Hessian residuals exceed their bounds, so "
            "those eigenvalues and verdicts are not reliable; rerun with --hessian-dtype float64."
        )
    markdown += [
        "![trajectory](figures/trajectory.png)",
    ]
    return SectionResult(data=data, figures={"trajectory": figure}, markdown=markdown)


SECTION_FUNCTIONS: dict[str, Callable[[AnalysisContext], SectionResult]] = {
    "accuracy": _accuracy_section,
    "history": _history_section,
    "fourier": _fourier_section,
    "coupling": _coupling_section,
    "progress": _progress_section,
    "dynamics": _dynamics_section,
    "hessian": _hessian_section,
    "trajectory": _trajectory_section,
}
SECTIONS = tuple(SECTION_FUNCTIONS)


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    """A written report: where it is, and its JSON data."""

    out_dir: Path
    data: dict[str, Any]

    def summary(self) -> str:
        """Return the key figures as a few lines for the terminal."""
        sections = self.data["sections"]
        lines = [f"report     {self.out_dir / 'report.md'}"]
        lines += _model_lines(sections)
        lines += _hessian_lines(sections.get("hessian", {}))

        trajectory = sections.get("trajectory", {})
        if "points" in trajectory:
            verdicts = ", ".join(f"{p['step']}: {p['verdict']}" for p in trajectory["points"] if p["verdict"])
            lines.append(f"trajectory {len(trajectory['points'])} checkpoints; verdicts {verdicts or '—'}")

        timings = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.data["timings_s"].items())
        lines.append(f"time       {self.data['elapsed_s']:.1f} s ({timings})")
        return "\n".join(lines)


def _model_lines(sections: dict[str, Any]) -> list[str]:
    lines = []
    accuracy = sections.get("accuracy")
    if accuracy:
        lines.append(
            f"accuracy   train {accuracy['train_acc']:.4f}, test {accuracy['test_acc']:.4f} "
            f"at step {accuracy['step']}"
        )

    fourier = sections.get("fourier", {})
    if fourier.get("key_frequencies") is not None:
        lines.append(f"fourier    embedding key frequencies {_short_list(fourier['key_frequencies'])}")

    progress = sections.get("progress", {})
    if "key_frequencies" in progress:
        losses = ""
        if progress["restricted_loss"] is not None:
            losses = (
                f"; train loss {progress['train_loss']:.3g}, restricted "
                f"{progress['restricted_loss']:.3g}, excluded {progress['excluded_loss']:.3g}"
            )
        keys = _short_list(progress["key_frequencies"])
        lines.append(f"neurons    key frequencies {keys} (from {progress['key_frequency_source']}){losses}")

    coupling = sections.get("coupling", {})
    if coupling.get("sigma_ratio_E_over_W") is not None:
        lines.append(
            f"coupling   σ_max(E)/σ_max(W) = {coupling['sigma_ratio_E_over_W']:.4g}, "
            f"rank E/W/EW = {coupling['E']['rank']}/{coupling['W']['rank']}/{coupling['EW']['rank']}"
        )
    return lines


def _short_list(values: list[int], limit: int = 12) -> str:
    # A model that has not grokked spreads its energy over almost every frequency.
    return str(values) if len(values) <= limit else f"{len(values)} of them: {values[:limit]}..."


def _hessian_lines(hessian: dict[str, Any]) -> list[str]:
    if "blocks" not in hessian:
        return []
    blocks = hessian["blocks"]
    maxima = ", ".join(f"{label} {block['lambda_max']:.4g}" for label, block in blocks.items())
    lines = [f"hessian    λ_max {maxima}"]

    whole = blocks.get("all")
    if whole:
        lines.append(
            f"verdict    {whole['verdict']} (λ_min {whole['lambda_min']:.3g}, τ {whole['tau']:.2g}, "
            f"‖∇L‖ {whole['grad_norm']:.3g})"
        )

    unconverged = [label for label, block in blocks.items() if not block["converged"]]
    if unconverged:
        lines.append(
            f"warning    Hessian residuals too large in blocks {unconverged}: rerun with "
            "--hessian-dtype float64"
        )
    return lines


def build_context(
    path: Path,
    device: str = "cpu",
    progress: bool = True,
    options: ReportOptions | None = None,
) -> AnalysisContext:
    """Load the checkpoint that ``path`` names and the task data it was trained on."""
    path = Path(path)
    target = resolve_device(device, "device")
    checkpoint = load_checkpoint(resolve_checkpoint(path), device=target)
    checkpoint.model.eval()
    run_dir = checkpoint.run_dir
    manifest = read_manifest(run_dir) if run_dir is not None else None
    cfg = checkpoint.config
    pairs = all_pairs(cfg.task)
    split = make_split(cfg.task)
    return AnalysisContext(
        checkpoint=checkpoint,
        run_dir=run_dir,
        is_run=path.is_dir(),
        manifest=manifest,
        pairs=pairs,
        split=split,
        train_tokens=pairs.tokens[split.train].to(target),
        train_labels=pairs.labels[split.train].to(target),
        test_tokens=pairs.tokens[split.test].to(target),
        test_labels=pairs.labels[split.test].to(target),
        device=target,
        progress=progress,
        options=options or ReportOptions(),
    )


def build_report(
    path: Path | str,
    out_dir: Path | str | None = None,
    sections: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    options: ReportOptions | None = None,
) -> Report:
    """Analyse ``path`` and write ``report.md``, ``report.json`` and ``figures/*.png``.

    ``path`` is a run directory (its latest checkpoint is analysed, with the run's history and
    the trajectory over its checkpoints) or a checkpoint file. The report goes to ``out_dir``,
    by default ``PATH/report`` for a run directory and ``report_step_NNNNNN`` beside a
    checkpoint file. ``docs/report.md`` documents every key of ``report.json``.
    """
    path = Path(path)
    chosen = list(sections) if sections else list(SECTIONS)
    unknown = [name for name in chosen if name not in SECTION_FUNCTIONS]
    if unknown:
        raise ValueError(f"section {unknown[0]!r} is unknown: choose from {', '.join(SECTIONS)}.")
    if not path.exists():
        raise CheckpointError(f"{path} not found: pass a run directory or a .safetensors checkpoint.")

    started = time.perf_counter()
    ctx = build_context(path, device=device, progress=progress, options=options)
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
        "model": {
            "kind": cfg.model.kind,
            "input_mode": cfg.model.input_mode,
            "n_parameters": sum(param.numel() for param in ctx.model.parameters()),
        },
        "config": ctx.checkpoint.meta["config"],
        "options": dataclasses.asdict(ctx.options),
        "device": str(ctx.device),
        "torch_threads": torch.get_num_threads(),
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
        f"Checkpoint: `{data['checkpoint']}`. Analysis took {data['elapsed_s']:.1f} s on "
        f"{data['device']} with {data['torch_threads']} torch threads.",
        "",
    ]
    for section, result in results.items():
        lines += [f"## {section.capitalize()} ({data['timings_s'][section]:.1f} s)", ""]
        for block in result.markdown:
            lines += [block, ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
