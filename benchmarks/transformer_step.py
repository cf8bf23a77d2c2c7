"""Benchmark one full-batch training step of the reference transformer: fast path vs hooked.

Run from the repository root::

    python -m benchmarks.transformer_step [--quick] [--threads N] [--device cpu]

Setup: the transformer of ``make_transformer(113)`` learns ``(a + b) mod 113``. The training
set is 30 % of all 113² pairs (3,830 examples, drawn with a fixed seed). A step computes the
cross-entropy at the last position over the full training set, runs backward, and takes an
AdamW step (lr 1e-3, weight decay 1.0, betas (0.9, 0.98)). Two identically initialised models train side by side, one through
``fast_answer_logits`` and one through ``model(tokens)[:, -1]``. The timing alternates between
them in repetitions of ``--steps`` steps. The script prints one JSON object with the steps per
second of each path (median over repetitions), the speed-up, and the matmul throughput of the
fast step as a fraction of the machine's measured ``torch.mm`` peak.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from benchmarks._common import (
    at_least,
    base_parser,
    emit_json,
    environment_info,
    interleaved_timings,
    matmul_flops,
    measure_matmul_peak,
    set_threads,
    summarize_rates,
)
from grokinterp.models.transformer import fast_answer_logits, make_transformer

P = 113
TRAIN_FRACTION = 0.3
DATA_SEED = 0
INIT_SEED = 0


def training_set(p: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the ``[a, b, =]`` tokens and labels of ``(a + b) mod p`` for 30 % of all pairs."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)
    labels = (tokens[:, 0] + tokens[:, 1]) % p

    generator = torch.Generator().manual_seed(DATA_SEED)
    train = torch.randperm(p * p, generator=generator)[: int(TRAIN_FRACTION * p * p)]
    return tokens[train].to(device), labels[train].to(device)


def fast_step_flops(cfg, batch: int) -> int:
    """Count the matmul FLOPs of one forward and backward pass of ``fast_answer_logits``.

    Forward matrix products, ``d_attn = n_heads * d_head``:

    - key and value tables: ``(n_ctx * d_vocab) × d_model × d_attn``, twice;
    - query: ``batch × d_model × d_attn``;
    - attention output: ``batch × d_attn × d_model``;
    - MLP: ``batch × d_model × d_mlp`` and ``batch × d_mlp × d_model``;
    - unembedding: ``batch × d_model × d_vocab_out``.

    Both operands of every product require gradients, so the backward pass runs two products
    of the same size for each (input and weight gradient): three times the forward count in
    all. The attention scores and the mixing of values are elementwise and not counted. Each
    takes ``2 * batch * n_ctx * d_attn`` FLOPs, under 1 % of the total at the reference size.
    """
    d_attn = cfg.n_heads * cfg.d_head
    table_rows = cfg.n_ctx * cfg.d_vocab
    forward = (
        2 * matmul_flops(table_rows, cfg.d_model, d_attn)
        + matmul_flops(batch, cfg.d_model, d_attn)
        + matmul_flops(batch, d_attn, cfg.d_model)
        + matmul_flops(batch, cfg.d_model, cfg.d_mlp)
        + matmul_flops(batch, cfg.d_mlp, cfg.d_model)
        + matmul_flops(batch, cfg.d_model, cfg.d_vocab_out)
    )
    return 3 * forward


def hooked_step_flops(cfg, batch: int) -> int:
    """Count the weight-matrix FLOPs of one forward and backward pass of ``model(tokens)``.

    The hooked forward runs the query, key, value and output projections, the MLP and the
    unembedding at all ``n_ctx`` positions. The backward pass again costs twice the forward.
    The attention score and mixing products are left out, as in :func:`fast_step_flops`.
    """
    d_attn = cfg.n_heads * cfg.d_head
    rows = batch * cfg.n_ctx
    forward = (
        3 * matmul_flops(rows, cfg.d_model, d_attn)
        + matmul_flops(rows, d_attn, cfg.d_model)
        + matmul_flops(rows, cfg.d_model, cfg.d_mlp)
        + matmul_flops(rows, cfg.d_mlp, cfg.d_model)
        + matmul_flops(rows, cfg.d_model, cfg.d_vocab_out)
    )
    return 3 * forward


def make_step(model, forward, tokens, labels):
    """Return a closure that runs one full-batch AdamW step of ``model`` through ``forward``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))

    def step() -> None:
        loss = F.cross_entropy(forward(model, tokens), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def hooked_answer_logits(model, tokens):
    return model(tokens)[:, -1]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=at_least(1),
        default=None,
        help="steps per timed repetition (default: 10, quick: 2)",
    )
    parser.add_argument(
        "--repeats",
        type=at_least(1),
        default=None,
        help="timed repetitions per path (default: 7, quick: 5)",
    )
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    args = parser.parse_args()
    set_threads(args.threads)
    steps = args.steps if args.steps is not None else (2 if args.quick else 10)
    repeats = args.repeats if args.repeats is not None else (5 if args.quick else 7)
    device = torch.device(args.device)

    tokens, labels = training_set(P, device)
    fast_model = make_transformer(P, seed=INIT_SEED, device=device)
    hooked_model = make_transformer(P, seed=INIT_SEED, device=device)
    with torch.no_grad():
        fast_logits = fast_answer_logits(fast_model, tokens)
        hooked_logits = hooked_answer_logits(hooked_model, tokens)
    initial_difference = (fast_logits - hooked_logits).abs().max().item()

    # Both paths train from the same weights for the same number of steps, so their final
    # losses must agree closely. The JSON records both as a check of the timed work.
    timings = interleaved_timings(
        {
            "fast": make_step(fast_model, fast_answer_logits, tokens, labels),
            "hooked": make_step(hooked_model, hooked_answer_logits, tokens, labels),
        },
        number=steps,
        repeats=repeats,
        warmup=2,
        device=device,
    )
    with torch.no_grad():
        final_loss = {
            "fast": F.cross_entropy(fast_answer_logits(fast_model, tokens), labels).item(),
            "hooked": F.cross_entropy(hooked_answer_logits(hooked_model, tokens), labels).item(),
        }

    sizes = (256, 512, 1024) if args.quick else (512, 1024, 2048)
    peak = measure_matmul_peak(sizes, device=device, repeats=3 if args.quick else 5)

    fast = summarize_rates(timings["fast"])
    hooked = summarize_rates(timings["hooked"])
    paired_ratios = [h / f for f, h in zip(timings["fast"], timings["hooked"], strict=True)]
    batch = tokens.shape[0]
    fast_flops = fast_step_flops(fast_model.cfg, batch)
    hooked_flops = hooked_step_flops(hooked_model.cfg, batch)
    fast_gflops = fast_flops * fast["median"] / 1e9

    emit_json(
        {
            "benchmark": "transformer_step",
            "setup": {
                "p": P,
                "train_examples": batch,
                "steps_per_repetition": steps,
                "repetitions": repeats,
                "optimizer": "AdamW(lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))",
                "quick": args.quick,
            },
            "environment": environment_info(device),
            "initial_max_abs_logit_difference": initial_difference,
            "final_train_loss": final_loss,
            "steps_per_second": {"fast": fast, "hooked": hooked},
            "speedup": {
                "median_of_paired_ratios": statistics.median(paired_ratios),
                "ratio_of_medians": fast["median"] / hooked["median"],
            },
            "matmul": {
                "fast_flops_per_step": fast_flops,
                "hooked_flops_per_step": hooked_flops,
                "fast_gflops_achieved": fast_gflops,
                "hooked_gflops_achieved": hooked_flops * hooked["median"] / 1e9,
                "mm_peak": peak,
                "fast_fraction_of_peak": fast_gflops / peak["peak_gflops"],
                "fast_steps_per_second_at_peak": peak["peak_gflops"] * 1e9 / fast_flops,
            },
        }
    )


if __name__ == "__main__":
    main()
