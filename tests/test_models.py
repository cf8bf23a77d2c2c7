from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grokinterp.models import (
    HookedMLP,
    MLPConfig,
    ModelConfig,
    answer_logits,
    build_model,
    embedding_names,
    first_layer_matrix,
    first_layer_name,
)
from grokinterp.tasks import TaskConfig, all_pairs


def small_mlp(input_mode: str = "embed", seed: int = 0) -> HookedMLP:
    return HookedMLP(MLPConfig(d_vocab=9, n_ctx=4, d_out=7, input_mode=input_mode, d_embed=5, d_mlp=12), seed=seed)


def tokens_for_p7() -> torch.Tensor:
    return all_pairs(TaskConfig(p=7)).tokens[:10]


def test_embed_mode_hook_names_and_shapes() -> None:
    model = small_mlp()
    logits, cache = model.run_with_cache(tokens_for_p7())
    assert set(cache.keys()) == {"hook_embed", "hook_input", "mlp.hook_pre", "mlp.hook_post", "hook_logits"}
    assert cache["hook_embed"].shape == (10, 4, 5)
    assert cache["hook_input"].shape == (10, 20)
    assert cache["mlp.hook_pre"].shape == (10, 12)
    assert cache["mlp.hook_post"].shape == (10, 12)
    assert logits.shape == (10, 7)
    assert torch.equal(cache["hook_logits"], logits)


def test_cache_contents_follow_forward_definition() -> None:
    model = small_mlp()
    tokens = tokens_for_p7()
    _, cache = model.run_with_cache(tokens)
    embedded = model.embed.W_E[tokens]
    expected_input = embedded.reshape(10, -1)
    expected_pre = expected_input @ model.mlp.W_in + model.mlp.b_in
    torch.testing.assert_close(cache["hook_embed"], embedded)
    torch.testing.assert_close(cache["mlp.hook_pre"], expected_pre)
    torch.testing.assert_close(cache["mlp.hook_post"], F.relu(expected_pre))
    torch.testing.assert_close(cache["hook_logits"], F.relu(expected_pre) @ model.unembed.W_U + model.unembed.b_U)


def test_run_with_cache_keeps_gradients_when_asked() -> None:
    model = small_mlp()
    tokens = tokens_for_p7()
    labels = all_pairs(TaskConfig(p=7)).labels[:10]
    loss, cache = model.run_with_cache(tokens, labels=labels, return_type="loss", incl_bwd=True)
    assert loss.ndim == 0
    # Backward hooks cache dL/d(activation); at the logits it is (softmax - onehot) / batch.
    expected = (torch.softmax(cache["hook_logits"], dim=-1) - F.one_hot(labels, 7)) / 10
    torch.testing.assert_close(cache["hook_logits_grad"], expected)
    assert cache["mlp.hook_post_grad"].shape == (10, 12)
    assert model.embed.W_E.grad is not None


def test_run_with_cache_without_gradients() -> None:
    model = small_mlp()
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens_for_p7())
    assert not logits.requires_grad
    assert not cache["mlp.hook_post"].requires_grad


def test_numeric_mode_feeds_token_ids() -> None:
    model = small_mlp("numeric")
    tokens = tokens_for_p7()
    _, cache = model.run_with_cache(tokens)
    assert model.embed is None
    assert model.mlp.W_in.shape == (4, 12)
    assert torch.equal(cache["hook_input"], tokens.float())
    assert "hook_embed" not in cache.keys()


def test_onehot_mode_feeds_concatenated_one_hot() -> None:
    model = small_mlp("onehot")
    tokens = tokens_for_p7()
    _, cache = model.run_with_cache(tokens)
    assert model.mlp.W_in.shape == (4 * 9, 12)
    assert torch.equal(cache["hook_input"], F.one_hot(tokens, 9).float().reshape(10, -1))


def test_onehot_equals_embedding_with_W_in_rows() -> None:
    # A one-hot first layer is an embedding: with E = identity blocks, the pre-activations agree.
    onehot = small_mlp("onehot")
    tokens = tokens_for_p7()
    pre = onehot.first_layer_input(tokens) @ onehot.mlp.W_in
    rows = onehot.mlp.W_in.reshape(4, 9, 12)
    expected = sum(rows[pos][tokens[:, pos]] for pos in range(4))
    torch.testing.assert_close(pre, expected)


