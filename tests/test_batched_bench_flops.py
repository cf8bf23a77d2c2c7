"""The batched-seeds benchmark's operation count against torch's own count of a real run."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.batched_seeds import benchmark_config, exact_batching_bound, run_matmul_flops
from grokinterp.models import build_model
from grokinterp.tasks import all_pairs
from grokinterp.training.config import apply_overrides
from grokinterp.training.loop import train


@pytest.mark.parametrize("input_mode", ["embed", "onehot", "numeric"])
def test_step_count_matches_flop_counter(input_mode: str) -> None:
    cfg = apply_overrides(benchmark_config("tiny", 10), [f"model.input_mode={input_mode}"])
    model = build_model(cfg.model, cfg.task)
    pairs = all_pairs(cfg.task)
    batch = cfg.train.batch_size

    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(pairs.tokens[:batch]), pairs.labels[:batch]).backward()

    assert run_matmul_flops(cfg)["train_step"] == counter.get_total_flops()


def test_run_count_matches_flop_counter(tmp_path) -> None:
    # 30 steps with evaluations at steps 0, 25 and 30: the count covers the whole of train().
    cfg = benchmark_config("tiny", 30)
    assert cfg.train.eval_every == 25

    with FlopCounterMode(display=False) as counter:
        train(cfg, tmp_path / "run", progress=False)

    assert run_matmul_flops(cfg)["run"] == counter.get_total_flops()


def test_bound_divides_peak_by_achieved_rate() -> None:
    cfg = benchmark_config("tiny", 30)
    flops = 8 * run_matmul_flops(cfg)["run"]

    bound = exact_batching_bound(cfg, 8, sequential_seconds=flops / 20e9, peak_gflops=50.0)

    assert bound["sequential_gflops_per_s"] == pytest.approx(20.0)
    assert bound["max_exact_speedup"] == pytest.approx(2.5)
