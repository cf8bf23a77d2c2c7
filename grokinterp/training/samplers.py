"""Batch samplers over the training set: uniform, frequency-aware and token-balanced.

Every sampler is built from the training examples' operand tokens ``[n_train, 2]`` (the values
``a`` and ``b``, tokens ``0 .. p−1`` in both token layouts) and returns, per
:meth:`next_batch`, indices into the training set. The loop gathers the batch as
``train_tokens[indices]``. A sampler receives only the training examples, so it cannot draw a
test pair.

A row ``e_i`` of the embedding only receives a gradient in batches that contain token ``i``
("Mechanistic Insights into Grokking from the Embedding Layer", arXiv 2505.15624), so which
tokens a batch contains shapes how the embedding learns:

- :class:`RandomBatchSampler`: a uniform random subset of the training set per step.
- :class:`FrequencyAwareSampler`: tokens are drawn with the paper's optimal probabilities
  ``p_i ∝ exp(‖∇_{e_i} L‖² / γ)``, which maximise ``Σ_i p_i ‖∇_{e_i} L‖² + γ H(p)``.
- :class:`TokenBalancedSampler`: a stream in which every operand token appears equally often.

All randomness comes from the ``torch.Generator`` passed in. A sampler's ``state_dict()`` stores
that generator's state, so give each sampler a generator of its own. Indices are CPU int64
tensors.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching
from torch import Tensor

from grokinterp import GrokinterpWarning
from grokinterp.training.state import StateDict, check_same_setting, check_state_keys


class _TrainingSetSampler:
    """Input checks, generator handling and the common state of the samplers."""

    def __init__(
        self,
        operand_tokens: Int[Tensor, "n_train 2"],
        p: int,
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        owner = type(self).__name__
        for arg, value in (("p", p), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{owner} got {arg}={value!r}: it must be an integer >= 1.")
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise TypeError(
                f"{owner} got generator={generator!r}: pass a CPU torch.Generator, e.g. "
                "torch.Generator().manual_seed(seed)."
            )
        if operand_tokens.is_floating_point() or operand_tokens.is_complex():
            raise TypeError(
                f"{owner} got operand_tokens of dtype {operand_tokens.dtype}: pass integer "
                "token ids."
            )
        if len(operand_tokens) == 0:
            raise ValueError(f"{owner} got an empty training set: operand_tokens has no rows.")
        low, high = int(operand_tokens.min()), int(operand_tokens.max())
        if low < 0 or high >= p:
            raise ValueError(
                f"{owner} got operand tokens from {low} to {high}, but p={p}: operands must "
                f"be tokens 0 .. {p - 1}. Pass the operand columns of the training tokens, "
                "not the operation or '=' columns."
            )

        self.operand_tokens = operand_tokens.detach().to("cpu", torch.long).clone()
        self.p = p
        self.batch_size = batch_size
        self.generator = generator

    @property
    def n_train(self) -> int:
        """Number of training examples that indices refer to."""
        return len(self.operand_tokens)

    def _token_counts(self) -> Int[Tensor, " p"]:
        # An example (t, t) contains token t once, so it counts once.
        a, b = self.operand_tokens[:, 0], self.operand_tokens[:, 1]
        counts = torch.bincount(a, minlength=self.p)
        counts += torch.bincount(b[b != a], minlength=self.p)
        return counts

    def state_dict(self) -> StateDict:
        """Return the settings, the training set's operand tokens and the generator state."""
        return {
            "p": self.p,
            "batch_size": self.batch_size,
            "operand_tokens": self.operand_tokens.clone(),
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: StateDict) -> None:
        """Restore the generator state; the settings and the training set must match."""
        owner = type(self).__name__
        check_state_keys(owner, state, {"p", "batch_size", "operand_tokens", "generator_state"})
        check_same_setting(owner, state, "p", self.p)
        check_same_setting(owner, state, "batch_size", self.batch_size)
        if not torch.equal(state["operand_tokens"].to(torch.long), self.operand_tokens):
            raise ValueError(
                f"{owner}.load_state_dict got a state saved for a different training set: "
                "rebuild the sampler from the saved run's split."
            )
        self.generator.set_state(state["generator_state"].clone())