def test_init_matches_pytorch_defaults_in_distribution() -> None:
    model = HookedMLP(MLPConfig(d_vocab=99, n_ctx=4, d_out=97, d_embed=128, d_mlp=512), seed=0)
    bound = 1 / 512**0.5
    assert abs(float(model.embed.W_E.detach().std()) - 1.0) < 0.02
    assert float(model.mlp.W_in.detach().abs().max()) <= bound
    # Uniform(-b, b) has standard deviation b / sqrt(3).
    assert abs(float(model.mlp.W_in.detach().std()) - bound / 3**0.5) < 0.02 * bound


def test_init_seed_is_reproducible_and_leaves_global_rng() -> None:
    state = torch.random.get_rng_state()
    first = small_mlp(seed=3)
    second = small_mlp(seed=3)
    third = small_mlp(seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first.embed.W_E, second.embed.W_E)
    assert not torch.equal(first.embed.W_E, third.embed.W_E)


def test_W_in_block_multiplies_one_position() -> None:
    model = small_mlp()
    tokens = tokens_for_p7()
    x = model.embed.W_E[tokens]
    pre = sum(x[:, pos] @ model.W_in_block(pos) for pos in range(4)) + model.mlp.b_in
    torch.testing.assert_close(pre, model.first_layer_input(tokens) @ model.mlp.W_in + model.mlp.b_in)


def test_first_layer_matrix_blocks_side_by_side() -> None:
    model = small_mlp()
    W = first_layer_matrix(model)
    assert W.shape == (5, 4 * 12)
    torch.testing.assert_close(W[:, 12:24], model.W_in_block(1))
    assert first_layer_name(model) == "mlp.W_in"
    assert embedding_names(model) == ["embed.W_E"]


def test_bad_token_shape_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected \[batch, 4\]"):
        small_mlp()(torch.zeros(3, 3, dtype=torch.long))


def test_no_embedding_W_E_error() -> None:
    with pytest.raises(ValueError, match="input_mode='embed'"):
        _ = small_mlp("numeric").W_E


def test_build_model_sizes_from_task() -> None:
    model = build_model(ModelConfig(d_embed=8, d_mlp=16), TaskConfig(p=11))
    assert model.embed.W_E.shape == (13, 8)
    assert model.mlp.W_in.shape == (32, 16)
    assert model.unembed.W_U.shape == (16, 11)


def test_build_transformer_answer_logits() -> None:
    task = TaskConfig(p=11, layout="a_b_eq")
    model = build_model(ModelConfig(kind="transformer", d_model=16, n_heads=2, d_head=8, d_mlp=32), task)
    tokens = all_pairs(task).tokens[:5]
    assert model(tokens).shape == (5, 3, 11)
    assert answer_logits(model, tokens).shape == (5, 11)
    assert first_layer_name(model) == "blocks.0.attn.W_V"
    assert first_layer_matrix(model).shape == (16, 16)


def test_transformer_rejects_op_layout() -> None:
    with pytest.raises(ValueError, match="task.layout=a_b_eq"):
        build_model(ModelConfig(kind="transformer"), TaskConfig(p=11))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "rnn"}, "model.kind='rnn' is unknown"),
        ({"input_mode": "bits"}, "model.input_mode='bits' is unknown"),
        ({"d_mlp": 0}, "model.d_mlp=0 is invalid"),
        ({"kind": "transformer", "input_mode": "onehot"}, "applies to MLPs only"),
    ],
)
def test_model_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_embedding_gradient_repeats_on_two_threads() -> None:
    # Repeated tokens add their gradients into one row. That sum must not depend on the thread
    # count or vary between calls, so that runs repeat bit for bit.
    model = HookedMLP(MLPConfig(d_vocab=97, n_ctx=4, d_out=97, d_embed=128, d_mlp=8))
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 97, (512, 4), generator=generator)
    upstream = torch.randn(512, 4, 128, generator=generator)

    def embedding_gradient() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        (model.embed(tokens) * upstream).sum().backward()
        return model.embed.W_E.grad.clone()

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = embedding_gradient()
        torch.set_num_threads(2)
        two_threads = [embedding_gradient() for _ in range(20)]
    finally:
        torch.set_num_threads(threads)

    for gradient in two_threads:
        assert torch.equal(gradient, one_thread)
