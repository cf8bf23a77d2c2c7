import json

import pytest
import torch
from state_roundtrip import roundtrip
from torch import nn

from grokinterp.training.token_stats import HEATMAP_STEPS, GradientRecorder, TokenStats


def rows(d_vocab, values):
    """A [d_vocab, 2] float64 matrix with the given rows set and the others zero."""
    matrix = torch.zeros(d_vocab, 2, dtype=torch.float64)
    for row, value in values.items():
        matrix[row] = torch.tensor(value, dtype=torch.float64)
    return matrix


# Three steps on a vocabulary of 4. Row-gradient norms: token 0 has 5, 2, 8; token 1 has 1 on
# step 1; token 2 has 10 on step 2; token 3 never appears.
STEPS = [
    (torch.tensor([[0, 1], [0, 1]]), rows(4, {0: [3.0, 4.0], 1: [0.0, 1.0]})),
    (torch.tensor([[0, 2]]), rows(4, {0: [0.0, 2.0], 2: [6.0, 8.0]})),
    (torch.tensor([[0, 0]]), rows(4, {0: [8.0, 0.0]})),
]
W_E = rows(4, {0: [1.0, 0.0], 1: [0.0, 2.0], 2: [3.0, 4.0], 3: [0.0, 0.0]})


def observed(ema):
    stats = TokenStats(d_vocab=4, ema=ema)
    for tokens, grad in STEPS:
        stats.observe(tokens, grad, W_E)
    return stats


def test_counts_and_norms_by_hand():
    stats = observed(ema=0.75)

    assert stats.steps == 3
    assert stats.appearance_count.tolist() == [3, 1, 1, 0]
    assert stats.embed_norm.tolist() == [1.0, 2.0, 5.0, 0.0]


def test_ema_mean_by_hand():
    # Token 0: 5, then 0.75 · 5 + 0.25 · 2 = 4.25, then 0.75 · 4.25 + 0.25 · 8 = 5.1875.
    # Tokens 1 and 2 appeared once, so their mean is that one norm; token 3 stays 0.
    stats = observed(ema=0.75)

    assert stats.grad_norm_mean.tolist() == [5.1875, 1.0, 10.0, 0.0]


def test_exact_mean_by_hand():
    # Token 0: (5 + 2 + 8) / 3 = 5.
    stats = observed(ema=None)

    assert stats.grad_norm_mean.tolist() == [5.0, 1.0, 10.0, 0.0]


def test_snapshot_is_plain_json():
    snapshot = observed(ema=0.75).snapshot()

    assert json.loads(json.dumps(snapshot)) == {
        "appearance_count": [3, 1, 1, 0],
        "grad_norm_mean": [5.1875, 1.0, 10.0, 0.0],
        "embed_norm": [1.0, 2.0, 5.0, 0.0],
    }


def test_token_stats_roundtrip_continues_identically():
    original = TokenStats(d_vocab=4, ema=0.75)
    for tokens, grad in STEPS[:2]:
        original.observe(tokens, grad, W_E)

    restored = TokenStats(d_vocab=4, ema=0.75)
    restored.load_state_dict(roundtrip(original.state_dict()))
    original.observe(*STEPS[2], W_E)
    restored.observe(*STEPS[2], W_E)

    assert restored.snapshot() == original.snapshot()
    assert restored.steps == original.steps


def test_token_stats_load_rejects_other_ema():
    state = TokenStats(d_vocab=4, ema=0.5).state_dict()

    with pytest.raises(ValueError, match=r"ema=0\.5.*built with ema=None"):
        TokenStats(d_vocab=4, ema=None).load_state_dict(state)


def test_token_out_of_range_rejected():
    stats = TokenStats(d_vocab=4)

    with pytest.raises(ValueError, match=r"token ids from 0 to 4.*\[0, 4\)"):
        stats.observe(torch.tensor([[0, 4]]), rows(4, {}), W_E)


def test_gradient_shape_mismatch_rejected():
    stats = TokenStats(d_vocab=5)

    with pytest.raises(ValueError, match=r"embed_grad of shape \(4, 2\).*\[5, d_model\]"):
        stats.observe(torch.tensor([[0, 1]]), rows(4, {}), W_E)


def embedding_gradient(tokens, d_vocab=6, d_embed=3):
    """∇_E L of a small embedding → linear model on a batch of [a, b] tokens."""
    generator = torch.Generator().manual_seed(0)
    W_E = nn.Parameter(torch.randn(d_vocab, d_embed, generator=generator))
    W = torch.randn(2 * d_embed, 4, generator=generator)
    logits = W_E[tokens].flatten(1) @ W
    nn.functional.cross_entropy(logits, torch.zeros(len(tokens), dtype=torch.long)).backward()
    return W_E.grad


def test_recorder_keeps_chosen_steps():
    recorder = GradientRecorder(steps=[12, 1])
    grad = embedding_gradient(torch.tensor([[0, 1], [2, 1]]))

    recorded = [recorder.record(step, grad) for step in range(1, 14)]

    assert recorded == [step in (1, 12) for step in range(1, 14)]
    assert recorder.steps == (1, 12)
    assert sorted(recorder.gradients) == [1, 12]


def test_recorder_copy_zero_absent_rows():
    recorder = GradientRecorder(steps=HEATMAP_STEPS)
    grad = embedding_gradient(torch.tensor([[0, 1], [2, 1]]))
    recorder.record(1, grad)
    grad.zero_()

    norms = recorder.gradients[1].norm(dim=1)
    # Tokens 0, 1 and 2 are in the batch and get a gradient; 3, 4 and 5 are absent.
    assert bool((norms[:3] > 0).all())
    assert norms[3:].tolist() == [0.0, 0.0, 0.0]


def test_recorder_roundtrip():
    original = GradientRecorder(steps=(1, 12))
    original.record(1, embedding_gradient(torch.tensor([[0, 1]])))

    restored = GradientRecorder(steps=(1, 12))
    restored.load_state_dict(roundtrip(original.state_dict()))

    assert list(restored.gradients) == [1]
    assert torch.equal(restored.gradients[1], original.gradients[1])


def test_recorder_rejects_non_integer_steps():
    with pytest.raises(TypeError, match=r"steps=\[1\.5\]"):
        # An iterator, which the runtime type checker cannot look into, so the library's own
        # check is the one that runs.
        GradientRecorder(steps=iter([1.5]))
