"""Modular-arithmetic tasks: operations, tokenisation, the p × p pair grid and train/test splits.

A task is ``(a op b) mod p`` over operands ``a, b ∈ {0, …, p−1}``. Two token layouts exist:

- ``"a_op_b_eq"``: ``[a, op, b, =]`` with operand tokens ``0..p−1``, the operation token ``p`` and
  ``=`` as token ``p+1`` (vocabulary ``p + 2``). This is the layout of "Mechanistic Insights into
  Grokking from the Embedding Layer" (arXiv 2505.15624).
- ``"a_b_eq"``: ``[a, b, =]`` with ``=`` as token ``p`` (vocabulary ``p + 1``), the layout of Nanda
  et al. 2023 ("Progress measures for grokking via mechanistic interpretability").

Pairs are enumerated in row-major order of the ``p × p`` grid: pair ``(a, b)`` has index
``a * p + b``. Division skips ``b = 0``, so its pair list has ``p (p − 1)`` entries; every pair keeps
its ``(a, b)`` values, so grid positions never have to be inferred from indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

OPERATIONS = ("add", "subtract", "multiply", "divide", "square_sum")
LAYOUTS = ("a_op_b_eq", "a_b_eq")
SPLITS = ("random", "uniform", "skewed")

Operation = Literal["add", "subtract", "multiply", "divide", "square_sum"]
Layout = Literal["a_op_b_eq", "a_b_eq"]
SplitStrategy = Literal["random", "uniform", "skewed"]


def is_prime(n: int) -> bool:
    """Return whether ``n`` is a prime number (trial division, fine for the moduli used here)."""
    if n < 2:
        return False
    divisor = 2
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 1
    return True


@dataclass(frozen=True)
class TaskConfig:
    """One modular-arithmetic task and how its pairs are split into train and test.

    ``test_fraction`` and ``train_fraction`` are fractions of *all* valid pairs: the test set is
    drawn first and the training set from the rest, so ``1 − test − train`` of the pairs go unused.
    The ``"skewed"`` split over-represents the operand values ``0 .. ceil(skew_fraction·p) − 1``:
    a pair is drawn into train with weight ``skew_weight`` per over-represented operand it contains
    (weights multiply, so a pair with both operands favoured weighs ``skew_weight²``).
    """

    p: int = 97
    op: str = "add"
    layout: str = "a_op_b_eq"
    test_fraction: float = 0.2
    train_fraction: float = 0.3
    split: str = "random"
    skew_fraction: float = 0.2
    skew_weight: float = 8.0
    data_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.p, int) or self.p < 2:
            raise ValueError(f"task.p={self.p!r} is invalid: the modulus must be an integer >= 2.")
        if self.op not in OPERATIONS:
            raise ValueError(
                f"task.op={self.op!r} is not a known operation: choose one of {', '.join(OPERATIONS)}."
            )
        if self.op == "divide" and not is_prime(self.p):
            raise ValueError(
                f"task.op='divide' needs a prime modulus, but task.p={self.p} is not prime: "
                "pick a prime p so that every nonzero b has a modular inverse."
            )
        if self.layout not in LAYOUTS:
            raise ValueError(
                f"task.layout={self.layout!r} is not a known layout: choose one of {', '.join(LAYOUTS)}."
            )
        if self.split not in SPLITS:
            raise ValueError(
                f"task.split={self.split!r} is not a known split: choose one of {', '.join(SPLITS)}."
            )
        for name in ("test_fraction", "train_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"task.{name}={value!r} is invalid: it must lie in (0, 1).")
        if self.test_fraction + self.train_fraction > 1.0 + 1e-12:
            raise ValueError(
                f"task.test_fraction + task.train_fraction = "
                f"{self.test_fraction + self.train_fraction:g} exceeds 1: lower one of them."
            )
        if not 0.0 < self.skew_fraction < 1.0:
            raise ValueError(
                f"task.skew_fraction={self.skew_fraction!r} is invalid: it must lie in (0, 1)."
            )
        if self.skew_weight < 1.0:
            raise ValueError(
                f"task.skew_weight={self.skew_weight!r} is invalid: it must be >= 1 "
                "(1 means no skew)."
            )

    @property
    def d_vocab(self) -> int:
        return self.p + 2 if self.layout == "a_op_b_eq" else self.p + 1

    @property
    def n_ctx(self) -> int:
        return 4 if self.layout == "a_op_b_eq" else 3

    @property
    def eq_token(self) -> int:
        return self.p + 1 if self.layout == "a_op_b_eq" else self.p

    @property
    def op_token(self) -> int | None:
        return self.p if self.layout == "a_op_b_eq" else None

    @property
    def operand_positions(self) -> tuple[int, int]:
        """Positions of ``a`` and ``b`` in the token sequence."""
        return (0, 2) if self.layout == "a_op_b_eq" else (0, 1)

    @property
    def n_favoured(self) -> int:
        """Number of operand values ``0 .. n_favoured − 1`` that the skewed split favours."""
        return max(1, math.ceil(self.skew_fraction * self.p))

    @property
    def n_pairs(self) -> int:
        return self.p * (self.p - 1) if self.op == "divide" else self.p * self.p


def apply_op(a: Int[Tensor, " n"], b: Int[Tensor, " n"], op: Operation, p: int) -> Int[Tensor, " n"]:
    """Compute ``(a op b) mod p`` elementwise; division multiplies by ``b``'s modular inverse."""
    if op == "add":
        return (a + b) % p
    if op == "subtract":
        return (a - b) % p
    if op == "multiply":
        return (a * b) % p
    if op == "square_sum":
        return (a * a + b * b) % p
    if op == "divide":
        if bool((b % p == 0).any()):
            raise ValueError("apply_op(op='divide') got b = 0 mod p, which has no inverse.")
        inverses = torch.tensor([pow(int(x), -1, p) if x else 0 for x in range(p)], dtype=torch.long)
        return (a * inverses[b % p]) % p
    raise ValueError(f"op={op!r} is not a known operation: choose one of {', '.join(OPERATIONS)}.")