class RandomBatchSampler(_TrainingSetSampler):
    """Uniform batches: ``batch_size`` distinct training examples per step.

    Each batch is a uniformly random subset (no example twice within a batch, independent
    between batches). When ``batch_size >= n_train`` every batch is the full training set in
    index order, and the generator is not used.

    Args:
        operand_tokens: the training examples' operands ``[n_train, 2]`` (``a``, ``b``).
        p: the modulus; operand tokens are ``0 .. p−1``.
        batch_size: examples per batch.
        generator: CPU generator for all draws.

    State (``state_dict()``): ``"p"``, ``"batch_size"`` (int), ``"operand_tokens"`` (the training
    set, checked on load) and ``"generator_state"`` (uint8 tensor).
    """

    def next_batch(self) -> Int[Tensor, " batch"]:
        """Return the training-set indices of the next batch."""
        if self.batch_size >= self.n_train:
            return torch.arange(self.n_train)
        return torch.randperm(self.n_train, generator=self.generator)[: self.batch_size]


class FrequencyAwareSampler(_TrainingSetSampler):
    """Batches in which operand tokens are drawn with probabilities ``p_i ∝ exp(g_i² / γ)``.

    The expected first-order loss decrease from updating the embedding rows of a batch is
    ``Σ_i p_i ‖∇_{e_i} L‖²``. Maximising it plus an entropy bonus ``γ H(p)`` over the probability
    simplex gives ``p_i = exp(g_i² / γ) / Σ_j exp(g_j² / γ)`` with ``g_i = ‖∇_{e_i} L‖``
    (arXiv 2505.15624, where it is used only to build train/test splits). ``g`` is a running
    estimate fed with :meth:`update_gradient_norms`, typically ``TokenStats.grad_norm_mean``;
    it starts at zero, which gives the uniform distribution. ``γ`` is in units of squared
    gradient norm: ``γ → ∞`` gives the uniform distribution, small ``γ`` concentrates the draws
    on the tokens with the largest gradients. Tokens that occur in no training example get
    probability 0 and the rest are renormalised.

    Each of the ``batch_size`` draws, independently and with replacement across the batch:

    1. draws a pivot token ``t`` from ``p`` over operand tokens,
    2. draws uniformly one of the ``n_t`` training examples that contain ``t`` in either operand
       slot.

    The pivot token therefore follows ``p`` exactly. Example ``j`` with operands ``{a_j, b_j}``
    is drawn with probability ``Σ_{t ∈ {a_j, b_j}} p_t / n_t`` (one term when ``a_j = b_j``),
    which :meth:`example_probabilities` returns. An example is drawn only through a pivot with
    ``p_t > 0``, so no example of probability 0 is ever drawn, even when the softmax underflows
    for some tokens. Because each example also brings its second operand, a token's share of all
    operand slots in a batch is ``(p_t + q_t) / 2``, where ``q_t`` is its probability of coming
    along as the other operand.

    Args:
        operand_tokens: the training examples' operands ``[n_train, 2]`` (``a``, ``b``).
        p: the modulus; operand tokens are ``0 .. p−1``.
        batch_size: examples per batch (drawn with replacement, also when ``>= n_train``).
        generator: CPU generator for all draws.
        gamma: entropy weight ``γ > 0``; ``math.inf`` gives the uniform distribution.

    Attributes:
        token_counts: ``n_t`` per operand token ``[p]``, the number of training examples that
            contain it.
        grad_norms: the current ``g`` (float64, ``[p]``).

    State (``state_dict()``): as :class:`RandomBatchSampler`, plus ``"gamma"`` (float) and
    ``"grad_norms"`` (float64 tensor ``[p]``, the current ``g``).
    """

    def __init__(
        self,
        operand_tokens: Int[Tensor, "n_train 2"],
        p: int,
        batch_size: int,
        generator: torch.Generator,
        gamma: float = 1.0,
    ) -> None:
        super().__init__(operand_tokens, p, batch_size, generator)
        if not gamma > 0:
            raise ValueError(
                f"FrequencyAwareSampler got gamma={gamma!r}: it must be > 0 (math.inf for "
                "uniform token draws)."
            )
        self.gamma = float(gamma)
        self.grad_norms: Float[Tensor, " p"] = torch.zeros(p, dtype=torch.float64)

        # examples_by_token[t, :n_t] lists the training examples that contain token t.
        self.token_counts = self._token_counts()
        a, b = self.operand_tokens[:, 0], self.operand_tokens[:, 1]
        self._examples_by_token = torch.full((p, int(self.token_counts.max())), -1)
        for token in range(p):
            rows = torch.nonzero((a == token) | (b == token)).flatten()
            self._examples_by_token[token, : len(rows)] = rows

    def update_gradient_norms(self, grad_norms: Float[Tensor, " vocab"]) -> None:
        """Set ``g`` to ``grad_norms[:p]``, the operand tokens' embedding-gradient norms.

        ``grad_norms`` may cover the whole vocabulary (as ``TokenStats.grad_norm_mean`` does);
        entries from ``p`` on belong to the operation and ``=`` tokens and are ignored.
        """
        if grad_norms.ndim != 1 or len(grad_norms) < self.p:
            raise ValueError(
                f"FrequencyAwareSampler(p={self.p}) got grad_norms of shape "
                f"{tuple(grad_norms.shape)}: pass one norm per token, at least {self.p} of them."
            )
        norms = grad_norms[: self.p].detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(norms).all()) or bool((norms < 0).any()):
            raise ValueError(
                f"FrequencyAwareSampler got grad_norms {norms.tolist()}: gradient norms must be "
                "finite and >= 0."
            )
        self.grad_norms = norms.clone()

    def token_probabilities(self) -> Float[Tensor, " p"]:
        """Return ``p_i`` over operand tokens (float64), zero for tokens in no example."""
        logits = self.grad_norms.square() / self.gamma
        logits = logits.masked_fill(self.token_counts == 0, -math.inf)

        # Subtracting the largest logit keeps exp from overflowing. Masked tokens have logit
        # -inf, so their weight is exactly 0.
        weights = torch.exp(logits - logits.max())
        return weights / weights.sum()

    def example_probabilities(self) -> Float[Tensor, " n_train"]:
        """Return each training example's probability per draw (float64, sums to 1)."""
        per_example = self.token_probabilities() / self.token_counts.clamp(min=1)
        a, b = self.operand_tokens[:, 0], self.operand_tokens[:, 1]
        return per_example[a] + torch.where(a != b, per_example[b], 0.0)

    def next_batch(self) -> Int[Tensor, " batch"]:
        """Return the training-set indices of the next batch (with repeats possible)."""
        pivots = torch.multinomial(
            self.token_probabilities(), self.batch_size, replacement=True, generator=self.generator
        )
        counts = self.token_counts[pivots]
        uniform = torch.rand(self.batch_size, dtype=torch.float64, generator=self.generator)
        # The clamp guards against u · n rounding up to n; u < 1 makes it rare but possible.
        offsets = torch.minimum((uniform * counts).long(), counts - 1)
        return self._examples_by_token[pivots, offsets]

    def state_dict(self) -> StateDict:
        """Return the common state plus ``gamma`` and the current gradient norms."""
        state = super().state_dict()
        state["gamma"] = self.gamma
        state["grad_norms"] = self.grad_norms.clone()
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore the generator and gradient norms; settings and training set must match."""
        check_state_keys("FrequencyAwareSampler", state, {"gamma", "grad_norms"})
        check_same_setting("FrequencyAwareSampler", state, "gamma", self.gamma)
        super().load_state_dict(state)
        self.grad_norms = state["grad_norms"].to(torch.float64).clone()


class TokenBalancedSampler(_TrainingSetSampler):
    """A stream of training examples in which every operand token appears equally often.

    The stream is built in rounds. In a round every token that occurs in the training set is the
    pivot once, and each pivot ``t`` is paired with a companion token ``σ(t)`` such that the
    training set contains an example with operands ``{t, σ(t)}``. When ``σ`` is a permutation,
    every token also appears exactly once as a companion, so each round contains every token
    exactly twice (an example ``(t, t)`` counts twice). Such a ``σ`` is a perfect matching
    between pivots and companions in the graph of training pairs, found with SciPy's
    Hopcroft–Karp ``maximum_bipartite_matching`` on randomly relabelled tokens, so that rounds
    differ. The example that realises ``{t, σ(t)}`` is drawn uniformly among those present in
    either order, and each round is shuffled before it joins the stream.

    Batches are consecutive ``batch_size`` chunks of the stream, so a round may span two
    batches. An epoch is :attr:`rounds_per_epoch` rounds (``round(n_train / n_tokens)``, at
    least 1), :attr:`epoch_length` examples, starting from the first batch.

    Guarantee: when the training pairs admit a perfect matching (:attr:`exact` is True, checked
    at construction), every token in the training set appears exactly ``2 · rounds_per_epoch``
    times in each epoch, so appearance counts differ by 0. Otherwise (for example, when several
    tokens occur only together with one shared token) no schedule can balance them exactly. The
    sampler then emits a :class:`~grokinterp.GrokinterpWarning`, still makes every token the
    pivot exactly once per round, and gives each unmatched pivot the companion with the fewest
    appearances in the round so far.

    The sampler balances tokens, not examples: within an epoch some examples may repeat and
    others be missing. NOTE: the matching, and so the sequence for a given generator state,
    depends on SciPy's implementation, which may change between SciPy versions.

    Args:
        operand_tokens: the training examples' operands ``[n_train, 2]`` (``a``, ``b``).
        p: the modulus; operand tokens are ``0 .. p−1``.
        batch_size: examples per batch.
        generator: CPU generator for all draws.

    Attributes:
        tokens: the operand tokens that occur in the training set, in increasing order.
        exact: whether every epoch is exactly balanced (see the guarantee above).

    State (``state_dict()``): as :class:`RandomBatchSampler`, plus ``"pending"`` (int64 tensor of
    the stream's examples drawn but not yet returned) and ``"position"`` (int, examples returned
    so far).
    """

    def __init__(
        self,
        operand_tokens: Int[Tensor, "n_train 2"],
        p: int,
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        super().__init__(operand_tokens, p, batch_size, generator)
        self.tokens = torch.nonzero(self._token_counts()).flatten()
        self._build_pair_table()
        self.exact = self._max_matching_size() == len(self.tokens)
        if not self.exact:
            warnings.warn(
                "TokenBalancedSampler cannot balance operand tokens exactly: the training pairs "
                "have no perfect matching between tokens (some tokens occur only together with "
                "the same partner). Each token is still the pivot once per round.",
                GrokinterpWarning,
                stacklevel=2,
            )
        self.rounds_per_epoch = max(1, round(self.n_train / len(self.tokens)))
        self._pending = torch.zeros(0, dtype=torch.long)
        self.position = 0

    @property
    def epoch_length(self) -> int:
        """Number of examples in one epoch of the stream: ``rounds_per_epoch · n_tokens``."""
        return self.rounds_per_epoch * len(self.tokens)

    def _build_pair_table(self) -> None:
        # _pair_examples[t, u, :_pair_counts[t, u]] lists the examples with operands {t, u} in
        # either order, and _adjacency[t, u] is True where there is at least one.
        a, b = self.operand_tokens[:, 0], self.operand_tokens[:, 1]
        unordered = torch.minimum(a, b) * self.p + torch.maximum(a, b)
        max_per_pair = int(torch.bincount(unordered).max())
        self._pair_examples = torch.full((self.p, self.p, max_per_pair), -1)
        self._pair_counts = torch.zeros((self.p, self.p), dtype=torch.long)
        for index, (first, second) in enumerate(self.operand_tokens.tolist()):
            for t, u in {(first, second), (second, first)}:
                self._pair_examples[t, u, self._pair_counts[t, u]] = index
                self._pair_counts[t, u] += 1
        self._adjacency = self._pair_counts > 0

    def _matching(self, row_order: Tensor, column_order: Tensor) -> np.ndarray:
        """Match pivots ``tokens[row_order]`` to companions ``tokens[column_order]``."""
        rows = self.tokens[row_order]
        columns = self.tokens[column_order]
        biadjacency = self._adjacency[rows][:, columns].numpy()
        return maximum_bipartite_matching(csr_array(biadjacency), perm_type="column")

    def _max_matching_size(self) -> int:
        order = torch.arange(len(self.tokens))
        return int((self._matching(order, order) >= 0).sum())

    def _next_round(self) -> Int[Tensor, " n_tokens"]:
        n_tokens = len(self.tokens)
        row_order = torch.randperm(n_tokens, generator=self.generator)
        column_order = torch.randperm(n_tokens, generator=self.generator)
        matched = self._matching(row_order, column_order)

        pivots = self.tokens[row_order]
        companions = torch.full((n_tokens,), -1)
        is_matched = torch.from_numpy(matched >= 0)
        companions[is_matched] = self.tokens[column_order[torch.from_numpy(matched[matched >= 0])]]
        if not bool(is_matched.all()):
            self._fill_unmatched(pivots, companions)

        choices = self._pair_counts[pivots, companions]
        uniform = torch.rand(n_tokens, dtype=torch.float64, generator=self.generator)
        offsets = torch.minimum((uniform * choices).long(), choices - 1)
        examples = self._pair_examples[pivots, companions, offsets]
        return examples[torch.randperm(n_tokens, generator=self.generator)]

    def _fill_unmatched(self, pivots: Tensor, companions: Tensor) -> None:
        # Only reached when no perfect matching exists: the unmatched pivots take the
        # neighbour with the fewest appearances in the round so far, ties broken at random.
        appearances = torch.bincount(pivots, minlength=self.p)
        appearances += torch.bincount(companions[companions >= 0], minlength=self.p)
        for slot in torch.nonzero(companions < 0).flatten().tolist():
            neighbours = torch.nonzero(self._adjacency[pivots[slot]]).flatten()
            fewest = neighbours[appearances[neighbours] == appearances[neighbours].min()]
            pick = fewest[torch.randint(len(fewest), (1,), generator=self.generator)]
            companions[slot] = pick
            appearances[pick] += 1

    def next_batch(self) -> Int[Tensor, " batch"]:
        """Return the training-set indices of the next ``batch_size`` examples of the stream."""
        while len(self._pending) < self.batch_size:
            self._pending = torch.cat([self._pending, self._next_round()])
        batch = self._pending[: self.batch_size]
        self._pending = self._pending[self.batch_size :].clone()
        self.position += self.batch_size
        return batch

    def state_dict(self) -> StateDict:
        """Return the common state plus the pending stream and the stream position."""
        state = super().state_dict()
        state["pending"] = self._pending.clone()
        state["position"] = self.position
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore the generator and the pending stream; settings and training set must match."""
        check_state_keys("TokenBalancedSampler", state, {"pending", "position"})
        super().load_state_dict(state)
        self._pending = state["pending"].to(torch.long).clone()
        self.position = int(state["position"])
