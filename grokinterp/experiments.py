"""Cached runs for experiments: each resolved config trains once into a directory named by its hash.

Comparisons and figure scripts ask for runs with :func:`ensure_runs`. A run whose directory
already contains a completed manifest with the same resolved config is reused, an interrupted
one is resumed, and a missing one is trained. The directory name is the config's name followed
by the first 12 hex digits of the SHA-256 of its JSON form, so two configs share a directory only
when they are equal. New runs of configs that differ only in their seeds train together as one
batched model, which by default gives the same results as training them one by one.
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
    resume = status == "partial" and _has_checkpoint(directory)
    if status == "partial" and not resume:
        _clear_unresumable(directory)
    train(cfg, directory, resume=resume, progress=progress)
    return directory


def ensure_runs(
    configs: Sequence[RunConfig],
    runs_dir: Path | str,
    progress: bool = True,
    batch_seeds: bool = True,
    max_batch: int = 16,
    first_layer: str = "matmul",
) -> list[Path]:
    """Make sure every config has a completed run under ``runs_dir``; return the directories.

    Runs to train from the start whose configs differ only in their seeds train together as one
    batched model (:func:`grokinterp.training.batched.train_batched`), at most ``max_batch`` at a
    time, when batching implements their options. Runs it does not implement (the transformer,
    the adaptive lr ratio, the Grokfast moving average, the frequency-aware and balanced
    samplers) and interrupted runs, which resume from their checkpoints, train one at a time
    with ``train``. A progress bar counts runs; the per-run step bar is hidden.

    Args:
        configs: the runs wanted; a config listed twice is trained once.
        runs_dir: the cache directory.
        progress: show the progress bar.
        batch_seeds: train seeds of one config together; False trains every run with ``train``.
        max_batch: the maximum number of runs in one batch, which bounds memory.
        first_layer: the batched model's first layer, ``"matmul"`` (the results of ``train``)
            or ``"table"`` (faster, equal to float32 rounding); see
            :class:`grokinterp.training.batched.StackedMLP`.
    """
    from grokinterp.training.batched import seedless_key, train_batched, unbatchable_options
    from grokinterp.training.loop import train

    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r} is invalid: it must be a positive integer.")
    directories = [run_directory(cfg, runs_dir) for cfg in configs]
    pending = {}
    for cfg, directory in zip(configs, directories, strict=True):
        if directory not in pending and run_status(cfg, runs_dir) != "completed":
            pending[directory] = cfg

    # Interrupted runs resume one by one; the others start from step 0, in batches if possible.
    batches: dict[str, list[RunConfig]] = {}
    one_by_one: list[tuple[RunConfig, bool]] = []
    for directory, cfg in pending.items():
        if run_status(cfg, runs_dir) == "partial" and _has_checkpoint(directory):
            one_by_one.append((cfg, True))
            continue
        _clear_unresumable(directory)
        if batch_seeds and not unbatchable_options(cfg):
            batches.setdefault(seedless_key(cfg), []).append(cfg)
        else:
            one_by_one.append((cfg, False))

    bar = tqdm(total=len(pending), desc="runs", unit="run", disable=not progress)
    try:
        for group in batches.values():
            for start in range(0, len(group), max_batch):
                members = group[start : start + max_batch]
                train_batched(
                    members,
                    [run_directory(cfg, runs_dir) for cfg in members],
                    progress=False,
                    first_layer=first_layer,
                )
                bar.update(len(members))
        for cfg, resume in one_by_one:
            train(cfg, run_directory(cfg, runs_dir), resume=resume, progress=False)
            bar.update(1)
    finally:
        bar.close()
    return directories


def _has_checkpoint(directory: Path) -> bool:
    return any((directory / "checkpoints").glob("step_*.safetensors"))


def _clear_unresumable(directory: Path) -> None:
    # A run stopped before its first checkpoint has nothing to resume from, so its logs go and it
    # starts again.
    for name in ("manifest.json", "metrics.jsonl", "token_stats.jsonl"):
        (directory / name).unlink(missing_ok=True)
