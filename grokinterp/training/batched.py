"""Train several seeds of one embedding-MLP config as one batched model.

A small MLP leaves most of a CPU idle on per-step overhead, so the runs of a seed sweep train
faster side by side. :func:`train_batched` takes configs that differ only in their seeds
(``task.data_seed``, ``model.init_seed``, ``train.batch_seed``), stacks the members' parameters
along a leading ``member`` axis, and takes every step of every member in one forward and backward
pass. Each member follows :func:`grokinterp.training.loop.train` for its own config: the same
initial weights (each member is built with ``build_model`` and then stacked), the same split,
its own batch sampler and generator, the same Adam or AdamW parameter groups, evaluation
schedule, grok tracking, early stopping and checkpoints. Every member gets a run directory in
the format that ``train`` writes, which ``load_checkpoint`` loads and ``train(resume=True)``
continues.

Why stacking is exact. Adam and AdamW update every parameter element from that element's own
gradient and moments, so one optimiser over the stacked tensors performs each member's update,
with the groups, learning rates and weight decay that ``build_optimizer`` gives a single model.
All members start together, so their step counts agree; a member that stops early is removed
from the stack (its parameters, moments and filter state are cut out), which freezes it at its
stop step. Members have disjoint parameters, so the gradient of the sum of the member losses is
each member's own gradient.

Exact or fast. With the default ``first_layer="matmul"`` the stacked model performs the operations
of :class:`HookedMLP` batched over members, and a batched run reproduced its sequential twins bit
for bit in our checks (torch 2.13, x86 CPU, one and two threads), grok steps and early stops
included, so a cached run does not depend on how it was trained. It saves the per-run overhead but
none of the arithmetic, so its gain is small where the matrix products dominate (see
``docs/benchmarks.md``). ``first_layer="table"`` computes the first layer from a lookup table and
uses fused Adam, which needs far fewer multiply-adds but adds the same terms in another order (see
:class:`StackedMLP`). Its first steps match ``train`` to float32 rounding, but Adam at lr 0.01
amplifies the difference. For the paper's MLP the largest weight difference was 4e-4 after 10 steps
and 0.14 after 40, and the relative L2 difference of all weights was 0.94 after 300. The grok steps
of ``tiny`` runs moved by up to 200 steps. Table runs are valid runs of their configs, but not
replays of ``train``.

Supported: every ``model.input_mode``, Adam and AdamW, a fixed ``optim.embed_lr_ratio``, the
Grokfast EMA filter, token statistics and recorded embedding gradients. The transformer, the
adaptive ratio, the Grokfast moving average and the frequency-aware and balanced samplers raise
``NotImplementedError`` (see :func:`unbatchable_options`); train those runs with ``train``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from grokinterp.checkpoint import MANIFEST, write_json
from grokinterp.devices import resolve_device
from grokinterp.models import HookedMLP, build_model
from grokinterp.training.components import TrainingComponents, build_components, build_optimizer
from grokinterp.training.config import RunConfig, config_to_dict
from grokinterp.training.evaluate import Evaluation, GrokTracker
from grokinterp.training.loop import (
    RunResult,
    TaskTensors,
    _initial_manifest,
    _log_evaluation,
    _save,
    _save_recorded_gradients,
    prepare_data,
)
from grokinterp.training.token_stats import TokenStats

logger = logging.getLogger(__name__)

SEED_FIELDS = ("task.data_seed", "model.init_seed", "train.batch_seed")
"""The config fields in which the members of one batched run may differ."""


# ---------------------------------------------------------------------------------------------
# Which configs can be batched


def unbatchable_options(cfg: RunConfig) -> list[str]:
    """List the options of ``cfg`` that :func:`train_batched` does not implement.

    Returns:
        One ``"section.field=value"`` entry per unsupported option; empty when ``cfg`` can be
        batched.
    """
    blockers = []
    if cfg.model.kind != "mlp":
        blockers.append(f"model.kind={cfg.model.kind!r}")
    if cfg.optim.lr_ratio != "fixed":
        blockers.append(f"optim.lr_ratio={cfg.optim.lr_ratio!r}")
    if cfg.optim.grokfast not in ("none", "ema"):
        blockers.append(f"optim.grokfast={cfg.optim.grokfast!r}")
    if cfg.train.sampler != "random":
        blockers.append(f"train.sampler={cfg.train.sampler!r}")
    return blockers


def check_batchable(cfg: RunConfig) -> None:
    """Raise ``NotImplementedError`` naming every option of ``cfg`` that batching lacks."""
    blockers = unbatchable_options(cfg)
    if blockers:
        raise NotImplementedError(
            f"batched training does not implement {', '.join(blockers)}: it covers the embedding "
            "MLP with a fixed embedding lr ratio, the Grokfast EMA filter and the random "
            "sampler. Train this config with grokinterp.training.loop.train."
        )


def seedless_key(cfg: RunConfig) -> str:
    """Return ``cfg`` as canonical JSON without its seeds and name; equal keys can train as one batch.

    The name is a label that does not change training, and figure runs carry their seed in it
    (``mlp-add-b512-lr0.01-c1-wd0.001-seed0``), so keeping it would put every seed in a batch of
    its own.
    """
    data = config_to_dict(cfg)
    del data["name"]
    for dotted in SEED_FIELDS:
        section, name = dotted.split(".")
        del data[section][name]
    return json.dumps(data, sort_keys=True)


def _check_members(configs: Sequence[RunConfig], run_dirs: Sequence[Path]) -> None:
    if not configs:
        raise ValueError("train_batched got no configs: pass at least one RunConfig.")
    if len(configs) != len(run_dirs):
        raise ValueError(
            f"train_batched got {len(configs)} configs but {len(run_dirs)} run directories: "
            "pass one directory per config."
        )
    resolved = [path.resolve() for path in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise ValueError(
            f"train_batched got the run directories {[str(d) for d in run_dirs]}, which repeat "
            "a directory: give every member its own."
        )
    check_batchable(configs[0])

    reference = _dotted_fields(json.loads(seedless_key(configs[0])))
    for index, cfg in enumerate(configs[1:], start=1):
        other = _dotted_fields(json.loads(seedless_key(cfg)))
        for key in sorted(set(reference) | set(other)):
            if reference.get(key) != other.get(key):
                raise ValueError(
                    f"configs[{index}] differs from configs[0] in {key} ({other.get(key)!r} "
                    f"against {reference.get(key)!r}): members of a batched run may differ only "
                    f"in their names and in {', '.join(SEED_FIELDS)}. Train the other configs in "
                    "a batch of their own."
                )

    for run_dir in run_dirs:
        if (run_dir / MANIFEST).exists():
            raise FileExistsError(
                f"{run_dir} already contains a run: resume it with train(resume=True), or "
                "choose another directory."
            )


def _dotted_fields(data: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


# ---------------------------------------------------------------------------------------------
# The stacked model


def _stacked_container(tensors: dict[str, Tensor]) -> nn.Module:
    """Return a module whose parameters are ``tensors``, registered under the same dotted names.

    Matching names let ``build_optimizer`` and the Grokfast filter treat the stack like one
    member model: the same parameter groups, the same per-name filter state.
    """
    root = nn.Module()
    for name, value in tensors.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(value))
    return root


FIRST_LAYER_MODES = ("matmul", "table")


class StackedMLP(nn.Module):
    """``n`` :class:`HookedMLP` of one shape as one module with parameters ``[member, ...]``.

    The parameters keep the member names (``embed.W_E``, ``mlp.W_in``, ``mlp.b_in``,
    ``unembed.W_U``, ``unembed.b_U``) with a leading member axis, and the forward pass computes
    every member's logits from its own tokens with batched matrix products and no hook points.

    The first layer has two forms, chosen by ``first_layer``:

    * ``"matmul"``: the operations of ``HookedMLP.forward`` (gather the embeddings or one-hot
      vectors, concatenate, multiply by ``W_in``), batched over members with ``torch.bmm``.
      Each member's result equals its own model's to float32 rounding; where the BLAS
      computes each matrix of a ``bmm`` as it computes a single ``mm``, as torch 2.13 on x86
      CPUs did in our checks, they are bitwise equal.
    * ``"table"``: a lookup table. With an embedding, token ``t`` at position ``pos`` adds
      ``E[t] @ W_in[pos·d_embed : (pos+1)·d_embed]`` to the pre-activation, so the forward pass
      multiplies each position's block of ``W_in`` by the embedding rows that can occur there
      (``position_tokens``) and sums one table row per position with ``embedding_bag``. For the
      paper's MLP (``[a, op, b, =]``, p = 97, d_embed 128, d_mlp 512) the table has 196 rows
      (97 per operand position, one each for ``op`` and ``=``): 196 · 128 · 512 ≈ 12.8 million
      multiply-adds per member and step, against 512 · 512 · 512 ≈ 134 million for a batch of
      512 through ``W_in``. With one-hot input the rows of ``W_in`` are the table. The sums run in another order than the product, so results
      differ from ``HookedMLP`` by float32 rounding.

    With numeric input the first layer is a product of width ``n_ctx`` in both modes.

    Args:
        members: the models to stack, all with the same ``MLPConfig``; their weights are copied.
        position_tokens: for the table, the token ids that can occur at each position; None
            allows every vocabulary token at every position.
        first_layer: ``"matmul"`` or ``"table"``, as above.
    """

    def __init__(
        self,
        members: Sequence[HookedMLP],
        position_tokens: Sequence[Tensor] | None = None,
        first_layer: str = "matmul",
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("StackedMLP got no members: pass at least one HookedMLP.")
        if first_layer not in FIRST_LAYER_MODES:
            raise ValueError(
                f"first_layer={first_layer!r} is unknown: choose one of {', '.join(FIRST_LAYER_MODES)}."
            )
        cfg = members[0].cfg
        for index, member in enumerate(members):
            if not isinstance(member, HookedMLP) or member.cfg != cfg:
                raise ValueError(
                    f"members[{index}] is not a HookedMLP with the config {cfg} of members[0]: "
                    "stack models of one shape."
                )
        self.cfg = cfg
        self.first_layer = first_layer
        self.n_members = len(members)
        names = [name for name, _ in members[0].named_parameters()]
        stacked = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in members]).clone()
            for name in names
        }
        self.params = _stacked_container(stacked)

        if position_tokens is None:
            position_tokens = [torch.arange(cfg.d_vocab)] * cfg.n_ctx
        if len(position_tokens) != cfg.n_ctx:
            raise ValueError(
                f"position_tokens has {len(position_tokens)} entries: expected one token set per "
                f"position, n_ctx={cfg.n_ctx}."
            )
        device = stacked[names[0]].device
        self.position_tokens = [
            torch.as_tensor(tokens, dtype=torch.long).unique().to(device)
            for tokens in position_tokens
        ]
        # row_of[pos, token] is the table row of that token at that position, -1 if it cannot occur.
        row_of = torch.full((cfg.n_ctx, cfg.d_vocab), -1, dtype=torch.long, device=device)
        offset = 0
        for pos, tokens in enumerate(self.position_tokens):
            if cfg.input_mode == "onehot":
                row_of[pos, tokens] = pos * cfg.d_vocab + tokens
            else:
                row_of[pos, tokens] = offset + torch.arange(len(tokens), device=device)
                offset += len(tokens)
        self.register_buffer("row_of", row_of, persistent=False)
        self.table_rows = cfg.n_ctx * cfg.d_vocab if cfg.input_mode == "onehot" else offset

    def forward(
        self, tokens: Int[Tensor, "member batch pos"]
    ) -> Float[Tensor, "member batch p"]:
        """Return every member's logits for its own batch of token sequences."""
        n_members, batch, n_ctx = tokens.shape
        if n_members != self.n_members or n_ctx != self.cfg.n_ctx:
            raise ValueError(
                f"tokens has shape {tuple(tokens.shape)}: expected [{self.n_members}, batch, "
                f"{self.cfg.n_ctx}], one batch per member."
            )
        mlp, unembed = self.params.mlp, self.params.unembed

        if self.cfg.input_mode == "numeric":
            pre = torch.bmm(tokens.to(mlp.W_in.dtype), mlp.W_in)
        elif self.first_layer == "matmul":
            pre = torch.bmm(self._first_layer_input(tokens), mlp.W_in)
        else:
            pre = self._first_layer_from_table(tokens)
        post = F.relu(pre + mlp.b_in[:, None])
        return torch.bmm(post, unembed.W_U) + unembed.b_U[:, None]

    def _first_layer_input(
        self, tokens: Int[Tensor, "member batch pos"]
    ) -> Float[Tensor, "member batch d_in"]:
        n_members, batch, _ = tokens.shape
        if self.cfg.input_mode == "onehot":
            one_hot = F.one_hot(tokens, self.cfg.d_vocab).to(self.params.mlp.W_in.dtype)
            return one_hot.reshape(n_members, batch, -1)
        W_E = self.params.embed.W_E
        member_offset = torch.arange(n_members, device=tokens.device) * self.cfg.d_vocab
        rows = tokens + member_offset[:, None, None]
        return F.embedding(rows, W_E.reshape(-1, W_E.shape[-1])).reshape(n_members, batch, -1)

    def _first_layer_from_table(
        self, tokens: Int[Tensor, "member batch pos"]
    ) -> Float[Tensor, "member batch d_mlp"]:
        n_members, batch, n_ctx = tokens.shape
        rows = self.row_of[torch.arange(n_ctx, device=tokens.device), tokens]
        if bool((rows < 0).any()):
            raise ValueError(
                "tokens contains a token at a position outside position_tokens: build the "
                "StackedMLP with the token sets of the task's pairs."
            )
        member_offset = torch.arange(n_members, device=tokens.device) * self.table_rows
        rows = (rows + member_offset[:, None, None]).reshape(n_members * batch, n_ctx)
        summed = F.embedding_bag(rows, self._first_layer_table(), mode="sum")
        return summed.view(n_members, batch, -1)

    def _first_layer_table(self) -> Float[Tensor, "rows d_mlp"]:
        W_in = self.params.mlp.W_in
        if self.cfg.input_mode == "onehot":
            return W_in.reshape(-1, W_in.shape[-1])
        d_embed = self.cfg.d_embed
        W_E = self.params.embed.W_E
        blocks = [
            torch.bmm(W_E[:, tokens], W_in[:, pos * d_embed : (pos + 1) * d_embed])
            for pos, tokens in enumerate(self.position_tokens)
        ]
        return torch.cat(blocks, dim=1).reshape(-1, W_in.shape[-1])

    @torch.no_grad()
    def copy_member_to(self, index: int, model: HookedMLP) -> None:
        """Copy member ``index``'s weights into ``model``, a HookedMLP of the same config."""
        stacked = dict(self.params.named_parameters())
        for name, param in model.named_parameters():
            param.copy_(stacked[name][index])

    @torch.no_grad()
    def select(self, keep: Sequence[int]) -> None:
        """Keep only the members at the indices ``keep``, in that order."""
        index = torch.as_tensor(list(keep), dtype=torch.long)
        stacked = {
            name: param.detach()[index.to(param.device)].clone()
            for name, param in self.params.named_parameters()
        }
        self.params = _stacked_container(stacked)
        self.n_members = len(index)


