"""Tests of grokinterp.analysis.progress: grid order, hooks and the losses on the train pairs."""

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from grokinterp.analysis import progress as progress_module
from grokinterp.analysis.progress import (
    grid_activations,
    grid_logits,
    grid_tokens,
    pair_mask,
    progress_measures,
)
from grokinterp.models import HookedMLP, MLPConfig
from grokinterp.models.transformer import make_transformer
from grokinterp.tasks import TaskConfig, all_pairs, make_split

# Float64 sums of a few hundred products of size ~1.
ROUNDING = 1e-10


def coordinate_mlp(p: int) -> HookedMLP:
    """A HookedMLP whose hidden unit 0 outputs a and unit 1 outputs b, for tokens [a, op, b, =].

    W_E is the identity, so the first layer's input is the concatenated one-hot tokens. Row t
    of the block for position 0 writes t into unit 0, and row t of the block for position 2
    writes t into unit 1. All values are >= 0, so the ReLU passes them unchanged.
    """
    d_vocab = p + 2
    model = HookedMLP(MLPConfig(d_vocab=d_vocab, n_ctx=4, d_out=p, d_embed=d_vocab, d_mlp=3)).double()
    with torch.no_grad():
        model.embed.W_E.copy_(torch.eye(d_vocab))
        model.mlp.W_in.zero_()
        model.mlp.b_in.zero_()
        residues = torch.arange(p, dtype=torch.float64)
        model.mlp.W_in[0:p, 0] = residues
        model.mlp.W_in[2 * d_vocab : 2 * d_vocab + p, 1] = residues
    return model


def test_grid_tokens_order():
    task = TaskConfig(p=5)
    tokens = grid_tokens(task)
    assert tokens.shape == (25, 4)
    # Row a * p + b contains [a, op, b, =].
    assert tokens[3 * 5 + 1].tolist() == [3, 5, 1, 6]
    assert grid_tokens(TaskConfig(p=5, layout="a_b_eq"))[7].tolist() == [1, 2, 5]


def test_grid_activations_index_a_then_b():
    p = 7
    activations = grid_activations(coordinate_mlp(p), TaskConfig(p=p), batch_size=10)
    residues = torch.arange(p, dtype=torch.float64)
    assert activations.shape == (p, p, 3)
    assert torch.equal(activations[:, :, 0], residues[:, None].expand(p, p))
    assert torch.equal(activations[:, :, 1], residues[None, :].expand(p, p))


def test_transformer_grid_reads_last_position():
    p = 5
    task = TaskConfig(p=p, layout="a_b_eq")
    model = make_transformer(p, d_model=8, n_heads=2, d_head=4, d_mlp=12, dtype=torch.float64)
    activations = grid_activations(model, task)
    logits = grid_logits(model, task)

    for a, b in ((0, 0), (2, 4), (4, 1)):
        tokens = torch.tensor([[a, b, p]])
        output, cache = model.run_with_cache(tokens)
        assert torch.allclose(activations[a, b], cache["blocks.0.mlp.hook_post"][0, -1], rtol=ROUNDING)
        assert torch.allclose(logits[a, b], output[0, -1], rtol=ROUNDING)


@pytest.mark.parametrize("layout", ["a_op_b_eq", "a_b_eq"])
def test_grid_train_loss_equals_direct_loss(layout):
    # The masked grid logits are the model's logits on the training pairs, so the mean
    # cross-entropy must equal the one computed from the pairs directly.
    task = TaskConfig(p=7, layout=layout, test_fraction=0.3, train_fraction=0.5)
    pairs, split = all_pairs(task), make_split(task)
    if layout == "a_b_eq":
        model = make_transformer(7, d_model=8, n_heads=2, d_head=4, d_mlp=12, dtype=torch.float64)
    else:
        model = HookedMLP(MLPConfig(d_vocab=9, n_ctx=4, d_out=7, d_embed=6, d_mlp=10)).double()
    measures = progress_measures(model, task, pair_mask(pairs, split.train, 7))

    output = model(pairs.tokens[split.train])
    logits = output[:, -1] if output.ndim == 3 else output
    direct = F.cross_entropy(logits, pairs.labels[split.train])
    assert math.isclose(measures.train_loss, direct.item(), rel_tol=ROUNDING)


