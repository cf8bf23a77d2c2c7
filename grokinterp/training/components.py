"""The optimiser and the per-step training components a config selects.

:class:`TrainingComponents` bundles what the loop calls around each optimiser step: the batch
sampler, the Grokfast gradient filter, the adaptive embedding learning-rate controller, per-token
statistics and the embedding-gradient recorder. Its state round-trips through a checkpoint, which
is what makes a resumed run exact.

Order within a step: ``backward`` → :meth:`TrainingComponents.after_backward` (statistics and the
controller see the raw gradient, then the filter rewrites it) → ``optimizer.step`` →
:meth:`TrainingComponents.after_step` (the controller sets the next step's embedding lr).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.models import embedding_names, first_layer_matrix
from grokinterp.tasks import PairData, Split
from grokinterp.training.config import OptimConfig, RunConfig
from grokinterp.training.grokfast import GrokfastEMA, GrokfastMA
from grokinterp.training.lr_ratio import AdaptiveLRRatio, param_groups
from grokinterp.training.samplers import (
    FrequencyAwareSampler,
    RandomBatchSampler,
    TokenBalancedSampler,
)
from grokinterp.training.state import join_state, split_state
from grokinterp.training.token_stats import GradientRecorder, TokenStats


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """Build Adam or AdamW with an ``embed`` group at ``embed_lr_ratio · lr`` and a ``rest`` group.

    A model without an embedding gets the single group ``rest``.
    """
    embed = embedding_names(model)
    if embed:
        groups = param_groups(
            model.named_parameters(), embed, optim.lr, optim.embed_lr_ratio, optim.weight_decay
        )
    else:
        groups = [{"name": "rest", "params": list(model.parameters()), "lr": optim.lr}]
    optimizer_class = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return optimizer_class(
        groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay
    )


@dataclass
class TrainingComponents:
    """Hooks the loop calls around each optimiser step, and their checkpointable state."""

    sampler: RandomBatchSampler | FrequencyAwareSampler | TokenBalancedSampler
    grad_filter: GrokfastEMA | GrokfastMA | None = None
    lr_controller: AdaptiveLRRatio | None = None
    token_stats: TokenStats | None = None
    grad_recorder: GradientRecorder | None = None

    def _stateful(self) -> dict[str, Any]:
        parts = {
            "sampler": self.sampler,
            "grad_filter": self.grad_filter,
            "lr_controller": self.lr_controller,
            "token_stats": self.token_stats,
            "grad_recorder": self.grad_recorder,
        }
        return {name: part for name, part in parts.items() if part is not None}

    def after_backward(self, step: int, model: nn.Module, tokens: Tensor) -> None:
        """Feed the raw embedding gradient to the statistics, then filter the gradients."""
        W_E = getattr(getattr(model, "embed", None), "W_E", None)
        embed_grad = W_E.grad if W_E is not None else None
        if embed_grad is not None:
            if self.token_stats is not None:
                self.token_stats.observe(tokens, embed_grad, W_E)
            if self.lr_controller is not None:
                self.lr_controller.observe(embed_grad)
            if self.grad_recorder is not None:
                self.grad_recorder.record(step, embed_grad)
            if isinstance(self.sampler, FrequencyAwareSampler):
                self.sampler.update_gradient_norms(self.token_stats.grad_norm_mean)
        if self.grad_filter is not None:
            self.grad_filter.apply(model.named_parameters())

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Let the adaptive controller set the embedding learning rate for the next step."""
        if self.lr_controller is not None:
            self.lr_controller.update(step, model.embed.W_E, first_layer_matrix(model), optimizer)

    def metrics(self) -> dict[str, float]:
        """Controller values for ``metrics.jsonl``: ``c_t`` and what it was computed from."""
        measurement = self.lr_controller.last_measurement if self.lr_controller else None
        if measurement is None:
            return {}
        return {
            "embed_lr_ratio": measurement.ratio,
            "embed_lr_ratio_unclipped": measurement.unclipped_ratio,
            "sigma_max_E": measurement.sigma_max_embed,
            "sigma_max_W": measurement.sigma_max_weight,
            "f_E": measurement.f_embed,
        }

    def token_snapshot(self) -> dict[str, Any] | None:
        """Per-token counts and norms for ``token_stats.jsonl``, when statistics are kept."""
        return self.token_stats.snapshot() if self.token_stats is not None else None

    def recorded_gradients(self) -> dict[int, Tensor]:
        """Embedding gradients recorded at ``train.record_grad_steps``, by step."""
        return dict(self.grad_recorder.gradients) if self.grad_recorder is not None else {}

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Split every component's state into prefixed tensors and JSON metadata."""
        tensors: dict[str, Tensor] = {}
        meta: dict[str, Any] = {}
        for name, part in self._stateful().items():
            part_tensors, part_plain = split_state(part.state_dict())
            tensors.update({f"{name}.{key}": value for key, value in part_tensors.items()})
            meta[name] = part_plain
        return tensors, meta

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore the state written by :meth:`state`."""
        for name, part in self._stateful().items():
            prefix = f"{name}."
            part_tensors = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            part.load_state_dict(join_state(part_tensors, meta.get(name, {})))


def build_components(
    cfg: RunConfig, model: nn.Module, pairs: PairData, split: Split, device: torch.device
) -> TrainingComponents:
    """Build the sampler and step hooks that ``cfg`` selects."""
    del device  # every component follows the device of the tensors it is given
    operand_columns = list(cfg.task.operand_positions)
    operand_tokens = pairs.tokens[split.train][:, operand_columns]
    generator = torch.Generator().manual_seed(cfg.train.batch_seed)
    batch_size = cfg.train.batch_size if cfg.train.batch_size > 0 else len(split.train)
    has_embedding = bool(embedding_names(model))

    if cfg.train.sampler == "frequency":
        sampler = FrequencyAwareSampler(
            operand_tokens, cfg.task.p, batch_size, generator, gamma=cfg.train.sampler_gamma
        )
    elif cfg.train.sampler == "balanced":
        sampler = TokenBalancedSampler(operand_tokens, cfg.task.p, batch_size, generator)
    else:
        sampler = RandomBatchSampler(operand_tokens, cfg.task.p, batch_size, generator)

    grad_filter = None
    if cfg.optim.grokfast == "ema":
        grad_filter = GrokfastEMA(alpha=cfg.optim.grokfast_alpha, lamb=cfg.optim.grokfast_lambda)
    elif cfg.optim.grokfast == "ma":
        grad_filter = GrokfastMA(window=cfg.optim.grokfast_window, lamb=cfg.optim.grokfast_lambda)

    lr_controller = None
    if cfg.optim.lr_ratio == "adaptive":
        lr_controller = AdaptiveLRRatio(
            k=cfg.optim.adaptive_k,
            every=cfg.optim.adaptive_every,
            c_min=cfg.optim.adaptive_c_min,
            c_max=cfg.optim.adaptive_c_max,
            window=cfg.optim.adaptive_window,
        )

    # The frequency-aware sampler weighs tokens by their running gradient norms, so it needs them.
    keep_stats = has_embedding and (cfg.train.token_stats or cfg.train.sampler == "frequency")
    token_stats = TokenStats(cfg.task.d_vocab) if keep_stats else None
    grad_recorder = (
        GradientRecorder(cfg.train.record_grad_steps)
        if has_embedding and cfg.train.record_grad_steps
        else None
    )
    return TrainingComponents(
        sampler=sampler,
        grad_filter=grad_filter,
        lr_controller=lr_controller,
        token_stats=token_stats,
        grad_recorder=grad_recorder,
    )
