from __future__ import annotations

from pathlib import Path

import pytest
import torch

import grokinterp.training.loop as loop
from grokinterp.checkpoint import CheckpointError, read_manifest, read_metrics
from grokinterp.training.config import RunConfig, apply_overrides
from grokinterp.training.loop import train


def test_tiny_preset_groks(tmp_path: Path, tiny_config: RunConfig) -> None:
    result = train(tiny_config, tmp_path / "run", progress=False)
    manifest = read_manifest(result.run_dir)
    assert result.final["train_acc"] >= 0.99
    assert result.final["test_acc"] >= 0.99
    # Grokking: the train set is fitted long before the test set generalises.
    assert result.grok_train_step is not None
    assert result.grok_test_step is not None
    assert result.grok_test_step >= 3 * result.grok_train_step
    assert manifest["grok"] == {"train_step": result.grok_train_step, "test_step": result.grok_test_step}
    # Early stopping fires after early_stop_evals evaluations at >= 0.99 test accuracy.
    assert result.step < tiny_config.train.steps


def test_resume_matches_uninterrupted_run(
    tmp_path: Path, micro_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = apply_overrides(micro_config, ["train.early_stop_evals=0"])
    reference = train(cfg, tmp_path / "reference", progress=False)

    original_step = loop._train_step

    def interrupt_at_47(step, *args, **kwargs):
        if step == 47:
            raise KeyboardInterrupt
        return original_step(step, *args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", interrupt_at_47)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False)
    assert read_manifest(tmp_path / "resumed")["status"] == "interrupted"
    monkeypatch.setattr(loop, "_train_step", original_step)

    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)
    for (name, ours), theirs in zip(reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=False):
        assert torch.equal(ours, theirs), name
    assert read_metrics(tmp_path / "reference") == [
        {k: v for k, v in row.items()} for row in read_metrics(tmp_path / "resumed")
    ]


def test_resume_extends_step_budget(tmp_path: Path, micro_config: RunConfig) -> None:
    cfg = apply_overrides(micro_config, ["train.early_stop_evals=0"])
    full = train(cfg, tmp_path / "full", progress=False)
    train(apply_overrides(cfg, ["train.steps=40"]), tmp_path / "extended", progress=False)
    extended = train(cfg, tmp_path / "extended", resume=True, progress=False)
    assert extended.step == 60
    for ours, theirs in zip(full.model.parameters(), extended.model.parameters(), strict=False):
        assert torch.equal(ours, theirs)


def test_resume_with_other_config_rejected(tmp_path: Path, micro_config: RunConfig) -> None:
    train(micro_config, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="only train.steps may change"):
        train(apply_overrides(micro_config, ["optim.lr=0.5"]), tmp_path / "run", resume=True, progress=False)


def test_existing_run_not_overwritten(tmp_path: Path, micro_config: RunConfig) -> None:
    train(micro_config, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(micro_config, tmp_path / "run", progress=False)


def test_batch_larger_than_train_set_rejected(tmp_path: Path, micro_config: RunConfig) -> None:
    with pytest.raises(ValueError, match="train.batch_size=500 exceeds the 60 training pairs"):
        train(apply_overrides(micro_config, ["train.batch_size=500"]), tmp_path / "run", progress=False)


def test_full_batch_and_adamw(tmp_path: Path, micro_config: RunConfig) -> None:
    cfg = apply_overrides(micro_config, ["train.batch_size=0", "optim.name=adamw", "optim.weight_decay=1.0"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 60


def test_seeds_change_init_and_split(tmp_path: Path, micro_config: RunConfig) -> None:
    base = train(micro_config, tmp_path / "a", progress=False)
    other_init = train(apply_overrides(micro_config, ["model.init_seed=1"]), tmp_path / "b", progress=False)
    assert not torch.equal(base.model.embed.W_E, other_init.model.embed.W_E)
    assert read_manifest(tmp_path / "a")["split"]["sha256"] == read_manifest(tmp_path / "b")["split"]["sha256"]
    other_data = train(apply_overrides(micro_config, ["task.data_seed=1"]), tmp_path / "c", progress=False)
    assert read_manifest(tmp_path / "c")["split"]["sha256"] != read_manifest(tmp_path / "a")["split"]["sha256"]
    del other_data


METHOD_OVERRIDES = {
    "adam-lr": ["optim.embed_lr_ratio=10"],
    "adaptive": ["optim.lr_ratio=adaptive", "optim.adaptive_every=5", "optim.adaptive_window=5"],
    "frequency": ["train.sampler=frequency", "train.sampler_gamma=0.5"],
    "balanced": ["train.sampler=balanced"],
    "grokfast-ema": ["optim.grokfast=ema"],
    "grokfast-ma": ["optim.grokfast=ma", "optim.grokfast_window=5"],
}


@pytest.mark.parametrize("method", sorted(METHOD_OVERRIDES))
def test_resume_exact_with_each_method(tmp_path: Path, micro_config: RunConfig, method: str) -> None:
    cfg = apply_overrides(micro_config, ["train.early_stop_evals=0", "train.record_grad_steps=1,12,40"]
                          + METHOD_OVERRIDES[method])
    reference = train(cfg, tmp_path / "reference", progress=False)
    train(apply_overrides(cfg, ["train.steps=20"]), tmp_path / "resumed", progress=False)
    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)
    for (name, ours), theirs in zip(reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=False):
        assert torch.equal(ours, theirs), name
    assert read_metrics(tmp_path / "reference") == read_metrics(tmp_path / "resumed")
    assert read_metrics(tmp_path / "reference", "token_stats.jsonl") == read_metrics(
        tmp_path / "resumed", "token_stats.jsonl"
    )


def test_adaptive_ratio_logged_and_applied(tmp_path: Path, micro_config: RunConfig) -> None:
    cfg = apply_overrides(micro_config, ["optim.lr_ratio=adaptive", "optim.adaptive_every=10",
                                         "optim.adaptive_c_min=0.5", "optim.adaptive_c_max=4"])
    train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")[1:]
    for row in rows:
        assert 0.5 <= row["embed_lr_ratio"] <= 4
        assert row["lr_embed"] == pytest.approx(row["embed_lr_ratio"] * row["lr_rest"])
        expected = row["sigma_max_E"] / row["sigma_max_W"] / row["f_E"]
        assert row["embed_lr_ratio"] == pytest.approx(min(max(expected, 0.5), 4))


def test_recorded_gradients_have_empty_rows_for_absent_tokens(tmp_path: Path, micro_config: RunConfig) -> None:
    from safetensors.torch import load_file

    cfg = apply_overrides(micro_config, ["train.record_grad_steps=1,12", "train.batch_size=4"])
    train(cfg, tmp_path / "run", progress=False)
    gradients = load_file(str(tmp_path / "run" / "embed_gradients.safetensors"))
    assert sorted(gradients) == ["step_000001", "step_000012"]
    grad = gradients["step_000001"]
    assert grad.shape == (13, 8)
    # A batch of 4 pairs touches at most 8 of the 11 operand tokens, so some rows are exactly 0.
    assert int((grad.abs().sum(dim=1) == 0).sum()) >= 3


def test_token_stats_logged_each_evaluation(tmp_path: Path, micro_config: RunConfig) -> None:
    train(micro_config, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run", "token_stats.jsonl")
    assert [row["step"] for row in rows] == [0, 10, 20, 30, 40, 50, 60]
    last = rows[-1]
    assert len(last["appearance_count"]) == 13
    # The operation and '=' tokens are in every batch.
    assert last["appearance_count"][11] == 60
    assert last["appearance_count"][12] == 60
