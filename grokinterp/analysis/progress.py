"""Progress measures of Nanda et al. 2023 for grokinterp models, on the full p × p input grid.

"Progress measures for grokking via mechanistic interpretability" (Nanda et al. 2023, arXiv
2301.05217) tracks a model of modular addition through the Fourier structure of its neurons and
its logits over every input pair (a, b). The mathematics lives in
:mod:`grokinterp.analysis.fourier`; this module runs a model on the grid and feeds it there:

* `grid_tokens`: the p² inputs in grid order, row a·p + b for the pair (a, b).
* `grid_activations`: the MLP's hidden activations, ``mlp.hook_post`` for the HookedMLP and
  ``blocks.0.mlp.hook_post`` at the last position for the transformer, as [a, b, d_mlp].
* `grid_logits`: the answer logits as [a, b, p].
* `progress_measures`: neuron frequency clusters, key frequencies, and the restricted and
  excluded losses on the training pairs (addition only).

Every input pair is evaluated, including b = 0 for division, whose label is undefined: the
neuron analysis needs the whole grid, and the losses average over the training pairs only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from grokinterp.analysis.fourier import (
    UNCLUSTERED,
    cluster_neurons,
    embedding_spectrum,
    grid_cross_entropy,
    key_frequencies,
    key_frequency_losses,
    neuron_frequency_fractions,
)
from grokinterp.models import HookedMLP, embedding_names
from grokinterp.tasks import PairData, Split, TaskConfig

DEFAULT_GRID_BATCH = 4096


def grid_tokens(task: TaskConfig) -> Int[Tensor, "pair pos"]:
    """Build the inputs of all p² operand pairs in grid order.

    Row ``a * p + b`` contains the pair (a, b) in the task's layout: ``[a, op, b, =]`` or
    ``[a, b, =]``. So ``values.reshape(p, p, ...)[a, b]`` belongs to (a, b).

    Example:
        >>> task = TaskConfig(p=3, layout="a_b_eq")
        >>> grid_tokens(task)[5].tolist()  # (a, b) = (1, 2), "=" is token 3
        [1, 2, 3]
    """
    residues = torch.arange(task.p)
    a = residues.repeat_interleave(task.p)
    b = residues.repeat(task.p)
    eq = torch.full_like(a, task.eq_token)
    if task.layout == "a_op_b_eq":
        return torch.stack([a, torch.full_like(a, task.op_token), b, eq], dim=1)
    return torch.stack([a, b, eq], dim=1)


def _hidden_hook(model: nn.Module) -> str:
    return "mlp.hook_post" if isinstance(model, HookedMLP) else "blocks.0.mlp.hook_post"


@torch.no_grad()
def grid_activations(
    model: nn.Module, task: TaskConfig, batch_size: int = DEFAULT_GRID_BATCH
) -> Float[Tensor, "a b d_mlp"]:
    """Run the model on every input pair and return its hidden MLP activations (float64).

    The HookedMLP's activations come from ``mlp.hook_post``; the transformer's from
    ``blocks.0.mlp.hook_post`` at the last position, where the answer is read.

    Args:
        model: a HookedMLP or a one-layer HookedTransformer.
        task: the task the model was trained on (its p and token layout).
        batch_size: inputs per forward pass, to bound memory.

    Returns:
        Activations of shape [p, p, d_mlp], entry [a, b] for the pair (a, b).
    """
    hook = _hidden_hook(model)
    tokens = grid_tokens(task).to(_device(model))
    chunks = []
    for batch in torch.split(tokens, batch_size):
        _, cache = model.run_with_cache(batch, names_filter=[hook])
        activations = cache[hook]
        chunks.append(activations[:, -1] if activations.ndim == 3 else activations)
    hidden = torch.cat(chunks).double()
    return hidden.reshape(task.p, task.p, hidden.shape[-1])


@torch.no_grad()
def grid_logits(
    model: nn.Module, task: TaskConfig, batch_size: int = DEFAULT_GRID_BATCH
) -> Float[Tensor, "a b p"]:
    """Run the model on every input pair and return the answer logits (float64), [p, p, p]."""
    tokens = grid_tokens(task).to(_device(model))
    chunks = []
    for batch in torch.split(tokens, batch_size):
        output = model(batch)
        chunks.append(output[:, -1] if output.ndim == 3 else output)
    return torch.cat(chunks).double().reshape(task.p, task.p, -1)


def pair_mask(pairs: PairData, indices: Int[Tensor, " n"], p: int) -> Bool[Tensor, "a b"]:
    """Mark the pairs ``pairs[indices]`` (e.g. a split's training pairs) on the p × p grid."""
    mask = torch.zeros(p, p, dtype=torch.bool)
    mask[pairs.a[indices], pairs.b[indices]] = True
    return mask


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass(frozen=True)
class ProgressMeasures:
    """Fourier progress measures of a model on the full input grid.

    Attributes:
        fractions: the share of each neuron's variance over the grid explained by each
            frequency, [d_mlp, p//2], column k - 1 for frequency k.
        clusters: each neuron's frequency (`cluster_neurons`), 0 for unclustered.
        cluster_threshold: the variance share a neuron needs to join a cluster.
        key_frequencies: the key frequencies used for the losses.
        key_frequency_source: "neurons" (clusters with at least ``min_share`` of the clustered
            neurons), "embedding" (the embedding spectrum's key frequencies, used when no neuron
            clusters), "given" or "none".
        train_loss: mean cross-entropy of the full logits on the training pairs, in nats; None
            when not applicable.
        restricted_loss: the same with the logits restricted to the key frequencies, or None.
        excluded_loss: the same with the key frequencies removed, or None.
        not_applicable: why the losses were not computed, or None when they were.
    """

    fractions: Float[Tensor, "d_mlp freq"]
    clusters: Int[Tensor, " d_mlp"]
    cluster_threshold: float
    key_frequencies: tuple[int, ...]
    key_frequency_source: str
    train_loss: float | None
    restricted_loss: float | None
    excluded_loss: float | None
    not_applicable: str | None

    @property
    def cluster_sizes(self) -> dict[int, int]:
        """Number of neurons per cluster frequency, without the unclustered ones."""
        counts = torch.bincount(self.clusters, minlength=self.fractions.shape[1] + 1)
        return {frequency: int(count) for frequency, count in enumerate(counts.tolist()) if frequency and count}

    @property
    def n_unclustered(self) -> int:
        """Number of neurons that no single frequency explains."""
        return int((self.clusters == UNCLUSTERED).sum())


def _neuron_key_frequencies(clusters: Tensor, n_frequencies: int, min_share: float) -> list[int]:
    counts = torch.bincount(clusters, minlength=n_frequencies + 1)[1:]
    clustered = int(counts.sum())
    if clustered == 0:
        return []
    return (torch.nonzero(counts >= min_share * clustered).flatten() + 1).tolist()


def progress_measures(
    model: nn.Module,
    task: TaskConfig,
    train_mask: Bool[Tensor, "a b"],
    threshold: float = 0.85,
    min_share: float = 0.05,
    frequencies: list[int] | None = None,
    projection: str = "joint",
    batch_size: int = DEFAULT_GRID_BATCH,
) -> ProgressMeasures:
    """Compute neuron frequency clusters and the restricted and excluded training losses.

    Key frequencies come from the neuron clusters (as in `fourier.neuron_key_frequencies`)
    unless ``frequencies`` is given. When no neuron joins a cluster, the embedding spectrum's
    key frequencies are used instead, if the model has an embedding. The losses are defined for addition only: for other
    operations they are None and ``not_applicable`` gives the reason.

    Args:
        model: a HookedMLP or a one-layer HookedTransformer.
        task: the model's task.
        train_mask: the training pairs on the grid (`pair_mask`).
        threshold: variance share for a neuron to join a cluster.
        min_share: share of clustered neurons for a cluster's frequency to be key.
        frequencies: key frequencies to use instead of the clusters' (e.g. the final
            checkpoint's, to follow one set of frequencies over training).
        projection: "joint" or "per_output" (see `fourier.restricted_logits`).
        batch_size: inputs per forward pass.

    Returns:
        A `ProgressMeasures`.
    """
    if train_mask.shape != (task.p, task.p):
        raise ValueError(
            f"train_mask has shape {tuple(train_mask.shape)}: expected [{task.p}, {task.p}], "
            "one entry per input pair; build it with pair_mask."
        )

    activations = grid_activations(model, task, batch_size)
    fractions = neuron_frequency_fractions(activations)
    clusters = cluster_neurons(fractions, threshold=threshold)

    if frequencies is not None:
        keys, source = list(frequencies), "given"
    else:
        keys, source = _neuron_key_frequencies(clusters, fractions.shape[1], min_share), "neurons"
        if not keys and embedding_names(model):
            W_E = model.embed.W_E.detach().double().cpu()
            keys, source = key_frequencies(embedding_spectrum(W_E, task.p)), "embedding"
        if not keys:
            source = "none"

    train_loss = restricted = excluded = None
    reason = None
    if task.op != "add":
        reason = (
            f"the restricted and excluded losses are defined for addition; task.op={task.op!r} "
            "computes c from (a, b) by another algorithm, whose logit directions are not "
            "implemented"
        )
    elif not keys:
        reason = "no key frequencies were found, so there is nothing to restrict to"
    else:
        logits = grid_logits(model, task, batch_size).cpu()
        mask = train_mask.cpu()
        train_loss = float(grid_cross_entropy(logits, mask))
        losses = key_frequency_losses(logits, keys, mask, projection=projection)
        restricted, excluded = float(losses.restricted), float(losses.excluded)

    return ProgressMeasures(
        fractions=fractions.cpu(),
        clusters=clusters.cpu(),
        cluster_threshold=threshold,
        key_frequencies=tuple(keys),
        key_frequency_source=source,
        train_loss=train_loss,
        restricted_loss=restricted,
        excluded_loss=excluded,
        not_applicable=reason,
    )


def split_mask(pairs: PairData, split: Split, p: int) -> Bool[Tensor, "a b"]:
    """Return the training-pair mask of ``split`` on the p × p grid."""
    return pair_mask(pairs, split.train, p)
