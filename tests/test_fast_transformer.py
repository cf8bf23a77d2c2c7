"""Tests of the reference transformer factory and its fast answer-logit path.

The oracle for the fast path is TransformerLens's own hooked forward, ``model(tokens)[:, -1]``,
an independent implementation of the same equations.
"""

from __future__ import annotations

import copy
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

from grokinterp.models.transformer import fast_answer_logits, make_transformer

P = 13
SMALL = {"d_model": 32, "n_heads": 4, "d_head": 8, "d_mlp": 64}
KEY_BIAS = "blocks.0.attn.b_K"

# float32 tolerances. The two paths add the same terms in a different order, so they differ by
# rounding: a few float32 epsilons (1.2e-7) relative to the summed values, well inside 1e-5,
# while a missing or wrong term changes logits and gradients by more than 1e-3.
F32 = {"rtol": 1e-5, "atol": 1e-5}
# float64 tolerances: the same argument with float64 epsilon (2.2e-16).
F64 = {"rtol": 1e-12, "atol": 1e-12}


def all_pairs(p: int) -> torch.Tensor:
    """Return the tokens [a, b, =] of every pair of operands, with "=" as token p."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)


def perturb(model: HookedTransformer, seed: int, scale: float = 0.3) -> None:
    """Add Gaussian noise to every parameter, so biases are nonzero and attention is sharp."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.add_(scale * noise)


def custom_model(**overrides: object) -> HookedTransformer:
    """Build a small HookedTransformer from a config, for settings the factory does not make."""
    settings = {
        "n_layers": 1,
        "d_model": 16,
        "n_heads": 2,
        "d_head": 8,
        "d_mlp": 32,
        "d_vocab": P + 1,
        "d_vocab_out": P,
        "n_ctx": 3,
        "act_fn": "relu",
        "normalization_type": None,
    }
    settings.update(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(HookedTransformerConfig(**settings))


def hooked_answer_logits(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens)[:, -1]


# make_transformer


def test_factory_builds_reference_architecture():
    model = make_transformer(113)
    cfg = model.cfg

    assert cfg.n_layers == 1
    assert (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (128, 4, 32, 512)
    assert (cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx) == (114, 113, 3)
    assert cfg.act_fn == "relu"
    assert cfg.normalization_type is None
    assert cfg.positional_embedding_type == "standard"
    assert model.embed.W_E.shape == (114, 128)
    assert model.unembed.W_U.shape == (128, 113)
    assert all(param.requires_grad for param in model.parameters())

    logits = model(all_pairs(113)[:5])
    assert logits.shape == (5, 3, 113)


def test_factory_passes_widths_and_dtype():
    model = make_transformer(P, d_model=20, n_heads=3, d_head=5, d_mlp=24, dtype=torch.float64)

    assert model.blocks[0].attn.W_Q.shape == (3, 20, 5)
    assert model.blocks[0].attn.W_O.shape == (3, 5, 20)
    assert model.blocks[0].mlp.W_in.shape == (20, 24)
    assert all(param.dtype == torch.float64 for param in model.parameters())


def test_factory_seed_is_reproducible():
    first = make_transformer(P, seed=3, **SMALL)
    again = make_transformer(P, seed=3, **SMALL)
    other = make_transformer(P, seed=4, **SMALL)

    parameters = zip(first.named_parameters(), again.parameters(), other.parameters(), strict=True)
    for (name, a), b, c in parameters:
        assert torch.equal(a, b), name
        if name.split(".")[-1].startswith("W_"):
            assert not torch.equal(a, c), name


def test_factory_leaves_global_rng_unchanged():
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    torch_state = torch.get_rng_state()
    python_state = random.getstate()
    numpy_state = np.random.get_state()

    make_transformer(P, seed=0, **SMALL)

    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0]
    assert np.array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1}, "p=1 is invalid"),
        ({"p": 13, "d_model": 0}, "d_model=0 is invalid"),
        ({"p": 13, "n_heads": -2}, "n_heads=-2 is invalid"),
        ({"p": 13, "d_head": 0}, "d_head=0 is invalid"),
        ({"p": 13, "d_mlp": 0}, "d_mlp=0 is invalid"),
        ({"p": 13, "seed": -1}, "seed=-1 is invalid"),
        ({"p": 13, "dtype": torch.int64}, "dtype=torch.int64 is invalid"),
        ({"p": 13, "device": "not-a-device"}, "device='not-a-device' is invalid"),
    ],
)
def test_factory_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_transformer(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"p": True}, "p"), ({"p": 13.0}, "p"), ({"p": 13, "d_mlp": 1.5}, "d_mlp")],
)
def test_factory_rejects_non_int_sizes(kwargs, name):
    # With runtime type checking on, the annotation check may raise first, with its own message.
    with pytest.raises(TypeError, match=f"{name}=|'{name}'"):
        make_transformer(**kwargs)