def test_pair_mask_marks_split_pairs():
    task = TaskConfig(p=5, op="divide")  # divide drops b = 0, so indices differ from a * p + b
    pairs, split = all_pairs(task), make_split(task)
    mask = pair_mask(pairs, split.train, 5)
    assert int(mask.sum()) == len(split.train)
    for index in split.train.tolist():
        assert mask[pairs.a[index], pairs.b[index]]
    assert not mask[:, 0].any()


def frequency_mlp(p: int, k: int, d_mlp: int = 8) -> HookedMLP:
    """A HookedMLP whose neurons compute c_j + cos(w_k a + φ_j) + cos(w_k b + ψ_j) > 0.

    The embedding row of residue x contains cos(w_k x) and sin(w_k x). The first layer mixes
    them with phases, and a bias of 3 keeps the pre-activation positive, so the ReLU is the
    identity and every neuron's variance lies in frequency k.
    """
    model = HookedMLP(MLPConfig(d_vocab=p + 2, n_ctx=4, d_out=p, d_embed=2, d_mlp=d_mlp)).double()
    x = torch.arange(p, dtype=torch.float64)
    angle = 2 * math.pi * k * x / p
    generator = torch.Generator().manual_seed(0)
    phases = torch.rand(2, d_mlp, generator=generator, dtype=torch.float64) * 2 * math.pi
    with torch.no_grad():
        model.embed.W_E.zero_()
        model.embed.W_E[:p, 0] = torch.cos(angle)
        model.embed.W_E[:p, 1] = torch.sin(angle)
        model.mlp.W_in.zero_()
        # cos(θ + φ) = cos θ cos φ - sin θ sin φ, for position 0 (a) and position 2 (b).
        for pos, phase in ((0, phases[0]), (2, phases[1])):
            model.mlp.W_in[2 * pos] = torch.cos(phase)
            model.mlp.W_in[2 * pos + 1] = -torch.sin(phase)
        model.mlp.b_in.fill_(3.0)
    return model


def test_frequency_network_key_frequency():
    p, k = 11, 3
    task = TaskConfig(p=p, test_fraction=0.3, train_fraction=0.5)
    pairs, split = all_pairs(task), make_split(task)
    measures = progress_measures(frequency_mlp(p, k), task, pair_mask(pairs, split.train, p))

    assert measures.key_frequencies == (k,)
    assert measures.key_frequency_source == "neurons"
    assert measures.cluster_sizes == {k: 8}
    assert torch.allclose(measures.fractions[:, k - 1], torch.ones(8, dtype=torch.float64), rtol=1e-9)
    assert measures.not_applicable is None
    assert measures.restricted_loss is not None and measures.excluded_loss is not None


def test_other_operations_are_not_applicable():
    p, k = 11, 3
    task = TaskConfig(p=p, op="multiply", test_fraction=0.3, train_fraction=0.5)
    pairs, split = all_pairs(task), make_split(task)
    measures = progress_measures(frequency_mlp(p, k), task, pair_mask(pairs, split.train, p))

    assert measures.key_frequencies == (k,)
    assert measures.restricted_loss is None
    assert measures.excluded_loss is None
    assert "defined for addition" in measures.not_applicable


def test_given_frequencies_are_used():
    p = 11
    task = TaskConfig(p=p, test_fraction=0.3, train_fraction=0.5)
    pairs, split = all_pairs(task), make_split(task)
    measures = progress_measures(frequency_mlp(p, 3), task, pair_mask(pairs, split.train, p), frequencies=[1, 2])
    assert measures.key_frequencies == (1, 2)
    assert measures.key_frequency_source == "given"


def test_rejects_wrong_mask_shape():
    with pytest.raises(ValueError, match="expected \\[11, 11\\]"):
        progress_measures(frequency_mlp(11, 3), TaskConfig(p=11), torch.zeros(5, 5, dtype=torch.bool))


def test_docstring_examples():
    assert doctest.testmod(progress_module).failed == 0
