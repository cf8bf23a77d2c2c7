"""Loss and accuracy of a model on a set of pairs, and grok-step detection."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor, nn

from grokinterp.models import answer_logits


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy loss (nats) and accuracy over a set of pairs."""

    loss: float
    accuracy: float


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens: Int[Tensor, "pair pos"],
    labels: Int[Tensor, " pair"],
    chunk_size: int = 16384,
) -> Evaluation:
    """Evaluate ``model`` on every pair, in chunks of ``chunk_size`` to bound memory."""
    if len(labels) == 0:
        raise ValueError("evaluate() got an empty set of pairs: check the split fractions.")
    was_training = model.training
    model.eval()
    total_loss = 0.0
    correct = 0
    for start in range(0, len(labels), chunk_size):
        logits = answer_logits(model, tokens[start : start + chunk_size])
        target = labels[start : start + chunk_size]
        total_loss += float(F.cross_entropy(logits.double(), target, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == target).sum())
    model.train(was_training)
    return Evaluation(loss=total_loss / len(labels), accuracy=correct / len(labels))


@dataclass
class GrokTracker:
    """First evaluation steps at which train and test accuracy reach ``threshold``.

    Steps are those of evaluations, so they are exact only to within the evaluation interval.
    ``held`` counts consecutive evaluations with test accuracy at or above the threshold.
    """

    threshold: float
    train_step: int | None = None
    test_step: int | None = None
    held: int = 0

    def update(self, step: int, train_accuracy: float, test_accuracy: float) -> None:
        if self.train_step is None and train_accuracy >= self.threshold:
            self.train_step = step
        if self.test_step is None and test_accuracy >= self.threshold:
            self.test_step = step
        self.held = self.held + 1 if test_accuracy >= self.threshold else 0

    def as_dict(self) -> dict[str, int | None]:
        return {"train_step": self.train_step, "test_step": self.test_step, "held": self.held}
