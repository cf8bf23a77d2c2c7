"""Trajectories of a run's analysis over its checkpoints.

For a subsample of a run's checkpoints (and its initialisation, which the config's seed
rebuilds exactly) this module computes the quantities that "Mechanistic Insights into Grokking
from the Embedding Layer" (arXiv 2505.15624) and Nanda et al. 2023 follow over training:

* accuracy and loss;
* the largest Hessian eigenvalues of the E and W blocks, and both extreme eigenvalues of the
  whole Hessian with its saddle verdict;
* the ranks of E, W and E W, and σ_max(E) / σ_max(W);
* the Fourier sparsity of W_E and W_U;
* for addition, the restricted and excluded losses.

Every checkpoint costs a few Lanczos runs, so the Hessian settings are cheaper than in a
single-checkpoint report: one eigenvalue per end (k = 1), a looser tolerance, and one Lanczos
run with full reorthogonalisation for both ends of the whole Hessian instead of two ARPACK runs
(see `grokinterp.analysis.curvature.block_curvature`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from grokinterp.analysis.coupling import bilinear_coupling
from grokinterp.analysis.curvature import DEFAULT_TAU_FACTOR, curvature_blocks, model_curvature
from grokinterp.analysis.fourier import spectrum_sparsity
from grokinterp.analysis.progress import pair_mask, progress_measures
from grokinterp.analysis.spectra import DEFAULT_RANK_RTOL
from grokinterp.checkpoint import list_checkpoints, load_checkpoint, read_manifest
from grokinterp.models import build_model
from grokinterp.tasks import TaskConfig, all_pairs, make_split
from grokinterp.training.config import config_from_dict
from grokinterp.training.evaluate import evaluate

logger = logging.getLogger(__name__)


def select_steps(steps: Sequence[int], max_count: int) -> list[int]:
    """Choose at most ``max_count`` of ``steps``, evenly spaced by index, first and last kept.

    Example:
        >>> select_steps([0, 100, 200, 300, 400, 500], 3)
        [0, 200, 500]
    """
    if max_count < 2:
        raise ValueError(f"max_count={max_count} is invalid: expected at least 2 (first and last).")
    ordered = sorted(set(steps))
    if len(ordered) <= max_count:
        return ordered
    positions = torch.linspace(0, len(ordered) - 1, max_count).round().long().tolist()
    return [ordered[position] for position in sorted(set(positions))]


@dataclass(frozen=True)
class TrajectoryPoint:
    """The analysis of one checkpoint. Quantities that do not apply to the model are None.

    Attributes:
        step: the training step; 0 is the initialisation rebuilt from the config.
        train_acc, test_acc: accuracy (fraction correct).
        train_loss, test_loss: mean cross-entropy in nats.
        lambda_max_E, lambda_max_W: largest Hessian eigenvalue of the E and W blocks.
        lambda_max, lambda_min: extreme eigenvalues of the Hessian over all parameters.
        verdict: the saddle verdict of the whole Hessian (τ = tau_factor · max |λ|).
        hessian_converged: whether every eigenpair met its residual bound (see
            `grokinterp.analysis.curvature.BlockCurvature`); False means the verdict is not
            reliable at the dtype used.
        rank_E, rank_W, rank_EW: numerical ranks at the trajectory's rank_rtol.
        sigma_ratio: σ_max(E) / σ_max(W).
        embed_gini, embed_ipr: sparsity of the W_E spectrum over the residues (non-constant
            frequencies).
        unembed_gini, unembed_ipr: the same for W_U along its output axis.
        restricted_loss, excluded_loss, grid_train_loss: progress measures on the training
            pairs, in nats (addition only).
        seconds: wall time of this point.
    """

    step: int
    train_acc: float
    test_acc: float
    train_loss: float
    test_loss: float
    lambda_max_E: float | None
    lambda_max_W: float | None
    lambda_max: float | None
    lambda_min: float | None
    verdict: str | None
    hessian_converged: bool | None
    rank_E: int | None
    rank_W: int
    rank_EW: int | None
    sigma_ratio: float | None
    embed_gini: float | None
    embed_ipr: float | None
    unembed_gini: float
    unembed_ipr: float
    restricted_loss: float | None
    excluded_loss: float | None
    grid_train_loss: float | None
    seconds: float


@dataclass(frozen=True)
class Trajectory:
    """Analysis points over a run's checkpoints, with the settings that produced them.

    Attributes:
        points: one `TrajectoryPoint` per analysed checkpoint, in step order.
        available_steps: every step that could have been analysed (0 and the checkpoints).
        key_frequencies: the frequencies used for the restricted and excluded losses at every
            point (those of the last point's neuron clusters).
        hessian_k, hessian_tol, tau_factor, rank_rtol: the settings used.
    """

    points: tuple[TrajectoryPoint, ...]
    available_steps: tuple[int, ...]
    key_frequencies: tuple[int, ...]
    hessian_k: int
    hessian_tol: float | None
    tau_factor: float
    rank_rtol: float


def _sparsity(matrix: Tensor, p: int, axis: int) -> tuple[float, float] | tuple[None, None]:
    try:
        result = spectrum_sparsity(matrix.detach().double().cpu(), p, axis=axis)
    except ValueError:
        # A matrix without energy outside the constant term has no defined sparsity.
        return None, None
    return result.gini, result.inverse_participation_ratio


def _analyse_point(
    model: nn.Module,
    step: int,
    data: dict[str, Tensor],
    task: TaskConfig,
    frequencies: Sequence[int],
    *,
    hessian: bool,
    hessian_tol: float,
    dtype: torch.dtype,
    tau_factor: float,
    rank_rtol: float,
    method: str,
) -> TrajectoryPoint:
    p = task.p
    started = time.perf_counter()
    train = evaluate(model, data["train_tokens"], data["train_labels"])
    test = evaluate(model, data["test_tokens"], data["test_labels"])

    coupling = bilinear_coupling(model, rank_rtol=rank_rtol)
    has_embedding = coupling.E is not None

    lambdas: dict[str, float | None] = {"E": None, "W": None, "max": None, "min": None}
    verdict = converged = None
    if hessian:
        blocks = curvature_blocks(model)
        curvature = model_curvature(
            model,
            data["train_tokens"],
            data["train_labels"],
            blocks={label: blocks[label] for label in ("E", "W") if label in blocks},
            k=1,
            tol=hessian_tol,
            dtype=dtype,
            both_ends=False,
            trace_samples=0,
            method=method,
            solver="lanczos",
        )
        whole = model_curvature(
            model,
            data["train_tokens"],
            data["train_labels"],
            blocks={"all": blocks["all"]},
            k=1,
            tol=hessian_tol,
            dtype=dtype,
            trace_samples=0,
            tau_factor=tau_factor,
            method=method,
            solver="lanczos",
        )["all"]
        lambdas["E"] = curvature["E"].lambda_max if "E" in curvature else None
        lambdas["W"] = curvature["W"].lambda_max
        lambdas["max"], lambdas["min"] = whole.lambda_max, whole.lambda_min
        verdict = whole.verdict.verdict
        converged = whole.converged and all(block.converged for block in curvature.values())

    embed_gini = embed_ipr = None
    if has_embedding:
        embed_gini, embed_ipr = _sparsity(model.embed.W_E, p, axis=0)
    unembed_gini, unembed_ipr = _sparsity(model.unembed.W_U, p, axis=1)

    restricted = excluded = grid_loss = None
    if task.op == "add" and frequencies:
        measures = progress_measures(model, task, data["train_mask"], frequencies=list(frequencies))
        restricted, excluded = measures.restricted_loss, measures.excluded_loss
        grid_loss = measures.train_loss

    return TrajectoryPoint(
        step=step,
        train_acc=train.accuracy,
        test_acc=test.accuracy,
        train_loss=train.loss,
        test_loss=test.loss,
        lambda_max_E=lambdas["E"],
        lambda_max_W=lambdas["W"],
        lambda_max=lambdas["max"],
        lambda_min=lambdas["min"],
        verdict=verdict,
        hessian_converged=converged,
        rank_E=coupling.E.rank if has_embedding else None,
        rank_W=coupling.W.rank,
        rank_EW=coupling.EW.rank if has_embedding else None,
        sigma_ratio=coupling.sigma_ratio,
        embed_gini=embed_gini,
        embed_ipr=embed_ipr,
        unembed_gini=unembed_gini,
        unembed_ipr=unembed_ipr,
        restricted_loss=restricted,
        excluded_loss=excluded,
        grid_train_loss=grid_loss,
        seconds=time.perf_counter() - started,
    )


def checkpoint_trajectory(
    run_dir: Path | str,
    max_checkpoints: int = 10,
    include_init: bool = True,
    hessian: bool = True,
    hessian_tol: float = 1e-3,
    dtype: torch.dtype = torch.float32,
    tau_factor: float = DEFAULT_TAU_FACTOR,
    rank_rtol: float = DEFAULT_RANK_RTOL,
    key_frequencies: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    method: str = "double_backward",
) -> Trajectory:
    """Analyse at most ``max_checkpoints`` checkpoints of a run, evenly spread over training.

    The initialisation (step 0, rebuilt from the config's seeds) counts as a checkpoint when
    ``include_init`` is true. The first and the last candidate are always analysed. The
    restricted and excluded losses of every point use the key frequencies of the last point's
    neuron clusters, unless ``key_frequencies`` is given, so that one set of frequencies is
    followed over training as Nanda et al. 2023 do.

    Args:
        run_dir: a run directory with checkpoints.
        max_checkpoints: maximum number of points to analyse, at least 2.
        include_init: whether step 0 is a candidate.
        hessian: False skips the eigenvalues (they dominate the cost).
        hessian_tol: residual tolerance of the k = 1 Lanczos runs, relative to the largest
            |Ritz value|.
        dtype: dtype of the Hessian-vector products.
        tau_factor: τ of the saddle verdicts, as a fraction of max |λ|.
        rank_rtol: relative tolerance of the numerical ranks.
        key_frequencies: frequencies for the progress measures, or None (see above).
        device: where to run the models.
        progress: show a progress bar.
        method: the Hessian-vector product method (see `model_curvature`).

    Returns:
        A `Trajectory`.
    """
    run_dir = Path(run_dir)
    checkpoints = dict(list_checkpoints(run_dir))
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} has no checkpoints: train the run first.")
    cfg = config_from_dict(read_manifest(run_dir)["config"])
    candidates = sorted(checkpoints) + ([0] if include_init and 0 not in checkpoints else [])
    chosen = select_steps(candidates, max_checkpoints)

    target = torch.device(device)
    pairs, split = all_pairs(cfg.task), make_split(cfg.task)
    data = {
        "train_tokens": pairs.tokens[split.train].to(target),
        "train_labels": pairs.labels[split.train].to(target),
        "test_tokens": pairs.tokens[split.test].to(target),
        "test_labels": pairs.labels[split.test].to(target),
        "train_mask": pair_mask(pairs, split.train, cfg.task.p),
    }

    def load(step: int) -> nn.Module:
        if step in checkpoints:
            return load_checkpoint(checkpoints[step], device=target).model
        return build_model(cfg.model, cfg.task).to(target)

    frequencies: tuple[int, ...] = tuple(key_frequencies) if key_frequencies is not None else ()
    if cfg.task.op == "add" and key_frequencies is None:
        final = progress_measures(load(chosen[-1]), cfg.task, data["train_mask"])
        frequencies = final.key_frequencies

    points = []
    for step in tqdm(chosen, disable=not progress, desc="trajectory", unit="checkpoint"):
        model = load(step)
        model.eval()
        point = _analyse_point(
            model,
            step,
            data,
            cfg.task,
            frequencies,
            hessian=hessian,
            hessian_tol=hessian_tol,
            dtype=dtype,
            tau_factor=tau_factor,
            rank_rtol=rank_rtol,
            method=method,
        )
        points.append(point)
        logger.info("trajectory point at step %d took %.1f s", step, points[-1].seconds)

    return Trajectory(
        points=tuple(points),
        available_steps=tuple(sorted(candidates)),
        key_frequencies=frequencies,
        hessian_k=1,
        hessian_tol=hessian_tol if hessian else None,
        tau_factor=tau_factor,
        rank_rtol=rank_rtol,
    )

