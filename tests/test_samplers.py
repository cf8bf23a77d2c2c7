import math

import pytest
import torch
from scipy.stats import chisquare
from state_roundtrip import roundtrip

from grokinterp import GrokinterpWarning
from grokinterp.training.samplers import (
    FrequencyAwareSampler,
    RandomBatchSampler,
    TokenBalancedSampler,
)

# A fixed seed makes every statistical check below deterministic. The threshold is the smallest
# accepted p-value of the observed counts under the claimed distribution, so a correct sampler
# fails with probability 1e-3 for a random seed.
P_VALUE_THRESHOLD = 1e-3


def split_pairs(p, test_fraction, train_fraction, seed):
    """All p² pairs (index a·p + b), a random test set, and a training set from the rest."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.arange(p)
    pairs = torch.stack([grid.repeat_interleave(p), grid.repeat(p)], dim=1)
    order = torch.randperm(p * p, generator=generator)
    n_test = round(test_fraction * p * p)
    n_train = round(train_fraction * p * p)
    test_ids = order[:n_test]
    train_ids = order[n_test : n_test + n_train]
    return pairs, train_ids, test_ids


def draw(sampler, n_batches):
    return torch.cat([sampler.next_batch() for _ in range(n_batches)])


def make_samplers(operand_tokens, p, batch_size, seed):
    return [
        RandomBatchSampler(operand_tokens, p, batch_size, torch.Generator().manual_seed(seed)),
        FrequencyAwareSampler(
            operand_tokens, p, batch_size, torch.Generator().manual_seed(seed), gamma=0.5
        ),
        TokenBalancedSampler(operand_tokens, p, batch_size, torch.Generator().manual_seed(seed)),
    ]


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["random", "frequency", "balanced"])
def test_sampler_draws_training_pairs_only(kind):
    pairs, train_ids, test_ids = split_pairs(p=7, test_fraction=0.2, train_fraction=0.5, seed=0)
    sampler = make_samplers(pairs[train_ids], 7, batch_size=8, seed=1)[kind]
    if kind == 1:
        sampler.update_gradient_norms(torch.linspace(0.0, 1.0, 9))

    indices = draw(sampler, 200)

    assert indices.dtype == torch.long
    assert int(indices.min()) >= 0
    assert int(indices.max()) < len(train_ids)
    drawn_pairs = train_ids[indices]
    assert not bool(torch.isin(drawn_pairs, test_ids).any())


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["random", "frequency", "balanced"])
def test_sampler_reproducible_and_resumable(kind):
    pairs, train_ids, _ = split_pairs(p=7, test_fraction=0.2, train_fraction=0.5, seed=0)
    original = make_samplers(pairs[train_ids], 7, batch_size=6, seed=2)[kind]
    twin = make_samplers(pairs[train_ids], 7, batch_size=6, seed=2)[kind]
    if kind == 1:
        for sampler in (original, twin):
            sampler.update_gradient_norms(torch.linspace(0.0, 1.0, 7))

    assert torch.equal(draw(original, 5), draw(twin, 5))

    # A sampler seeded differently continues the original's sequence once it loads its state.
    resumed = make_samplers(pairs[train_ids], 7, batch_size=6, seed=99)[kind]
    resumed.load_state_dict(roundtrip(original.state_dict()))
    assert torch.equal(draw(resumed, 7), draw(original, 7))


def test_load_rejects_other_training_set():
    pairs, train_ids, _ = split_pairs(p=7, test_fraction=0.2, train_fraction=0.5, seed=0)
    state = RandomBatchSampler(pairs[train_ids], 7, 4, torch.Generator()).state_dict()
    other = RandomBatchSampler(pairs[train_ids.flip(0)], 7, 4, torch.Generator())

    with pytest.raises(ValueError, match="different training set"):
        other.load_state_dict(state)


def test_random_batches_distinct_and_uniform():
    pairs, train_ids, _ = split_pairs(p=7, test_fraction=0.2, train_fraction=0.5, seed=0)
    sampler = RandomBatchSampler(pairs[train_ids], 7, 8, torch.Generator().manual_seed(3))

    batches = [sampler.next_batch() for _ in range(2000)]

    assert all(len(batch.unique()) == 8 for batch in batches)
    counts = torch.bincount(torch.cat(batches), minlength=len(train_ids))
    assert chisquare(counts.numpy()).pvalue > P_VALUE_THRESHOLD


def test_random_full_batch_when_batch_exceeds_train():
    pairs, train_ids, _ = split_pairs(p=5, test_fraction=0.2, train_fraction=0.4, seed=0)
    sampler = RandomBatchSampler(pairs[train_ids], 5, 512, torch.Generator())

    assert torch.equal(sampler.next_batch(), torch.arange(len(train_ids)))


def test_frequency_pivot_tokens_follow_p():
    # Every example is (t, t), so the drawn example reveals the pivot token. Tokens 5 and 6 are
    # in no example: despite the largest gradient norms they must get probability 0.
    operand_tokens = torch.tensor([[t, t] for t in range(5)])
    sampler = FrequencyAwareSampler(
        operand_tokens, 7, 500, torch.Generator().manual_seed(4), gamma=1.0
    )
    grad_norms = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 9.0, 9.0], dtype=torch.float64)
    sampler.update_gradient_norms(grad_norms)

    expected = torch.softmax(grad_norms[:5].square(), dim=0)
    probabilities = sampler.token_probabilities()
    assert torch.allclose(probabilities[:5], expected, rtol=1e-14, atol=0)  # float64 rounding only
    assert probabilities[5:].tolist() == [0.0, 0.0]

    counts = torch.bincount(operand_tokens[draw(sampler, 40), 0], minlength=7)
    assert counts[5:].tolist() == [0, 0]
    result = chisquare(counts[:5].numpy(), (counts.sum() * expected).numpy())
    assert result.pvalue > P_VALUE_THRESHOLD


def test_frequency_example_probabilities_by_hand():
    # Uniform tokens, p_t = 1/3. Token 0 is in 2 examples, token 1 in 2, token 2 in 1, so
    # P([0, 1]) = 1/6 + 1/6, P([1, 2]) = 1/6 + 1/3, P([0, 0]) = 1/6 (token 0 counted once).
    operand_tokens = torch.tensor([[0, 1], [1, 2], [0, 0]])
    sampler = FrequencyAwareSampler(operand_tokens, 3, 4, torch.Generator(), gamma=math.inf)

    expected = torch.tensor([1 / 3, 1 / 2, 1 / 6], dtype=torch.float64)
    assert torch.allclose(sampler.example_probabilities(), expected, rtol=1e-15, atol=0)


def test_frequency_examples_follow_example_probabilities():
    pairs, train_ids, _ = split_pairs(p=5, test_fraction=0.2, train_fraction=0.5, seed=1)
    sampler = FrequencyAwareSampler(
        pairs[train_ids], 5, 400, torch.Generator().manual_seed(5), gamma=0.5
    )
    sampler.update_gradient_norms(torch.tensor([0.1, 0.9, 0.3, 0.6, 0.0, 2.0, 2.0]))

    probabilities = sampler.example_probabilities()
    assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-12)  # float64 sum of 12 terms
    counts = torch.bincount(draw(sampler, 50), minlength=len(train_ids))
    result = chisquare(counts.numpy(), (counts.sum() * probabilities).numpy())
    assert result.pvalue > P_VALUE_THRESHOLD


def test_frequency_never_draws_zero_weight_example():
    # g_2² / γ exceeds every other logit by 1e4, so exp underflows to exactly 0 for all tokens
    # but 2. Only examples containing token 2 have positive probability.
    pairs, train_ids, _ = split_pairs(p=7, test_fraction=0.2, train_fraction=0.5, seed=0)
    operand_tokens = pairs[train_ids]
    sampler = FrequencyAwareSampler(
        operand_tokens, 7, 64, torch.Generator().manual_seed(6), gamma=1.0
    )
    sampler.update_gradient_norms(torch.tensor([0.0, 0.0, 100.0, 0.0, 0.0, 0.0, 0.0]))

    probabilities = sampler.example_probabilities()
    assert bool((probabilities == 0).any())
    indices = draw(sampler, 20)
    assert bool((probabilities[indices] > 0).all())
    assert bool((operand_tokens[indices] == 2).any(dim=1).all())


def test_frequency_huge_gamma_is_uniform():
    pairs, train_ids, _ = split_pairs(p=7, test_fraction=0.2, train_fraction=0.5, seed=0)
    sampler = FrequencyAwareSampler(pairs[train_ids], 7, 8, torch.Generator(), gamma=1e12)
    sampler.update_gradient_norms(torch.rand(7, generator=torch.Generator().manual_seed(7)))

    # Logits below 1e-12 make exp differ from 1 by less than 1e-12.
    uniform = torch.full((7,), 1 / 7, dtype=torch.float64)
    assert torch.allclose(sampler.token_probabilities(), uniform, rtol=1e-11, atol=0)


@pytest.mark.parametrize(
    ("grad_norms", "message"),
    [
        (torch.zeros(4), r"shape \(4,\).*at least 7"),
        (torch.tensor([0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), r"finite and >= 0"),
    ],
)
def test_frequency_rejects_bad_grad_norms(grad_norms, message):
    pairs, train_ids, _ = split_pairs(p=7, test_fraction=0.2, train_fraction=0.5, seed=0)
    sampler = FrequencyAwareSampler(pairs[train_ids], 7, 8, torch.Generator())

    with pytest.raises(ValueError, match=message):
        sampler.update_gradient_norms(grad_norms)


def test_sampler_rejects_non_operand_tokens():
    # The [a, op, b, =] rows of p = 5 contain the op token 5 and the '=' token 6.
    tokens = torch.tensor([[0, 5, 1, 6], [2, 5, 3, 6]])

    with pytest.raises(ValueError, match=r"from 0 to 5, but p=5.*operand columns"):
        RandomBatchSampler(tokens[:, [0, 1]], 5, 4, torch.Generator())


def test_frequency_rejects_nonpositive_gamma():
    with pytest.raises(ValueError, match=r"gamma=0\.0.*> 0"):
        FrequencyAwareSampler(torch.tensor([[0, 1]]), 2, 1, torch.Generator(), gamma=0.0)


@pytest.mark.parametrize(("p", "train_fraction"), [(7, 0.5), (13, 0.3)])
def test_balanced_epochs_exactly_balanced(p, train_fraction):
    pairs, train_ids, _ = split_pairs(p, test_fraction=0.2, train_fraction=train_fraction, seed=2)
    operand_tokens = pairs[train_ids]
    sampler = TokenBalancedSampler(operand_tokens, p, 5, torch.Generator().manual_seed(8))
    assert sampler.exact

    n_epochs = 3
    stream = draw(sampler, math.ceil(n_epochs * sampler.epoch_length / 5))
    present = torch.bincount(operand_tokens.flatten(), minlength=p) > 0
    for epoch in range(n_epochs):
        chunk = stream[epoch * sampler.epoch_length : (epoch + 1) * sampler.epoch_length]
        counts = torch.bincount(operand_tokens[chunk].flatten(), minlength=p)
        # Stated bound: counts differ by 0, each present token appears 2 · rounds_per_epoch times.
        assert counts[present].tolist() == [2 * sampler.rounds_per_epoch] * int(present.sum())
        assert counts[~present].tolist() == [0] * int((~present).sum())


def test_balanced_epoch_length_tracks_train_size():
    pairs, train_ids, _ = split_pairs(p=13, test_fraction=0.2, train_fraction=0.3, seed=2)
    sampler = TokenBalancedSampler(pairs[train_ids], 13, 5, torch.Generator())

    # 51 training pairs over 13 tokens: round(51 / 13) = 4 rounds of 13 examples.
    assert len(train_ids) == 51
    assert sampler.rounds_per_epoch == 4
    assert sampler.epoch_length == 52


def test_balanced_without_matching_warns_and_keeps_pivots():
    # Tokens 1, 2 and 3 occur only with token 0, so no schedule can balance them: each round
    # must give token 0 at least three appearances.
    operand_tokens = torch.tensor([[0, 1], [2, 0], [0, 3], [0, 0]])
    with pytest.warns(GrokinterpWarning, match="cannot balance operand tokens exactly"):
        sampler = TokenBalancedSampler(operand_tokens, 5, 4, torch.Generator().manual_seed(9))
    assert not sampler.exact

    stream = draw(sampler, 10)
    for start in range(0, len(stream), 4):
        counts = torch.bincount(operand_tokens[stream[start : start + 4]].flatten(), minlength=5)
        # One round: every token is the pivot once, so each appears at least once.
        assert bool((counts[:4] >= 1).all())
        assert int(counts[4]) == 0