# ---------------------------------------------------------------------------------------------
# One member's run: the objects that train() would hold, used to write its run directory


@dataclass(eq=False)
class _Member:
    """A member's config, data and run-directory writers.

    ``model``, ``optimizer`` and the Grokfast filter and token statistics in ``components`` are
    copies that receive the member's slice of the stack before anything is written, so the
    checkpoint code of ``train`` writes them unchanged. The sampler and the gradient recorder
    are used directly.
    """

    cfg: RunConfig
    run_dir: Path
    data: TaskTensors
    model: HookedMLP
    optimizer: torch.optim.Optimizer
    components: TrainingComponents
    tracker: GrokTracker
    manifest: dict[str, Any]
    final: dict[str, Any] = field(default_factory=dict)


def _build_member(cfg: RunConfig, run_dir: Path, device: torch.device) -> _Member:
    data = prepare_data(cfg, device)
    model = build_model(cfg.model, cfg.task).to(device)
    return _Member(
        cfg=cfg,
        run_dir=run_dir,
        data=data,
        model=model,
        optimizer=build_optimizer(model, cfg.optim),
        components=build_components(cfg, model, data.pairs, data.split, device),
        tracker=GrokTracker(cfg.train.grok_threshold),
        manifest=_initial_manifest(cfg, data, run_dir, resume=False),
    )


