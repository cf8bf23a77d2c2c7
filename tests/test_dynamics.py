"""Tests of grokinterp.analysis.dynamics on hand-built histories and a micro run."""

import dataclasses
from pathlib import Path

import pytest
import torch

from grokinterp.analysis.dynamics import (
    TokenHistory,
    read_embed_gradients,
    read_token_history,
    stagnant_tokens,
)
from grokinterp.checkpoint import read_metrics
from grokinterp.training.config import apply_overrides
from grokinterp.training.loop import train


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grokinterp.training.presets import get_preset

    cfg = apply_overrides(
        get_preset("tiny"),
        [
            "task.p=11",
            "model.d_embed=8",
            "model.d_mlp=16",
            "train.batch_size=4",
            "train.steps=30",
            "train.eval_every=10",
            "train.checkpoint_every=10",
            "train.record_grad_steps=1,12",
        ],
    )
    run_dir = tmp_path_factory.mktemp("dynamics") / "run"
    train(dataclasses.replace(cfg, name="micro"), run_dir, progress=False)
    return run_dir


def history(norms: list[float], counts: list[int], step: int = 100) -> TokenHistory:
    return TokenHistory(
        steps=torch.tensor([0, step]),
        appearance_count=torch.tensor([[0] * len(counts), counts]),
        grad_norm_mean=torch.zeros(2, len(counts), dtype=torch.float64),
        embed_norm=torch.tensor([[0.0] * len(norms), norms], dtype=torch.float64),
    )


def test_stagnation_needs_both_conditions():
    # Median norm 2 and mean count 50: token 0 is small and rare, token 1 small but frequent,
    # token 2 rare but large, token 5 is not a candidate.
    result = stagnant_tokens(
        history([0.5, 0.5, 3.0, 2.0, 2.0, 0.1], [10, 90, 10, 70, 70, 1]), candidates=range(5)
    )
    assert result.tokens == (0,)
    assert result.norm_threshold == pytest.approx(0.5 * 2.0)
    assert result.count_threshold == pytest.approx(0.5 * 50.0)
    assert result.step == 100


def test_stagnation_fractions_change_thresholds():
    # Median norm 2, mean count 38. Token 0 (norm 1.5, count 30) passes only the looser
    # thresholds; token 1 (norm 0.5, count 10) passes both.
    token_history = history([1.5, 0.5, 3.0, 2.0, 2.0], [30, 10, 10, 70, 70])
    assert stagnant_tokens(token_history, candidates=range(5)).tokens == (1,)
    loose = stagnant_tokens(token_history, candidates=range(5), norm_fraction=1.0, count_fraction=1.0)
    assert loose.tokens == (0, 1)
    with pytest.raises(ValueError, match="norm_fraction=0.0 is invalid"):
        stagnant_tokens(token_history, candidates=[0], norm_fraction=0.0)


def test_update_frequency():
    frequency = history([1.0, 1.0], [25, 100]).update_frequency()
    assert frequency[0].tolist() == [0.0, 0.0]
    assert frequency[1].tolist() == [0.25, 1.0]


def test_read_token_history(micro_run: Path):
    token_history = read_token_history(micro_run)
    metrics = read_metrics(micro_run)
    assert token_history.steps.tolist() == [row["step"] for row in metrics]
    assert token_history.appearance_count.shape == (len(metrics), 13)
    # The op and "=" tokens occur in every batch.
    assert token_history.appearance_count[-1, 11:].tolist() == [30, 30]
    assert bool((token_history.update_frequency() <= 1).all())
    assert read_token_history(micro_run, max_step=10).steps.tolist() == [0, 10]


def test_read_token_history_missing(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="train.token_stats=true"):
        read_token_history(tmp_path)


def test_read_embed_gradients(micro_run: Path):
    gradients = read_embed_gradients(micro_run)
    assert list(gradients) == [1, 12]
    assert gradients[1].shape == (13, 8)
    # At batch size 4 with two operand slots, at most 8 of the 11 operand rows get a gradient.
    assert int((gradients[1][:11].abs().sum(dim=1) == 0).sum()) >= 3
    assert list(read_embed_gradients(micro_run, steps=[12])) == [12]
    with pytest.raises(FileNotFoundError, match="has no gradients at steps \\[5\\]"):
        read_embed_gradients(micro_run, steps=[5])


def test_read_embed_gradients_missing(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="train.record_grad_steps=1,12,40,68"):
        read_embed_gradients(tmp_path)


def test_history_rejects_mismatched_rows():
    # Under the test suite's runtime shape checking jaxtyping rejects the mismatched "step"
    # axis first (a TypeError); without it, __post_init__ raises the ValueError.
    with pytest.raises((ValueError, TypeError), match="embed_norm"):
        TokenHistory(
            steps=torch.tensor([0, 1]),
            appearance_count=torch.zeros(2, 3, dtype=torch.long),
            grad_norm_mean=torch.zeros(2, 3, dtype=torch.float64),
            embed_norm=torch.zeros(3, 3, dtype=torch.float64),
        )

