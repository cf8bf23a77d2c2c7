"""Hooked MLPs for modular arithmetic, with and without a learned embedding.

The main model of "Mechanistic Insights into Grokking from the Embedding Layer" (arXiv 2505.15624)
embeds each of the ``n_ctx`` tokens with ``E`` (``embed.W_E``, ``d_vocab × d_embed``), concatenates
the embeddings, and applies ``Linear → ReLU → Linear``. The first linear layer is ``W``
(``mlp.W_in``); the analysis treats ``E`` and ``W`` as a bilinear pair because the first layer sees
them only through the product ``E W``.

Two inputs without a learned embedding exist for the paper's control experiment: ``numeric`` feeds
the token ids as an ``n_ctx``-dimensional real vector, and ``onehot`` feeds the concatenated one-hot
vectors. With one-hot input the first layer is itself an embedding, a caveat the paper states.

Weights follow TransformerLens conventions (``x @ W``, ``W_in`` has shape ``[d_in, d_mlp]``), and
initialisation reproduces PyTorch's defaults: ``N(0, 1)`` for the embedding and
``U(−1/√fan_in, 1/√fan_in)`` for linear weights and biases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

InputMode = Literal["embed", "numeric", "onehot"]
INPUT_MODES = ("embed", "numeric", "onehot")


@dataclass(frozen=True)
class MLPConfig:
    """Shape of a :class:`HookedMLP`."""

    d_vocab: int
    n_ctx: int
    d_out: int
    input_mode: str = "embed"
    d_embed: int = 128
    d_mlp: int = 512

    def __post_init__(self) -> None:
        if self.input_mode not in INPUT_MODES:
            raise ValueError(
                f"model.input_mode={self.input_mode!r} is unknown: choose one of "
                f"{', '.join(INPUT_MODES)}."
            )
        for name in ("d_vocab", "n_ctx", "d_out", "d_embed", "d_mlp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name}={value!r} is invalid: it must be a positive integer.")

    @property
    def d_in(self) -> int:
        """Width of the first linear layer's input."""
        if self.input_mode == "embed":
            return self.n_ctx * self.d_embed
        if self.input_mode == "onehot":
            return self.n_ctx * self.d_vocab
        return self.n_ctx


class Embed(nn.Module):
    """Token embedding ``W_E`` of shape ``[d_vocab, d_embed]``."""

    def __init__(self, d_vocab: int, d_embed: int) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(d_vocab, d_embed))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_embed"]:
        # Indexing would give the same values, but on more than one CPU thread its backward adds
        # the gradients of repeated tokens in an order that varies from call to call.
        return F.embedding(tokens, self.W_E)


class MLPBlock(nn.Module):
    """The hidden layer: ``post = relu(x @ W_in + b_in)``."""

    def __init__(self, d_in: int, d_mlp: int) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(d_in, d_mlp))
        self.b_in = nn.Parameter(torch.empty(d_mlp))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_mlp"]:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        return self.hook_post(F.relu(pre))


class Unembed(nn.Module):
    """The output layer: ``logits = post @ W_U + b_U``."""

    def __init__(self, d_mlp: int, d_out: int) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(d_mlp, d_out))
        self.b_U = nn.Parameter(torch.empty(d_out))

    def forward(self, x: Float[Tensor, "batch d_mlp"]) -> Float[Tensor, "batch p"]:
        return x @ self.W_U + self.b_U