# ---------------------------------------------------------------------------------------------
# The stack of active members: model, optimiser, filter, statistics and data


class _Stack:
    """The members still training, with their parameters and training state stacked."""

    def __init__(self, members: list[_Member], device: torch.device, first_layer: str) -> None:
        cfg = members[0].cfg
        self.members = members
        self.optim_cfg = cfg.optim
        self.d_vocab = cfg.task.d_vocab
        pairs = members[0].data.pairs
        position_tokens = [pairs.tokens[:, pos] for pos in range(cfg.task.n_ctx)]
        self.model = StackedMLP([m.model for m in members], position_tokens, first_layer)
        self.optimizer = self._build_optimizer()

        first = members[0].components
        self.grad_filter = copy.deepcopy(first.grad_filter)
        self.token_stats = None
        if first.token_stats is not None:
            # One TokenStats over the members' vocabularies laid end to end: member j's token t
            # is row j·d_vocab + t, so every per-token formula applies unchanged.
            self.token_stats = TokenStats(len(members) * self.d_vocab, ema=first.token_stats.ema)

        self.train_tokens = torch.stack([m.data.train_tokens for m in members])
        self.train_labels = torch.stack([m.data.train_labels for m in members])
        self.test_tokens = torch.stack([m.data.test_tokens for m in members])
        self.test_labels = torch.stack([m.data.test_labels for m in members])

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """Build the member optimiser over the stacked parameters, fused in table mode.

        ``build_optimizer`` gives the groups, learning rates and weight decay of a member. The
        matmul mode keeps its single-tensor update so that results stay those of ``train``. The
        table mode, whose results already differ by rounding, uses the fused kernel of the same
        update, a single pass over the parameters that equals the unfused update to float32
        rounding. For eight stacked paper-size MLPs on one CPU thread (torch 2.13) it took 2 ms
        per step against 13 ms.
        """
        optimizer = build_optimizer(self.model.params, self.optim_cfg)
        if self.model.first_layer == "matmul":
            return optimizer
        groups = [{**group, "fused": True} for group in optimizer.param_groups]
        return type(optimizer)(groups, fused=True)

    def train_step(self, step: int) -> None:
        """Take one optimiser step of every member on a batch from its own sampler."""
        indices = torch.stack([m.components.sampler.next_batch() for m in self.members])
        indices = indices.to(self.train_tokens.device)
        tokens = torch.gather(
            self.train_tokens, 1, indices[:, :, None].expand(-1, -1, self.train_tokens.shape[2])
        )
        labels = torch.gather(self.train_labels, 1, indices)

        n_members, batch = labels.shape
        logits = self.model(tokens)
        losses = F.cross_entropy(logits.reshape(n_members * batch, -1), labels.reshape(-1), reduction="none")
        loss = losses.view(n_members, batch).mean(dim=1).sum()

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._after_backward(step, tokens)
        self.optimizer.step()

    def _after_backward(self, step: int, tokens: Int[Tensor, "member batch pos"]) -> None:
        # The order of TrainingComponents.after_backward: statistics and the recorder see the raw
        # gradient, then the filter rewrites it.
        embed = getattr(self.model.params, "embed", None)
        if embed is not None:
            W_E, grad = embed.W_E, embed.W_E.grad
            if self.token_stats is not None:
                offsets = torch.arange(len(self.members), device=tokens.device) * self.d_vocab
                self.token_stats.observe(
                    (tokens + offsets[:, None, None]).flatten(0, 1),
                    grad.reshape(-1, grad.shape[-1]),
                    W_E.reshape(-1, W_E.shape[-1]),
                )
            for index, member in enumerate(self.members):
                if member.components.grad_recorder is not None:
                    member.components.grad_recorder.record(step, grad[index])
        if self.grad_filter is not None:
            self.grad_filter.apply(self.model.params.named_parameters())

    @torch.no_grad()
    def evaluate(self, chunk_size: int) -> list[tuple[Evaluation, Evaluation]]:
        """Return every member's (train, test) evaluation, computed as ``evaluate`` does."""
        train = self._evaluate(self.train_tokens, self.train_labels, chunk_size)
        test = self._evaluate(self.test_tokens, self.test_labels, chunk_size)
        return list(zip(train, test, strict=True))

    def _evaluate(
        self, tokens: Int[Tensor, "member pair pos"], labels: Int[Tensor, "member pair"], chunk_size: int
    ) -> list[Evaluation]:
        # The same chunks and float64 sums as evaluate(), so equal logits give equal metrics.
        n_members, n_pairs = labels.shape
        total_loss = [0.0] * n_members
        correct = torch.zeros(n_members, dtype=torch.long, device=labels.device)
        for start in range(0, n_pairs, chunk_size):
            logits = self.model(tokens[:, start : start + chunk_size])
            target = labels[:, start : start + chunk_size]
            for index in range(n_members):
                total_loss[index] += float(
                    F.cross_entropy(logits[index].double(), target[index], reduction="sum")
                )
            correct += (logits.argmax(dim=-1) == target).sum(dim=1)
        return [
            Evaluation(loss=loss / n_pairs, accuracy=count / n_pairs)
            for loss, count in zip(total_loss, correct.tolist(), strict=True)
        ]

    def copy_member_out(self, index: int) -> None:
        """Give member ``index``'s copies its weights, optimiser state, filter and statistics."""
        member = self.members[index]
        self.model.copy_member_to(index, member.model)

        stacked = dict(self.model.params.named_parameters())
        for name, param in member.model.named_parameters():
            state = self.optimizer.state.get(stacked[name])
            if state:
                member.optimizer.state[param] = _slice_state(state, stacked[name].shape, index)

        if self.grad_filter is not None:
            member.components.grad_filter.load_state_dict(
                _slice_state(self.grad_filter.state_dict(), None, index)
            )
        if self.token_stats is not None:
            member.components.token_stats.load_state_dict(self._member_token_state(index))

    def _member_token_state(self, index: int) -> dict[str, Any]:
        state = self.token_stats.state_dict()
        rows = slice(index * self.d_vocab, (index + 1) * self.d_vocab)
        return {
            key: value[rows].clone() if isinstance(value, Tensor) else value
            for key, value in {**state, "d_vocab": self.d_vocab}.items()
        }

    def keep(self, keep: Sequence[int]) -> None:
        """Drop every member not listed in ``keep``; the others keep their state exactly."""
        keep = list(keep)
        index = torch.as_tensor(keep, dtype=torch.long)
        old_params = dict(self.model.params.named_parameters())
        old_state = {name: self.optimizer.state.get(param) for name, param in old_params.items()}

        self.model.select(keep)
        self.optimizer = self._build_optimizer()
        for name, param in self.model.params.named_parameters():
            if old_state[name]:
                self.optimizer.state[param] = _slice_state(
                    old_state[name], old_params[name].shape, index
                )

        if self.grad_filter is not None:
            self.grad_filter.load_state_dict(_slice_state(self.grad_filter.state_dict(), None, index))
        if self.token_stats is not None:
            state = self.token_stats.state_dict()
            rows = (index[:, None] * self.d_vocab + torch.arange(self.d_vocab)).flatten()
            self.token_stats = TokenStats(len(keep) * self.d_vocab, ema=self.token_stats.ema)
            self.token_stats.load_state_dict(
                {
                    **{k: v[rows.to(v.device)].clone() for k, v in state.items() if isinstance(v, Tensor)},
                    **{k: v for k, v in state.items() if not isinstance(v, Tensor)},
                    "d_vocab": len(keep) * self.d_vocab,
                }
            )

        self.members = [self.members[i] for i in keep]
        for name in ("train_tokens", "train_labels", "test_tokens", "test_labels"):
            tensor = getattr(self, name)
            setattr(self, name, tensor[index.to(tensor.device)])