@dataclass(frozen=True)
class PairData:
    """All valid pairs of a task as model inputs and labels, in grid order."""

    tokens: Int[Tensor, "pair pos"]
    labels: Int[Tensor, " pair"]
    a: Int[Tensor, " pair"]
    b: Int[Tensor, " pair"]


def all_pairs(task: TaskConfig) -> PairData:
    """Build the tokens and labels of every valid ``(a, b)`` pair of ``task``."""
    grid = torch.arange(task.p, dtype=torch.long)
    a = grid.repeat_interleave(task.p)
    b = grid.repeat(task.p)
    if task.op == "divide":
        keep = b != 0
        a, b = a[keep], b[keep]

    labels = apply_op(a, b, task.op, task.p)
    eq = torch.full_like(a, task.eq_token)
    if task.layout == "a_op_b_eq":
        op_column = torch.full_like(a, task.op_token)
        tokens = torch.stack([a, op_column, b, eq], dim=1)
    else:
        tokens = torch.stack([a, b, eq], dim=1)
    return PairData(tokens=tokens, labels=labels, a=a, b=b)


@dataclass(frozen=True)
class Split:
    """Indices into :func:`all_pairs` for the training and test sets (disjoint)."""

    train: Int[Tensor, " n_train"]
    test: Int[Tensor, " n_test"]


def split_sizes(task: TaskConfig) -> tuple[int, int]:
    """Return ``(n_train, n_test)``, each rounded to the nearest pair and at least 1."""
    n = task.n_pairs
    n_test = max(1, round(task.test_fraction * n))
    n_train = max(1, min(n - n_test, round(task.train_fraction * n)))
    return n_train, n_test


