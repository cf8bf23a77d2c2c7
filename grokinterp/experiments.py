"""Cached runs for experiments: each resolved config trains once into a directory named by its hash.

Comparisons and figure scripts ask for runs with :func:`ensure_runs`. A run whose directory
already contains a completed manifest with the same resolved config is reused, an interrupted
one is resumed, and a missing one is trained. The directory name is the config's name followed
by the first 12 hex digits of the SHA-256 of its JSON form, so two configs share a directory only
when they are equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from grokinterp.checkpoint import MANIFEST, read_manifest
from grokinterp.training.config import RunConfig, config_to_dict

logger = logging.getLogger(__name__)


def config_hash(cfg: RunConfig) -> str:
    """First 12 hex digits of the SHA-256 of the resolved config (its name included)."""
    encoded = json.dumps(config_to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:12]


def run_directory(cfg: RunConfig, runs_dir: Path | str) -> Path:
    """Directory of the cached run of ``cfg`` under ``runs_dir``."""
    return Path(runs_dir) / f"{cfg.name}-{config_hash(cfg)}"


def with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    """``cfg`` with the data-split, initialisation and batch-order seeds all set to ``seed``."""
    return dataclasses.replace(
        cfg,
        task=dataclasses.replace(cfg.task, data_seed=seed),
        model=dataclasses.replace(cfg.model, init_seed=seed),
        train=dataclasses.replace(cfg.train, batch_seed=seed),
    )


def run_status(cfg: RunConfig, runs_dir: Path | str) -> str:
    """``"completed"``, ``"partial"`` (a manifest without completion) or ``"missing"``."""
    directory = run_directory(cfg, runs_dir)
    if not (directory / MANIFEST).is_file():
        return "missing"
    manifest = read_manifest(directory)
    # A JSON round trip turns tuples into lists, as they are in the manifest.
    if manifest.get("config") != json.loads(json.dumps(config_to_dict(cfg))):
        raise ValueError(
            f"{directory} contains a run of another config (a hash collision or an edited "
            "manifest): delete the directory to retrain it."
        )
    return "completed" if manifest.get("status") == "completed" else "partial"


def ensure_run(cfg: RunConfig, runs_dir: Path | str, progress: bool = False) -> Path:
    """Train ``cfg`` unless a completed run of it exists; return its run directory."""
    from grokinterp.training.loop import train

    directory = run_directory(cfg, runs_dir)
    status = run_status(cfg, runs_dir)
    if status == "completed":
        logger.info("reusing %s", directory)
        return directory
    has_checkpoint = any((directory / "checkpoints").glob("step_*.safetensors"))
    resume = status == "partial" and has_checkpoint
    if status == "partial" and not has_checkpoint:
        # A run stopped before its first checkpoint has nothing to resume from.
        for name in ("manifest.json", "metrics.jsonl", "token_stats.jsonl"):
            (directory / name).unlink(missing_ok=True)
    train(cfg, directory, resume=resume, progress=progress)
    return directory


def ensure_runs(
    configs: Sequence[RunConfig], runs_dir: Path | str, progress: bool = True
) -> list[Path]:
    """Make sure every config has a completed run under ``runs_dir``; return the directories.

    A progress bar counts runs; the per-run step bar is hidden.
    """
    directories = []
    for cfg in tqdm(configs, desc="runs", unit="run", disable=not progress):
        directories.append(ensure_run(cfg, runs_dir, progress=False))
    return directories