def _slice_state(
    state: dict[str, Any], stacked_shape: torch.Size | None, index: int | Tensor
) -> dict[str, Any]:
    """Cut the members at ``index`` out of a state dict of stacked tensors.

    A tensor is stacked when its shape equals ``stacked_shape``, or, with ``stacked_shape`` None,
    when it has a member axis at all; other entries (such as Adam's scalar step count, which all
    members share) are copied.
    """
    sliced = {}
    for key, value in state.items():
        stacked = isinstance(value, Tensor) and (
            value.shape == stacked_shape if stacked_shape is not None else value.ndim > 0
        )
        if stacked:
            sliced[key] = value[index.to(value.device) if isinstance(index, Tensor) else index].clone()
        elif isinstance(value, Tensor):
            sliced[key] = value.clone()
        else:
            sliced[key] = value
    return sliced


# ---------------------------------------------------------------------------------------------
# The training loop


def train_batched(
    configs: Sequence[RunConfig],
    run_dirs: Sequence[str | Path],
    *,
    progress: bool = True,
    first_layer: str = "matmul",
    eval_chunk_size: int = 16384,
) -> list[RunResult]:
    """Train the runs that ``configs`` describe as one batched model, each into its run directory.

    The configs must be equal except for their names and :data:`SEED_FIELDS`, and must pass
    :func:`check_batchable`. Each run directory ends up as ``train(configs[i], run_dirs[i])``
    would leave it (see :class:`StackedMLP` for how exactly), with one addition to the manifest:
    ``"batched": {"members": n, "first_layer": ...}``, which also explains its ``wall_time_s``:
    the time of the shared run up to that member's last step.

    Args:
        configs: one config per member.
        run_dirs: one new run directory per member.
        progress: show a step progress bar.
        first_layer: how the stacked model computes its first layer, ``"matmul"`` or
            ``"table"`` (see :class:`StackedMLP`).
        eval_chunk_size: pairs per member evaluated in one forward pass, to bound memory; the
            default is that of ``evaluate``, whose chunks give the same float64 loss sums.

    Returns:
        One :class:`RunResult` per member, in the order of ``configs``.
    """
    configs = list(configs)
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    _check_members(configs, run_dirs)
    if eval_chunk_size < 1:
        raise ValueError(f"eval_chunk_size={eval_chunk_size!r} is invalid: it must be >= 1.")
    if first_layer not in FIRST_LAYER_MODES:
        raise ValueError(
            f"first_layer={first_layer!r} is unknown: choose one of {', '.join(FIRST_LAYER_MODES)}."
        )

    train_cfg = configs[0].train
    device = resolve_device(train_cfg.device, "train.device")
    members = [
        _build_member(cfg, run_dir, device)
        for cfg, run_dir in zip(configs, run_dirs, strict=True)
    ]
    for member in members:
        member.manifest["batched"] = {"members": len(members), "first_layer": first_layer}
        write_json(member.run_dir / MANIFEST, member.manifest)
    stack = _Stack(list(members), device, first_layer)
    logger.info(
        "training %d seeds of %s for %d steps as one batch", len(members), configs[0].name,
        train_cfg.steps,
    )

    started = time.perf_counter()
    results: dict[Path, RunResult] = {}
    step = 0
    bar = tqdm(total=train_cfg.steps, disable=not progress, desc=configs[0].name, unit="step")
    try:
        _evaluate_and_log(stack, 0, eval_chunk_size)
        while step < train_cfg.steps and stack.members:
            step += 1
            stack.train_step(step)
            bar.update(1)

            is_last = step == train_cfg.steps
            if step % train_cfg.eval_every == 0 or is_last:
                _evaluate_and_log(stack, step, eval_chunk_size)
                stopping = [
                    index
                    for index, member in enumerate(stack.members)
                    if train_cfg.early_stop_evals
                    and member.tracker.held >= train_cfg.early_stop_evals
                    and not is_last
                ]
                for index in stopping:
                    member = stack.members[index]
                    logger.info(
                        "%s: test accuracy held for %d evaluations: stopping at step %d",
                        member.run_dir, member.tracker.held, step,
                    )
                    results[member.run_dir] = _finish(stack, index, step, started)
                if stopping:
                    remaining = [i for i in range(len(stack.members)) if i not in stopping]
                    if remaining:
                        stack.keep(remaining)
                    else:
                        stack.members = []
            if step % train_cfg.checkpoint_every == 0 and step < train_cfg.steps:
                for index, member in enumerate(stack.members):
                    stack.copy_member_out(index)
                    _save(
                        member.run_dir, member.cfg, member.model, member.optimizer,
                        member.components, member.tracker, step,
                    )
    except KeyboardInterrupt:
        for member in stack.members:
            member.manifest.update(status="interrupted", step=step)
            write_json(member.run_dir / MANIFEST, member.manifest)
        raise
    finally:
        bar.close()

    for index, member in enumerate(stack.members):
        results[member.run_dir] = _finish(stack, index, step, started)
    return [results[run_dir] for run_dir in run_dirs]


