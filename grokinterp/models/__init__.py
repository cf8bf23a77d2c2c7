"""Models: the hooked MLPs and the one-layer ``HookedTransformer``, built from one config.

Every model maps tokens ``[batch, pos]`` to logits over the ``p`` residues. ``HookedMLP`` returns
``[batch, p]``; a ``HookedTransformer`` returns ``[batch, pos, p]`` and the answer is read at the
last position. :func:`answer_logits` hides that difference from the rest of the package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from grokinterp.models.mlp import INPUT_MODES, HookedMLP, MLPConfig
from grokinterp.tasks import TaskConfig

MODEL_KINDS = ("mlp", "transformer")

__all__ = [
    "HookedMLP",
    "MLPConfig",
    "ModelConfig",
    "answer_logits",
    "build_model",
    "embedding_names",
    "first_layer_name",
]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and initialisation seed; the vocabulary and output size come from the task."""

    kind: str = "mlp"
    input_mode: str = "embed"
    d_embed: int = 128
    d_mlp: int = 512
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(
                f"model.kind={self.kind!r} is unknown: choose one of {', '.join(MODEL_KINDS)}."
            )
        if self.input_mode not in INPUT_MODES:
            raise ValueError(
                f"model.input_mode={self.input_mode!r} is unknown: choose one of "
                f"{', '.join(INPUT_MODES)}."
            )
        if self.kind == "transformer" and self.input_mode != "embed":
            raise ValueError(
                f"model.input_mode={self.input_mode!r} applies to MLPs only: the transformer "
                "always has a learned embedding; set model.input_mode=embed."
            )
        for name in ("d_embed", "d_mlp", "d_model", "n_heads", "d_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}={value!r} is invalid: it must be a positive integer.")


def build_model(model: ModelConfig, task: TaskConfig) -> nn.Module:
    """Build the model that ``model`` describes for the vocabulary and modulus of ``task``."""
    if model.kind == "transformer":
        if task.layout != "a_b_eq":
            raise ValueError(
                f"task.layout={task.layout!r} does not fit the transformer, which reads [a, b, =]: "
                "set task.layout=a_b_eq."
            )
        from grokinterp.models.transformer import make_transformer

        return make_transformer(
            task.p,
            d_model=model.d_model,
            n_heads=model.n_heads,
            d_head=model.d_head,
            d_mlp=model.d_mlp,
            seed=model.init_seed,
        )

    cfg = MLPConfig(
        d_vocab=task.d_vocab,
        n_ctx=task.n_ctx,
        d_out=task.p,
        input_mode=model.input_mode,
        d_embed=model.d_embed,
        d_mlp=model.d_mlp,
    )
    return HookedMLP(cfg, seed=model.init_seed)


def answer_logits(model: nn.Module, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch p"]:
    """Run ``model`` and return the logits of the answer token."""
    out = model(tokens)
    return out[:, -1] if out.ndim == 3 else out


def embedding_names(model: nn.Module) -> list[str]:
    """Names of the parameters that form the embedding ``E`` (empty without one)."""
    names = dict(model.named_parameters())
    return ["embed.W_E"] if "embed.W_E" in names else []


def first_layer_name(model: nn.Module) -> str:
    """Name of ``W``, the first weight that reads the embedding.

    For the MLP that is ``mlp.W_in``. For the transformer it is the query/key/value map of the
    attention layer, but its three blocks are separate tensors, so the analysis takes ``W_V`` as
    ``W``: it is the one that carries the embedding's content into the residual stream, while
    ``W_Q`` and ``W_K`` only decide where to attend.
    """
    names = dict(model.named_parameters())
    for candidate in ("mlp.W_in", "blocks.0.attn.W_V"):
        if candidate in names:
            return candidate
    raise ValueError(f"{type(model).__name__} has neither mlp.W_in nor blocks.0.attn.W_V.")


@torch.no_grad()
def first_layer_matrix(model: nn.Module) -> Float[Tensor, "d_embed d_out"]:
    """``W`` as a 2-D matrix whose rows multiply one token's embedding.

    For the MLP this is ``W_in`` reshaped to ``[d_embed, n_ctx · d_mlp]`` so that the product
    ``E @ W`` gives every position's contribution side by side; an MLP without an embedding
    returns ``W_in`` unchanged. For the transformer the heads of
    ``W_V`` (``[n_heads, d_model, d_head]``) are concatenated to ``[d_model, n_heads · d_head]``.
    """
    name = first_layer_name(model)
    weight = dict(model.named_parameters())[name]
    if name == "mlp.W_in":
        if model.embed is None:
            return weight
        d_embed = model.cfg.d_embed
        blocks = weight.reshape(-1, d_embed, weight.shape[1])
        return torch.cat(list(blocks), dim=1)
    return weight.permute(1, 0, 2).reshape(weight.shape[1], -1)