# fast_answer_logits: values


def test_fast_logits_match_at_init():
    model = make_transformer(P, seed=0, **SMALL)
    tokens = all_pairs(P)

    torch.testing.assert_close(
        fast_answer_logits(model, tokens), hooked_answer_logits(model, tokens), **F32
    )


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, F32), (torch.float64, F64)])
def test_fast_logits_match_perturbed(dtype, tolerance):
    model = make_transformer(P, seed=1, dtype=dtype, **SMALL)
    perturb(model, seed=2)
    tokens = all_pairs(P)

    # The perturbation must make attention uneven (uniform is 1/3 per position), or a wrong
    # attention pattern could still pass.
    _, cache = model.run_with_cache(tokens)
    last_row = cache["blocks.0.attn.hook_pattern"][:, :, -1]
    assert last_row.max() > 0.6
    assert last_row.min() < 0.1

    torch.testing.assert_close(
        fast_answer_logits(model, tokens), hooked_answer_logits(model, tokens), **tolerance
    )


@pytest.mark.parametrize("n_pos", [1, 2])
def test_fast_logits_match_shorter_input(n_pos):
    model = make_transformer(P, seed=5, dtype=torch.float64, **SMALL)
    perturb(model, seed=6)
    tokens = all_pairs(P)[:, :n_pos]

    torch.testing.assert_close(
        fast_answer_logits(model, tokens), hooked_answer_logits(model, tokens), **F64
    )


def test_fast_logits_match_reference_size():
    model = make_transformer(113, seed=0)
    tokens = all_pairs(113)[::7]

    torch.testing.assert_close(
        fast_answer_logits(model, tokens), hooked_answer_logits(model, tokens), **F32
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"use_attn_result": True},
        {"use_split_qkv_input": True},
        {"use_hook_mlp_in": True},
        {"attention_dir": "bidirectional"},
        {"d_model": 24, "n_heads": 3, "d_head": 5},
    ],
)
def test_fast_logits_match_equivalent_settings(overrides):
    # Each setting adds hook points, changes attention rows other than the last, or decouples
    # d_model from n_heads * d_head. None of them changes the logits at the last position.
    model = custom_model(dtype=torch.float64, **overrides)
    perturb(model, seed=7)
    tokens = all_pairs(P)

    torch.testing.assert_close(
        fast_answer_logits(model, tokens), hooked_answer_logits(model, tokens), **F64
    )


def test_fast_logits_accept_int32_tokens():
    model = make_transformer(P, seed=0, **SMALL)
    tokens = all_pairs(P)

    torch.testing.assert_close(
        fast_answer_logits(model, tokens.to(torch.int32)), fast_answer_logits(model, tokens)
    )


# fast_answer_logits: gradients and training


def loss_gradients(model, tokens, labels, forward):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(forward(model, tokens), labels).backward()
    return {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, F32), (torch.float64, F64)])