def make_split(task: TaskConfig) -> Split:
    """Split the pairs of ``task`` into a test set and a training set, seeded by ``data_seed``.

    The test set is always a uniform random subset, so the three strategies differ only in which
    of the remaining pairs become training pairs:

    - ``random``: a uniform random subset.
    - ``uniform``: every operand value appears as equally often as possible in train. Pairs are
      taken greedily in random order, each time the candidate whose two operand values have
      the lowest counts so far.
    - ``skewed``: sampled without replacement with weights favouring small operand values (see
      :class:`TaskConfig`).
    """
    generator = torch.Generator().manual_seed(task.data_seed)
    pairs = all_pairs(task)
    n_train, n_test = split_sizes(task)

    order = torch.randperm(task.n_pairs, generator=generator)
    test = order[:n_test]
    rest = order[n_test:]

    if task.split == "random":
        train = rest[:n_train]
    elif task.split == "skewed":
        train = rest[_skewed_choice(pairs, rest, n_train, task, generator)]
    else:
        train = rest[_balanced_choice(pairs, rest, n_train, task.p)]
    return Split(train=train.sort().values, test=test.sort().values)


def _skewed_choice(
    pairs: PairData, candidates: Tensor, n: int, task: TaskConfig, generator: torch.Generator
) -> Tensor:
    n_favoured = task.n_favoured
    favoured_a = (pairs.a[candidates] < n_favoured).double()
    favoured_b = (pairs.b[candidates] < n_favoured).double()
    weights = task.skew_weight ** (favoured_a + favoured_b)
    return torch.multinomial(weights, n, replacement=False, generator=generator)


def _balanced_choice(pairs: PairData, candidates: Tensor, n: int, p: int) -> Tensor:
    # Greedy balancing: each round takes, among the remaining candidates, one whose operands have
    # been used least. Vectorised per round over the candidates, O(n · len(candidates)) overall,
    # which is about 1e7 operations at p = 113 and well under a second.
    a = pairs.a[candidates]
    b = pairs.b[candidates]
    counts = torch.zeros(p, dtype=torch.long)
    available = torch.ones(len(candidates), dtype=torch.bool)
    chosen = torch.empty(n, dtype=torch.long)
    big = torch.iinfo(torch.long).max // 4
    for i in range(n):
        cost = torch.maximum(counts[a], counts[b]) * (2 * p + 1) + counts[a] + counts[b]
        cost = torch.where(available, cost, big)
        pick = int(torch.argmin(cost))
        chosen[i] = pick
        available[pick] = False
        counts[a[pick]] += 1
        counts[b[pick]] += 1
    return chosen


def token_counts(
    tokens: Int[Tensor, "pair pos"], d_vocab: int, positions: tuple[int, ...] | None = None
) -> Int[Tensor, " vocab"]:
    """Count how often each token occurs in ``tokens`` (optionally only at ``positions``)."""
    if positions is not None:
        tokens = tokens[:, list(positions)]
    return torch.bincount(tokens.reshape(-1), minlength=d_vocab)


@dataclass(frozen=True)
class SplitStatistics:
    """How often each operand value occurs in the training and test sets."""

    train_counts: Int[Tensor, " p"]
    test_counts: Int[Tensor, " p"]

    def summary(self) -> dict[str, float]:
        train = self.train_counts.double()
        return {
            "train_min": float(train.min()),
            "train_max": float(train.max()),
            "train_mean": float(train.mean()),
            "train_missing_tokens": int((self.train_counts == 0).sum()),
        }


def split_statistics(task: TaskConfig, pairs: PairData, split: Split) -> SplitStatistics:
    """Count operand-value occurrences (both operand slots) per split."""
    positions = task.operand_positions
    train = token_counts(pairs.tokens[split.train], task.d_vocab, positions)[: task.p]
    test = token_counts(pairs.tokens[split.test], task.d_vocab, positions)[: task.p]
    return SplitStatistics(train_counts=train, test_counts=test)