def _evaluate_and_log(stack: _Stack, step: int, chunk_size: int) -> None:
    evaluations = stack.evaluate(chunk_size)
    for index, (member, (train_eval, test_eval)) in enumerate(
        zip(stack.members, evaluations, strict=True)
    ):
        if stack.token_stats is not None:
            member.components.token_stats.load_state_dict(stack._member_token_state(index))
        member.final = _log_evaluation(
            member.run_dir, step, train_eval, test_eval, member.tracker, member.components,
            member.optimizer,
        )


def _finish(stack: _Stack, index: int, step: int, started: float) -> RunResult:
    """Write member ``index``'s last checkpoint and completed manifest, as ``train`` ends a run."""
    member = stack.members[index]
    stack.copy_member_out(index)
    _save(
        member.run_dir, member.cfg, member.model, member.optimizer, member.components,
        member.tracker, step,
    )
    _save_recorded_gradients(member.run_dir, member.components)

    wall_time = time.perf_counter() - started
    final = member.final
    summary = {
        "step": step,
        "train_acc": final["train_acc"],
        "test_acc": final["test_acc"],
        "train_loss": final["train_loss"],
        "test_loss": final["test_loss"],
    }
    member.manifest.update(
        status="completed",
        step=step,
        grok={"train_step": member.tracker.train_step, "test_step": member.tracker.test_step},
        final=summary,
        wall_time_s=round(wall_time, 3),
    )
    write_json(member.run_dir / MANIFEST, member.manifest)
    logger.info("finished %s at step %d in %.1f s", member.run_dir, step, wall_time)
    return RunResult(
        run_dir=member.run_dir,
        model=member.model,
        config=member.cfg,
        step=step,
        grok_train_step=member.tracker.train_step,
        grok_test_step=member.tracker.test_step,
        final=summary,
        wall_time_s=wall_time,
    )