def test_fast_gradients_match(dtype, tolerance):
    model = make_transformer(P, seed=8, dtype=dtype, **SMALL)
    perturb(model, seed=9)
    tokens = all_pairs(P)
    labels = torch.randint(0, P, (P * P,), generator=torch.Generator().manual_seed(10))

    fast = loss_gradients(model, tokens, labels, fast_answer_logits)
    hooked = loss_gradients(model, tokens, labels, hooked_answer_logits)

    assert fast.keys() == hooked.keys()
    for name in hooked:
        torch.testing.assert_close(fast[name], hooked[name], **tolerance, msg=name)

    # Adding q·b_K to every score of a query leaves the softmax unchanged, so the exact gradient
    # of b_K is zero. Every other gradient is far above the tolerance, so the comparison above
    # would catch a parameter that the fast path dropped.
    for grads in (fast, hooked):
        assert grads[KEY_BIAS].abs().max() < tolerance["atol"]
    for name in hooked.keys() - {KEY_BIAS}:
        assert hooked[name].abs().max() > 1e3 * tolerance["atol"], name


def test_adamw_steps_match():
    fast_model = make_transformer(P, seed=11, **SMALL)
    perturb(fast_model, seed=12, scale=0.1)
    hooked_model = copy.deepcopy(fast_model)
    tokens = all_pairs(P)
    labels = (tokens[:, 0] + tokens[:, 1]) % P

    for model, forward in ((fast_model, fast_answer_logits), (hooked_model, hooked_answer_logits)):
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98)
        )
        for _ in range(5):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(forward(model, tokens), labels).backward()
            optimizer.step()

    start = make_transformer(P, seed=11, **SMALL)
    perturb(start, seed=12, scale=0.1)
    for (name, fast), hooked, initial in zip(
        fast_model.named_parameters(), hooked_model.parameters(), start.parameters(), strict=True
    ):
        assert not torch.equal(fast, initial), name
        # The exact gradient of b_K is zero, so its float gradient is rounding noise. Adam scales
        # that noise up to steps of about lr in either direction, differently in each path.
        if name == KEY_BIAS:
            continue
        # Adam divides by sqrt(v), so a small gradient can amplify rounding up to a step of
        # about lr = 1e-3; the weights are compared at a tenth of that.
        torch.testing.assert_close(fast, hooked, rtol=0, atol=1e-4, msg=name)


# fast_answer_logits: rejected input


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_layers": 2}, "n_layers"),
        ({"normalization_type": "LN"}, "normalization_type"),
        ({"normalization_type": "LNPre"}, "normalization_type"),
        ({"positional_embedding_type": "rotary", "rotary_dim": 8}, "positional_embedding_type"),
        ({"act_fn": "gelu"}, "act_fn"),
        ({"gated_mlp": True}, "gated_mlp"),
        ({"attn_only": True}, "attn_only"),
        ({"parallel_attn_mlp": True}, "parallel_attn_mlp"),
        ({"attn_scores_soft_cap": 30.0}, "attn_scores_soft_cap"),
        ({"output_logits_soft_cap": 30.0}, "output_logits_soft_cap"),
    ],
)
def test_fast_path_rejects_unsupported_config(overrides, field):
    model = custom_model(**overrides)

    with pytest.raises(NotImplementedError, match=f"cfg.{field}="):
        fast_answer_logits(model, all_pairs(P))


def test_fast_path_rejects_attached_hooks():
    model = make_transformer(P, **SMALL)
    model.add_hook("blocks.0.mlp.hook_post", lambda tensor, hook: tensor)

    with pytest.raises(ValueError, match="hooks attached at blocks.0.mlp.hook_post"):
        fast_answer_logits(model, all_pairs(P))

    model.reset_hooks()
    fast_answer_logits(model, all_pairs(P))


def test_fast_path_rejects_other_models():
    # With runtime type checking on, the annotation check may raise first, with its own message.
    with pytest.raises(TypeError, match="model"):
        fast_answer_logits(torch.nn.Linear(3, P), all_pairs(P))


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (torch.zeros(4, 4, dtype=torch.long), "4 positions; the model reads 1 to n_ctx=3"),
        (torch.full((4, 3), P + 1), r"ids from 14 to 14; expected ids in \[0, d_vocab=14\)"),
        (torch.full((4, 3), -1), r"ids from -1 to -1"),
    ],
)
def test_fast_path_rejects_invalid_tokens(tokens, message):
    model = make_transformer(P, **SMALL)

    with pytest.raises(ValueError, match=message):
        fast_answer_logits(model, tokens)
