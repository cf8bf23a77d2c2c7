from __future__ import annotations

import pytest
import torch

from grokinterp.tasks import (
    TaskConfig,
    all_pairs,
    apply_op,
    is_prime,
    make_split,
    split_sizes,
    split_statistics,
)

PYTHON_OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "subtract": lambda a, b, p: (a - b) % p,
    "multiply": lambda a, b, p: (a * b) % p,
    "divide": lambda a, b, p: (a * pow(b, -1, p)) % p,
    "square_sum": lambda a, b, p: (a * a + b * b) % p,
}


@pytest.mark.parametrize("op", sorted(PYTHON_OPS))
@pytest.mark.parametrize("p", [7, 13])
def test_every_op_matches_python(op: str, p: int) -> None:
    pairs = all_pairs(TaskConfig(p=p, op=op))
    for a, b, label in zip(pairs.a.tolist(), pairs.b.tolist(), pairs.labels.tolist(), strict=False):
        assert label == PYTHON_OPS[op](a, b, p), (a, b)


@pytest.mark.parametrize("op", ["add", "subtract", "multiply", "square_sum"])
def test_composite_modulus_for_non_division(op: str) -> None:
    pairs = all_pairs(TaskConfig(p=12, op=op))
    assert len(pairs.labels) == 144
    for a, b, label in zip(pairs.a.tolist(), pairs.b.tolist(), pairs.labels.tolist(), strict=False):
        assert label == PYTHON_OPS[op](a, b, 12)


def test_divide_skips_zero_divisor() -> None:
    pairs = all_pairs(TaskConfig(p=11, op="divide"))
    assert len(pairs.labels) == 11 * 10
    assert bool((pairs.b != 0).all())
    # (a / b) * b == a mod p for every pair.
    assert torch.equal((pairs.labels * pairs.b) % 11, pairs.a)


def test_divide_rejects_composite_modulus() -> None:
    with pytest.raises(ValueError, match="needs a prime modulus"):
        TaskConfig(p=12, op="divide")


def test_apply_op_rejects_zero_divisor() -> None:
    with pytest.raises(ValueError, match="b = 0"):
        apply_op(torch.tensor([1]), torch.tensor([0]), "divide", 7)


def test_layout_a_op_b_eq_tokens() -> None:
    task = TaskConfig(p=5, op="multiply", layout="a_op_b_eq")
    pairs = all_pairs(task)
    assert task.d_vocab == 7
    assert task.n_ctx == 4
    assert pairs.tokens.shape == (25, 4)
    index = 3 * 5 + 4
    assert pairs.tokens[index].tolist() == [3, 5, 4, 6]
    assert int(pairs.labels[index]) == (3 * 4) % 5


def test_layout_a_b_eq_tokens() -> None:
    task = TaskConfig(p=5, layout="a_b_eq")
    pairs = all_pairs(task)
    assert task.d_vocab == 6
    assert task.n_ctx == 3
    assert task.op_token is None
    assert pairs.tokens[7].tolist() == [1, 2, 5]


@pytest.mark.parametrize("strategy", ["random", "uniform", "skewed"])
def test_split_disjoint_with_requested_sizes(strategy: str) -> None:
    task = TaskConfig(p=23, split=strategy, test_fraction=0.2, train_fraction=0.3)
    split = make_split(task)
    n_train, n_test = split_sizes(task)
    assert len(split.train) == n_train == round(0.3 * 23 * 23)
    assert len(split.test) == n_test == round(0.2 * 23 * 23)
    assert len(set(split.train.tolist()) & set(split.test.tolist())) == 0
    assert len(set(split.train.tolist())) == n_train
    assert len(set(split.test.tolist())) == n_test


def test_split_reproducible_and_seeded() -> None:
    first = make_split(TaskConfig(p=13, data_seed=3))
    second = make_split(TaskConfig(p=13, data_seed=3))
    other = make_split(TaskConfig(p=13, data_seed=4))
    assert torch.equal(first.train, second.train)
    assert not torch.equal(first.train, other.train)


def test_uniform_split_balances_operand_counts() -> None:
    task = TaskConfig(p=23, split="uniform", train_fraction=0.3)
    pairs = all_pairs(task)
    counts = split_statistics(task, pairs, make_split(task)).train_counts
    # Each pair adds one count to two operand values, so perfect balance is 2 n_train / p per value;
    # the greedy construction keeps every count within one of that.
    ideal = 2 * len(make_split(task).train) / task.p
    assert int(counts.max() - counts.min()) <= 1
    assert abs(float(counts.double().mean()) - ideal) < 1e-9


def test_random_split_less_balanced_than_uniform() -> None:
    task = TaskConfig(p=23, split="random", train_fraction=0.3)
    counts = split_statistics(task, all_pairs(task), make_split(task)).train_counts
    assert int(counts.max() - counts.min()) > 1


def test_skewed_split_favours_small_operands() -> None:
    task = TaskConfig(p=31, split="skewed", skew_fraction=0.2, skew_weight=8.0)
    counts = split_statistics(task, all_pairs(task), make_split(task)).train_counts.double()
    favoured = counts[: task.n_favoured].mean()
    others = counts[task.n_favoured :].mean()
    assert task.n_favoured == 7
    assert favoured > 2 * others


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1}, "task.p=1 is invalid"),
        ({"op": "power"}, "task.op='power' is not a known operation"),
        ({"layout": "abc"}, "task.layout='abc'"),
        ({"split": "odd"}, "task.split='odd'"),
        ({"test_fraction": 0.0}, "task.test_fraction=0.0 is invalid"),
        ({"train_fraction": 1.5}, "task.train_fraction=1.5 is invalid"),
        ({"test_fraction": 0.6, "train_fraction": 0.6}, "exceeds 1"),
        ({"skew_weight": 0.5}, "task.skew_weight=0.5"),
    ],
)
def test_task_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TaskConfig(**kwargs)


def test_is_prime_small_numbers() -> None:
    assert [n for n in range(20) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19]
