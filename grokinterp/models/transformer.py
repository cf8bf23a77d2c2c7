"""The one-layer reference transformer and a fast forward pass for its answer logits.

Nanda et al. 2023 ("Progress measures for grokking via mechanistic interpretability") study a
one-layer transformer on ``(a + b) mod p`` with ``p = 113``: input tokens ``[a, b, =]``, residual
width ``d_model = 128``, 4 attention heads of width 32, a ReLU MLP of width 512 and no
LayerNorm. :func:`make_transformer` builds that model as a TransformerLens ``HookedTransformer``
(vocabulary ``p + 1`` because ``=`` is token ``p``, output vocabulary ``p``).

:func:`fast_answer_logits` computes the same answer logits as ``model(tokens)[:, -1]`` with
less than a third of the matrix-multiply work (29 % at the reference size). In a one-layer model the residual stream at the
last position depends on the other positions only through their attention keys and values. So
the query, the attention output, the MLP and the unembedding are needed at the last position
only. The keys and values are cheap as well: before attention, the residual at position ``pos``
is ``W_E[token] + W_pos[pos]``, one of only ``n_ctx · d_vocab`` vectors. The fast path projects
those vectors once and gathers rows, instead of projecting ``batch · n_ctx`` rows. Both changes
are exact in real arithmetic. In floating point the results differ from the hooked forward
only by rounding, because the sums run in a different order.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

__all__ = ["fast_answer_logits", "make_transformer"]

# Config fields that change the arithmetic of a HookedTransformer forward pass (TransformerLens
# 3.9), with the only value the fast path implements. Fields that only add hook points, such as
# use_attn_result or use_split_qkv_input, leave the logits unchanged and are not listed.
_FAST_PATH_CONFIG = {
    "n_layers": 1,
    "normalization_type": None,
    "positional_embedding_type": "standard",
    "attn_only": False,
    "act_fn": "relu",
    "gated_mlp": False,
    "num_experts": None,
    "parallel_attn_mlp": False,
    "post_embedding_ln": False,
    "use_normalization_before_and_after": False,
    "use_qk_norm": False,
    "clip_qkv": None,
    "use_attention_sinks": False,
    "use_local_attn": False,
    "use_logn_attn": False,
    "n_key_value_heads": None,
    "load_in_4bit": False,
    "n_devices": 1,
    "original_architecture": None,
}


def make_transformer(
    p: int,
    d_model: int = 128,
    n_heads: int = 4,
    d_head: int = 32,
    d_mlp: int = 512,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """Build the one-layer grokking transformer of Nanda et al. 2023 for modulus ``p``.

    The model reads the tokens ``[a, b, =]`` (operands ``0..p-1``, ``=`` is token ``p``, so
    ``d_vocab = p + 1`` and ``n_ctx = 3``) and returns logits ``[batch, pos, p]``. The answer is
    at the last position. It has one layer, ReLU and no LayerNorm. Weights use the TransformerLens
    initialisation (``init_mode="gpt2"``): matrices are drawn from ``N(0, (0.8 / sqrt(d_model))²)``
    and biases are zero. ``d_model`` need not equal ``n_heads * d_head``.

    Args:
        p: the modulus, at least 2.
        d_model: width of the residual stream.
        n_heads: number of attention heads.
        d_head: width of each head.
        d_mlp: width of the MLP hidden layer.
        seed: seed of the initialisation, a non-negative integer. The weights are drawn on the
            CPU from a private copy of the global generator state, so the same seed gives the same
            weights on every device and the caller's random state is left unchanged.
        device: where the model lives. ``None`` means ``torch.get_default_device()``.
        dtype: floating-point type of the parameters.

    Returns:
        A ``HookedTransformer`` whose parameters all require gradients.

    Raises:
        TypeError: if ``p``, a width or ``seed`` is not an ``int``.
        ValueError: if an argument has an invalid value.
    """
    _check_int("p", p, minimum=2)
    widths = {"d_model": d_model, "n_heads": n_heads, "d_head": d_head, "d_mlp": d_mlp}
    for name, value in widths.items():
        _check_int(name, value, minimum=1)
    _check_int("seed", seed, minimum=0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"dtype={dtype!r} is invalid: expected a floating-point torch.dtype such as "
            "torch.float32 or torch.float64."
        )
    resolved_device = _resolve_device(device)

    # seed=None keeps TransformerLens from seeding the global torch, random and numpy generators;
    # the private CPU generator state below takes its place.
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=p + 1,
        d_vocab_out=p,
        n_ctx=3,
        act_fn="relu",
        normalization_type=None,
        positional_embedding_type="standard",
        device=str(resolved_device),
        dtype=dtype,
        seed=None,
    )

    # TransformerLens creates the parameters on the default device and initialises them there
    # before it moves them to cfg.device. Pinning the default to the CPU makes the weights
    # independent of the target device, and fork_rng restores the CPU generator afterwards.
    with warnings.catch_warnings():
        # The project pins transformer-lens < 4, where HookedTransformer is still supported.
        warnings.filterwarnings(
            "ignore", message="HookedTransformer is deprecated", category=DeprecationWarning
        )
        with torch.device("cpu"), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = HookedTransformer(cfg)
    return model


def fast_answer_logits(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch p"]:
    """Compute ``model(tokens)[:, -1]`` for a one-layer model, skipping unneeded work.

    The result equals the hooked forward's logits at the last position up to float rounding.
    The function reads the model's own parameters, so gradients flow to them and an optimiser
    over ``model.parameters()`` trains ``model``. The module docstring explains which work is
    skipped. Hook points are skipped as well, so the function rejects a model that has hooks
    attached rather than silently ignoring them.

    Args:
        model: a one-layer ``HookedTransformer`` with the settings of :func:`make_transformer`
            (standard positional embedding, ReLU MLP, no LayerNorm). ``d_model``, ``n_heads``,
            ``d_head``, ``d_mlp``, ``n_ctx`` and the vocabularies may take any size.
        tokens: token ids ``[batch, pos]`` of an integer dtype, with ``1 <= pos <= n_ctx`` and
            values in ``[0, d_vocab)``. Like the hooked forward, the function moves them to the
            model's device.

    Returns:
        Logits ``[batch, d_vocab_out]`` of the token that follows the last position.

    Raises:
        TypeError: if ``model`` is not a ``HookedTransformer``.
        NotImplementedError: if the model's config needs computation the fast path lacks, such
            as a second layer, LayerNorm, rotary embeddings or a gated MLP.
        ValueError: if hooks are attached to the model or ``tokens`` has an invalid shape or
            value.
    """
    _check_fast_path_model(model)
    _check_tokens(model, tokens)
    tokens = tokens.to(device=model.embed.W_E.device, dtype=torch.long)

    cfg = model.cfg
    attn = model.blocks[0].attn
    mlp = model.blocks[0].mlp
    n_heads, d_model, d_head = attn.W_Q.shape
    batch, n_pos = tokens.shape

    # The residual before attention is W_E[token] + W_pos[pos], so resid_table lists it for
    # every possible (pos, token) pair, at row pos * d_vocab + token.
    resid_table = (model.embed.W_E[None, :, :] + model.pos_embed.W_pos[:n_pos, None, :]).reshape(
        n_pos * cfg.d_vocab, d_model
    )
    rows = tokens + cfg.d_vocab * torch.arange(n_pos, device=tokens.device)

    # Keys and values of every table row, gathered per example. The heads are flattened
    # head-major, matching W_K[head, d_model, d_head].
    key_table = torch.addmm(attn.b_K.flatten(), resid_table, _heads_to_columns(attn.W_K))
    value_table = torch.addmm(attn.b_V.flatten(), resid_table, _heads_to_columns(attn.W_V))
    keys = F.embedding(rows, key_table).view(batch, n_pos, n_heads, d_head)
    values = F.embedding(rows, value_table).view(batch, n_pos, n_heads, d_head)

    # The causal mask leaves the last query's row whole, so its softmax runs over every position.
    resid_last = F.embedding(rows[:, -1], resid_table)
    query = torch.addmm(attn.b_Q.flatten(), resid_last, _heads_to_columns(attn.W_Q))
    query = query.view(batch, 1, n_heads, d_head)
    # scores and pattern have shape [batch, pos, head], and z has shape [batch, head * d_head].
    scores = (query * keys).sum(dim=-1) / attn.attn_scale
    pattern = scores.softmax(dim=1)
    z = (pattern.unsqueeze(-1) * values).sum(dim=1).reshape(batch, n_heads * d_head)
    resid_mid = resid_last + torch.addmm(attn.b_O, z, attn.W_O.reshape(n_heads * d_head, d_model))

    # MLP and unembedding at the last position only.
    hidden = torch.addmm(mlp.b_in, resid_mid, mlp.W_in).relu()
    resid_post = torch.addmm(resid_mid, hidden, mlp.W_out) + mlp.b_out
    return torch.addmm(model.unembed.b_U, resid_post, model.unembed.W_U)


def _heads_to_columns(weight: Float[Tensor, "head d_model d_head"]) -> Tensor:
    """Reshape a per-head projection to one ``[d_model, head * d_head]`` matrix, head-major."""
    n_heads, d_model, d_head = weight.shape
    return weight.permute(1, 0, 2).reshape(d_model, n_heads * d_head)


def _check_fast_path_model(model: object) -> None:
    """Raise unless :func:`fast_answer_logits` reproduces ``model``'s forward pass."""
    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"model is a {type(model).__name__}, but fast_answer_logits needs a "
            "transformer_lens.HookedTransformer; call the model directly instead."
        )

    cfg = model.cfg
    for field, supported in _FAST_PATH_CONFIG.items():
        value = getattr(cfg, field)
        if value != supported:
            raise NotImplementedError(
                f"fast_answer_logits does not implement cfg.{field}={value!r}: it covers "
                f"one-layer models with {field}={supported!r}. Use model(tokens)[:, -1] instead."
            )
    for field in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        cap = getattr(cfg, field)
        if cap is not None and cap > 0:
            raise NotImplementedError(
                f"fast_answer_logits does not implement soft-capping (cfg.{field}={cap!r}). "
                "Use model(tokens)[:, -1] instead."
            )

    hooked = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    ]
    if hooked:
        raise ValueError(
            f"model has hooks attached at {', '.join(hooked)}, but fast_answer_logits runs no "
            "hooks. Remove them with model.reset_hooks(), or call model(tokens) instead."
        )


