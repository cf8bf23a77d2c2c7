from __future__ import annotations

from pathlib import Path

import pytest

from grokinterp.checkpoint import read_manifest
from grokinterp.experiments import (
    config_hash,
    ensure_run,
    ensure_runs,
    run_directory,
    run_status,
    with_seed,
)
from grokinterp.training.config import RunConfig, apply_overrides


def test_hash_distinguishes_configs(micro_config: RunConfig) -> None:
    assert config_hash(micro_config) == config_hash(apply_overrides(micro_config, []))
    assert config_hash(micro_config) != config_hash(apply_overrides(micro_config, ["optim.lr=0.02"]))
    assert config_hash(with_seed(micro_config, 1)) != config_hash(micro_config)


def test_with_seed_sets_three_seeds(micro_config: RunConfig) -> None:
    cfg = with_seed(micro_config, 5)
    assert (cfg.task.data_seed, cfg.model.init_seed, cfg.train.batch_seed) == (5, 5, 5)


def test_completed_run_reused(tmp_path: Path, micro_config: RunConfig) -> None:
    assert run_status(micro_config, tmp_path) == "missing"
    directory = ensure_run(micro_config, tmp_path)
    assert run_status(micro_config, tmp_path) == "completed"
    modified = (directory / "manifest.json").stat().st_mtime_ns
    assert ensure_runs([micro_config], tmp_path, progress=False) == [directory]
    assert (directory / "manifest.json").stat().st_mtime_ns == modified


def test_partial_run_resumed(tmp_path: Path, micro_config: RunConfig) -> None:
    directory = ensure_run(micro_config, tmp_path)
    manifest_path = directory / "manifest.json"
    manifest_path.write_text(manifest_path.read_text().replace('"completed"', '"interrupted"'))
    assert run_status(micro_config, tmp_path) == "partial"
    ensure_run(micro_config, tmp_path)
    assert read_manifest(directory)["status"] == "completed"


def test_foreign_manifest_rejected(tmp_path: Path, micro_config: RunConfig) -> None:
    directory = ensure_run(micro_config, tmp_path)
    manifest_path = directory / "manifest.json"
    manifest_path.write_text(manifest_path.read_text().replace('"p": 11', '"p": 13'))
    with pytest.raises(ValueError, match="contains a run of another config"):
        run_status(micro_config, tmp_path)
    assert directory == run_directory(micro_config, tmp_path)
