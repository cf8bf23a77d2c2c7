"""The optimiser and the per-step training components a config selects.

:class:`TrainingComponents` bundles what the loop calls around each optimiser step: the batch
sampler, gradient filters, the embedding learning-rate controller and per-token statistics. Its
state round-trips through a checkpoint, which is what makes a resumed run exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from grokinterp.models import embedding_names
from grokinterp.tasks import PairData, Split
from grokinterp.training.config import OptimConfig, RunConfig


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """Build Adam or AdamW with an ``embed`` group at ``embed_lr_ratio · lr`` and a ``rest`` group."""
    embed = set(embedding_names(model))
    groups = [
        {"name": "embed", "params": [p for n, p in model.named_parameters() if n in embed],
         "lr": optim.lr * optim.embed_lr_ratio},
        {"name": "rest", "params": [p for n, p in model.named_parameters() if n not in embed],
         "lr": optim.lr},
    ]
    groups = [group for group in groups if group["params"]]
    optimizer_class = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return optimizer_class(
        groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay
    )


class RandomBatchSampler:
    """Uniform random minibatches (without replacement within a batch), or the full batch."""

    def __init__(self, n_train: int, batch_size: int, generator: torch.Generator) -> None:
        self.n_train = n_train
        self.batch_size = batch_size if 0 < batch_size < n_train else n_train
        self.generator = generator

    def next_batch(self) -> Tensor:
        if self.batch_size == self.n_train:
            return torch.arange(self.n_train)
        return torch.randperm(self.n_train, generator=self.generator)[: self.batch_size]

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


@dataclass
class TrainingComponents:
    """What the loop calls around each optimiser step, and its checkpointable state."""

    sampler: Any
    extras: dict[str, Any] = field(default_factory=dict)

    def after_backward(self, step: int, model: nn.Module, tokens: Tensor) -> None:
        """Hook between ``backward`` and ``optimizer.step``."""

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Hook after ``optimizer.step``."""

    def metrics(self) -> dict[str, float]:
        return {}

    def token_snapshot(self) -> dict[str, Any] | None:
        return None

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"sampler.{k}": v for k, v in self.sampler.state_dict().items()}
        return tensors, {}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        prefix = "sampler."
        self.sampler.load_state_dict(
            {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        )


def build_components(
    cfg: RunConfig, model: nn.Module, pairs: PairData, split: Split, device: torch.device
) -> TrainingComponents:
    """Build the sampler and step hooks that ``cfg`` selects."""
    generator = torch.Generator().manual_seed(cfg.train.batch_seed)
    sampler = RandomBatchSampler(len(split.train), cfg.train.batch_size, generator)
    return TrainingComponents(sampler=sampler)
