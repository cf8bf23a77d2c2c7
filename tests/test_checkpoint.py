from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from grokinterp.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    read_manifest,
    read_metrics,
    save_checkpoint,
)
from grokinterp.models import answer_logits, build_model
from grokinterp.tasks import all_pairs
from grokinterp.training.components import build_optimizer
from grokinterp.training.config import RunConfig, apply_overrides
from grokinterp.training.loop import train


def test_round_trip_gives_exact_logits(tmp_path: Path, micro_config: RunConfig) -> None:
    model = build_model(micro_config.model, micro_config.task)
    path = tmp_path / "step_000000.safetensors"
    save_checkpoint(path, model, micro_config, step=0)
    loaded = load_checkpoint(path)
    tokens = all_pairs(micro_config.task).tokens
    assert torch.equal(answer_logits(loaded.model, tokens), answer_logits(model, tokens))
    assert loaded.config == micro_config
    assert loaded.step == 0


def test_round_trip_transformer(tmp_path: Path, micro_config: RunConfig) -> None:
    cfg = apply_overrides(
        micro_config,
        ["task.layout=a_b_eq", "model.kind=transformer", "model.d_model=16", "model.n_heads=2",
         "model.d_head=8", "model.d_mlp=32"],
    )
    model = build_model(cfg.model, cfg.task)
    path = tmp_path / "step_000000.safetensors"
    save_checkpoint(path, model, cfg, step=0)
    tokens = all_pairs(cfg.task).tokens
    assert torch.equal(answer_logits(load_checkpoint(path).model, tokens), answer_logits(model, tokens))


def test_optimizer_state_round_trip(tmp_path: Path, micro_config: RunConfig) -> None:
    model = build_model(micro_config.model, micro_config.task)
    optimizer = build_optimizer(model, micro_config.optim)
    loss = answer_logits(model, all_pairs(micro_config.task).tokens).square().mean()
    loss.backward()
    optimizer.step()
    path = tmp_path / "step_000001.safetensors"
    save_checkpoint(path, model, micro_config, step=1, optimizer=optimizer)

    restored = build_optimizer(model, micro_config.optim)
    restored.load_state_dict(load_checkpoint(path).optimizer_state())
    for ours, theirs in zip(optimizer.state.values(), restored.state.values(), strict=False):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ours[key], theirs[key])
    assert restored.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_pickle_payload_rejected_without_running(tmp_path: Path, micro_config: RunConfig) -> None:
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    run = train(micro_config, tmp_path / "run", progress=False)
    target = checkpoint_path(run.run_dir, 10)
    target.write_bytes(pickle.dumps({"model": Payload()}))
    torch.save({"model": Payload()}, tmp_path / "weights.pt")

    for path in (target, tmp_path / "weights.pt"):
        with pytest.raises(CheckpointError, match="not a valid safetensors checkpoint"):
            load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_not_matching_manifest_rejected(tmp_path: Path, micro_config: RunConfig) -> None:
    run = train(micro_config, tmp_path / "run", progress=False)
    other = apply_overrides(micro_config, ["model.d_mlp=24"])
    model = build_model(other.model, other.task)
    save_checkpoint(checkpoint_path(run.run_dir, 999), model, other, step=999)
    with pytest.raises(CheckpointError, match="model.d_mlp is 24 in the checkpoint but 16 in manifest"):
        load_checkpoint(checkpoint_path(run.run_dir, 999))


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_manifest(tmp_path / "run")


def test_run_directory_layout(tmp_path: Path, micro_config: RunConfig) -> None:
    run = train(micro_config, tmp_path / "run", progress=False)
    manifest = read_manifest(run.run_dir)
    assert manifest["status"] == "completed"
    assert manifest["seeds"] == {"data": 0, "init": 0, "batch": 0}
    assert manifest["final"]["step"] == 60
    assert set(manifest["grok"]) == {"train_step", "test_step"}
    assert {"torch", "transformer_lens", "python"} <= set(manifest["versions"])
    assert manifest["config"]["task"]["p"] == 11
    assert [step for step, _ in list_checkpoints(run.run_dir)] == [20, 40, 60]
    assert [row["step"] for row in read_metrics(run.run_dir)] == [0, 10, 20, 30, 40, 50, 60]
    assert not list(run.run_dir.rglob("*.tmp"))
    json.dumps(manifest)


def test_atomic_writes_follow_umask(tmp_path: Path, micro_config: RunConfig) -> None:
    # Files written through a temporary file must get the mode of a plain open(), not the
    # owner-only 0o600 of mkstemp, so that a shared run directory stays readable.
    previous = os.umask(0o022)
    try:
        train(micro_config, tmp_path / "run", progress=False)
    finally:
        os.umask(previous)
    written = [tmp_path / "run" / "manifest.json", *(path for _, path in list_checkpoints(tmp_path / "run"))]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