class HookedMLP(HookedRootModule):
    """One-hidden-layer MLP over token sequences, with TransformerLens hook points.

    Hook points: ``hook_embed`` (``[batch, pos, d_embed]``, embedding mode only), ``hook_input``
    (``[batch, d_in]``, the first layer's input in every mode), ``mlp.hook_pre`` and
    ``mlp.hook_post`` (``[batch, d_mlp]``) and ``hook_logits`` (``[batch, p]``).

    Example:
        >>> model = HookedMLP(MLPConfig(d_vocab=9, n_ctx=4, d_out=7, d_embed=8, d_mlp=16))
        >>> tokens = torch.tensor([[1, 7, 2, 8]])
        >>> logits, cache = model.run_with_cache(tokens)
        >>> logits.shape, cache["mlp.hook_post"].shape
        (torch.Size([1, 7]), torch.Size([1, 16]))
    """

    def __init__(self, cfg: MLPConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg.d_vocab, cfg.d_embed) if cfg.input_mode == "embed" else None
        self.hook_embed = HookPoint()
        self.hook_input = HookPoint()
        self.mlp = MLPBlock(cfg.d_in, cfg.d_mlp)
        self.unembed = Unembed(cfg.d_mlp, cfg.d_out)
        self.hook_logits = HookPoint()
        self.init_weights(seed)
        self.setup()

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Initialise like ``nn.Embedding`` and ``nn.Linear``, drawing from a generator seeded
        with ``seed`` so that the caller's global random state is left untouched."""
        generator = torch.Generator().manual_seed(seed)
        if self.embed is not None:
            self.embed.W_E.normal_(generator=generator)
        for weight, bias, fan_in in (
            (self.mlp.W_in, self.mlp.b_in, self.cfg.d_in),
            (self.unembed.W_U, self.unembed.b_U, self.cfg.d_mlp),
        ):
            bound = 1.0 / math.sqrt(fan_in)
            weight.uniform_(-bound, bound, generator=generator)
            bias.uniform_(-bound, bound, generator=generator)

    def first_layer_input(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch d_in"]:
        """Build the vector that ``mlp.W_in`` multiplies, according to ``cfg.input_mode``."""
        if tokens.ndim != 2 or tokens.shape[1] != self.cfg.n_ctx:
            raise ValueError(
                f"tokens has shape {tuple(tokens.shape)}, expected [batch, {self.cfg.n_ctx}]."
            )
        if self.embed is not None:
            embedded = self.hook_embed(self.embed(tokens))
            return embedded.flatten(start_dim=1)
        if self.cfg.input_mode == "onehot":
            return F.one_hot(tokens, self.cfg.d_vocab).to(self.mlp.W_in.dtype).flatten(start_dim=1)
        return tokens.to(self.mlp.W_in.dtype)

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        labels: Int[Tensor, " batch"] | None = None,
        return_type: str = "logits",
    ) -> Float[Tensor, "batch p"] | Float[Tensor, ""]:
        """Return the logits, or with ``return_type="loss"`` the mean cross-entropy on ``labels``.

        The loss form lets ``run_with_cache(tokens, labels=..., return_type="loss",
        incl_bwd=True)`` cache the gradient of the loss at every hook point.
        """
        x = self.hook_input(self.first_layer_input(tokens))
        post = self.mlp(x)
        logits = self.hook_logits(self.unembed(post))
        if return_type == "logits":
            return logits
        if return_type != "loss":
            raise ValueError(f"return_type={return_type!r} is invalid: use 'logits' or 'loss'.")
        if labels is None:
            raise ValueError("return_type='loss' needs labels: pass labels=<residues, shape [batch]>.")
        return F.cross_entropy(logits, labels)

    @property
    def W_E(self) -> Float[Tensor, "vocab d_embed"]:
        if self.embed is None:
            raise ValueError(
                f"this HookedMLP has input_mode={self.cfg.input_mode!r} and so no W_E; "
                "build it with input_mode='embed' for a learned embedding."
            )
        return self.embed.W_E

    def W_in_block(self, pos: int) -> Float[Tensor, "d_embed d_mlp"]:
        """Rows of ``W_in`` that multiply the embedding of the token at position ``pos``."""
        if self.embed is None:
            raise ValueError("W_in_block needs a HookedMLP with input_mode='embed'.")
        if not 0 <= pos < self.cfg.n_ctx:
            raise ValueError(f"pos={pos} is out of range [0, {self.cfg.n_ctx}).")
        d = self.cfg.d_embed
        return self.mlp.W_in[pos * d : (pos + 1) * d]