def _check_tokens(model: HookedTransformer, tokens: Tensor) -> None:
    """Raise if ``tokens`` is not a ``[batch, pos]`` integer tensor the model can read."""
    cfg = model.cfg
    integer = not (tokens.dtype.is_floating_point or tokens.dtype.is_complex)
    if tokens.ndim != 2 or not integer or tokens.dtype == torch.bool:
        raise ValueError(
            f"tokens has shape {tuple(tokens.shape)} and dtype {tokens.dtype}; expected an "
            "integer tensor of shape [batch, pos]."
        )
    if not 1 <= tokens.shape[1] <= cfg.n_ctx:
        raise ValueError(
            f"tokens has {tokens.shape[1]} positions; the model reads 1 to n_ctx={cfg.n_ctx}."
        )
    if tokens.numel() > 0:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= cfg.d_vocab:
            raise ValueError(
                f"tokens contains ids from {low} to {high}; expected ids in "
                f"[0, d_vocab={cfg.d_vocab})."
            )


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name}={value!r} has type {type(value).__name__}; expected an int >= {minimum}."
        )
    if value < minimum:
        raise ValueError(f"{name}={value} is invalid: expected an int >= {minimum}.")


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.get_default_device()
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device={device!r} is invalid: expected a torch.device or a string such as "
            "'cpu' or 'cuda:0'."
        ) from error
