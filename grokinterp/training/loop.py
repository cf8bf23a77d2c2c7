"""The training loop: config in, run directory out.

One call of :func:`train` builds the task data, the model and the optimiser from a
:class:`RunConfig`, trains with minibatches (or full batch), evaluates on the whole train and test
sets every ``eval_every`` steps, and writes the run directory described in
:mod:`grokinterp.checkpoint`. Checkpoints contain the optimiser and sampler state, so a run resumed
from its latest checkpoint ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from grokinterp.checkpoint import (
    EMBED_GRADIENTS,
    MANIFEST,
    METRICS,
    TOKEN_STATS,
    CheckpointError,
    atomic_path,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    package_versions,
    read_manifest,
    save_checkpoint,
    truncate_metrics,
    write_json,
)
from grokinterp.devices import resolve_device
from grokinterp.models import answer_logits, build_model
from grokinterp.tasks import PairData, Split, all_pairs, make_split, split_statistics
from grokinterp.training.components import TrainingComponents, build_components, build_optimizer
from grokinterp.training.config import RunConfig, config_to_dict
from grokinterp.training.evaluate import Evaluation, GrokTracker, evaluate

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Outcome of :func:`train`: the trained model and where everything was written."""

    run_dir: Path
    model: nn.Module
    config: RunConfig
    step: int
    grok_train_step: int | None
    grok_test_step: int | None
    final: dict[str, Any]
    wall_time_s: float


@dataclass
class TaskTensors:
    """The task's pairs and split, on the training device."""

    pairs: PairData
    split: Split
    train_tokens: Tensor
    train_labels: Tensor
    test_tokens: Tensor
    test_labels: Tensor


def prepare_data(cfg: RunConfig, device: str | torch.device = "cpu") -> TaskTensors:
    """Build every pair of the task and its split, with the training batch size checked."""
    pairs = all_pairs(cfg.task)
    split = make_split(cfg.task)
    n_train = len(split.train)
    if cfg.train.batch_size > n_train:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} exceeds the {n_train} training pairs of "
            f"p={cfg.task.p}, train_fraction={cfg.task.train_fraction}: lower the batch size, "
            "or use train.batch_size=0 for full batch."
        )
    return TaskTensors(
        pairs=pairs,
        split=split,
        train_tokens=pairs.tokens[split.train].to(device),
        train_labels=pairs.labels[split.train].to(device),
        test_tokens=pairs.tokens[split.test].to(device),
        test_labels=pairs.labels[split.test].to(device),
    )


def split_digest(split: Split) -> str:
    """SHA-256 of the split's indices, recorded so a rebuilt split can be verified."""
    digest = hashlib.sha256()
    digest.update(split.train.numpy().tobytes())
    digest.update(b"|")
    digest.update(split.test.numpy().tobytes())
    return digest.hexdigest()


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train the run that ``cfg`` describes and write it to ``run_dir``.

    With ``resume=True`` an existing run directory continues from its latest checkpoint; its
    config must equal ``cfg`` except for ``train.steps``, which may be raised to extend the run.
    Without it, a run directory that already contains a manifest is an error, so no run is
    overwritten by accident.
    """
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device, "train.device")
    data = prepare_data(cfg, device)
    model = build_model(cfg.model, cfg.task).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    components = build_components(cfg, model, data.pairs, data.split, device)
    tracker = GrokTracker(cfg.train.grok_threshold)

    start_step = 0
    if resume:
        start_step = _restore(run_dir, cfg, model, optimizer, components, tracker)
    elif (run_dir / MANIFEST).exists():
        raise FileExistsError(
            f"{run_dir} already contains a run: pass --resume to continue it, or choose another "
            "--out directory."
        )

    manifest = _initial_manifest(cfg, data, run_dir, resume)
    write_json(run_dir / MANIFEST, manifest)
    logger.info("training %s for %d steps in %s", cfg.name, cfg.train.steps, run_dir)

    started = time.perf_counter()
    prior_time = float(manifest.get("wall_time_s", 0.0)) if resume else 0.0
    step = start_step
    final: dict[str, Any] = {}
    bar = tqdm(
        total=cfg.train.steps, initial=start_step, disable=not progress, desc=cfg.name, unit="step"
    )
    try:
        if start_step == 0:
            final = _evaluate_and_log(run_dir, 0, model, data, tracker, components, optimizer)
        while step < cfg.train.steps:
            step += 1
            _train_step(step, cfg, model, optimizer, components, data)
            bar.update(1)

            is_last = step == cfg.train.steps
            if step % cfg.train.eval_every == 0 or is_last:
                final = _evaluate_and_log(run_dir, step, model, data, tracker, components, optimizer)
                bar.set_postfix(train=f"{final['train_acc']:.3f}", test=f"{final['test_acc']:.3f}")
                stop = cfg.train.early_stop_evals and tracker.held >= cfg.train.early_stop_evals
                if stop and not is_last:
                    logger.info("test accuracy held for %d evaluations: stopping at step %d",
                                tracker.held, step)
                    break
            if step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
                _save(run_dir, cfg, model, optimizer, components, tracker, step)
    except KeyboardInterrupt:
        manifest.update(status="interrupted", step=step)
        write_json(run_dir / MANIFEST, manifest)
        raise
    finally:
        bar.close()

    if not final or final.get("step") != step:
        final = _evaluate_and_log(run_dir, step, model, data, tracker, components, optimizer)
    _save(run_dir, cfg, model, optimizer, components, tracker, step)
    _save_recorded_gradients(run_dir, components)
    wall_time = prior_time + time.perf_counter() - started
    final_summary = {
        "step": step,
        "train_acc": final["train_acc"],
        "test_acc": final["test_acc"],
        "train_loss": final["train_loss"],
        "test_loss": final["test_loss"],
    }
    manifest.update(
        status="completed",
        step=step,
        grok={"train_step": tracker.train_step, "test_step": tracker.test_step},
        final=final_summary,
        wall_time_s=round(wall_time, 3),
    )
    write_json(run_dir / MANIFEST, manifest)
    logger.info("finished %s at step %d in %.1f s", cfg.name, step, wall_time)
    return RunResult(
        run_dir=run_dir,
        model=model,
        config=cfg,
        step=step,
        grok_train_step=tracker.train_step,
        grok_test_step=tracker.test_step,
        final=final_summary,
        wall_time_s=wall_time,
    )


def _train_step(
    step: int,
    cfg: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    components: TrainingComponents,
    data: TaskTensors,
) -> None:
    indices = components.sampler.next_batch()
    tokens = data.train_tokens[indices]
    logits = answer_logits(model, tokens)
    loss = F.cross_entropy(logits, data.train_labels[indices])

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    components.after_backward(step, model, tokens)
    optimizer.step()
    components.after_step(step, model, optimizer)


def _evaluate_and_log(
    run_dir: Path,
    step: int,
    model: nn.Module,
    data: TaskTensors,
    tracker: GrokTracker,
    components: TrainingComponents,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    train_eval = evaluate(model, data.train_tokens, data.train_labels)
    test_eval = evaluate(model, data.test_tokens, data.test_labels)
    return _log_evaluation(run_dir, step, train_eval, test_eval, tracker, components, optimizer)


def _log_evaluation(
    run_dir: Path,
    step: int,
    train_eval: Evaluation,
    test_eval: Evaluation,
    tracker: GrokTracker,
    components: TrainingComponents,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """Update the grok tracker and append one row to metrics.jsonl and token_stats.jsonl."""
    tracker.update(step, train_eval.accuracy, test_eval.accuracy)
    row = {
        "step": step,
        "train_loss": train_eval.loss,
        "train_acc": train_eval.accuracy,
        "test_loss": test_eval.loss,
        "test_acc": test_eval.accuracy,
        **{f"lr_{group.get('name', i)}": group["lr"] for i, group in enumerate(optimizer.param_groups)},
        **components.metrics(),
    }
    _append_jsonl(run_dir / METRICS, row)
    token_row = components.token_snapshot()
    if token_row is not None:
        _append_jsonl(run_dir / TOKEN_STATS, {"step": step, **token_row})
    return row


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def _save(
    run_dir: Path,
    cfg: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    components: TrainingComponents,
    tracker: GrokTracker,
    step: int,
) -> None:
    state_tensors, state_meta = components.state()
    state_meta["grok"] = tracker.as_dict()
    save_checkpoint(
        checkpoint_path(run_dir, step),
        model,
        cfg,
        step,
        optimizer=optimizer,
        state_tensors=state_tensors,
        state_meta=state_meta,
    )


def _save_recorded_gradients(run_dir: Path, components: TrainingComponents) -> None:
    gradients = components.recorded_gradients()
    if not gradients:
        return
    tensors = {f"step_{step:06d}": grad.contiguous() for step, grad in sorted(gradients.items())}
    with atomic_path(run_dir / EMBED_GRADIENTS) as tmp:
        save_file(tensors, str(tmp))


def _restore(
    run_dir: Path,
    cfg: RunConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    components: TrainingComponents,
    tracker: GrokTracker,
) -> int:
    if not (run_dir / MANIFEST).exists():
        raise CheckpointError(
            f"cannot resume: {run_dir} contains no {MANIFEST}; drop --resume to start a new run."
        )
    manifest_cfg = read_manifest(run_dir)["config"]
    ours = config_to_dict(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=1)))
    theirs = dict(manifest_cfg)
    theirs["train"] = {**theirs.get("train", {}), "steps": 1}
    if json.dumps(ours, sort_keys=True) != json.dumps(theirs, sort_keys=True):
        raise CheckpointError(
            f"cannot resume {run_dir}: its manifest's config differs from the one given (only "
            "train.steps may change); resume with the same preset and overrides."
        )
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(
            f"cannot resume: {run_dir} has no checkpoints yet; start it again without --resume."
        )
    step, path = checkpoints[-1]
    if step > cfg.train.steps:
        raise CheckpointError(
            f"cannot resume {run_dir} to train.steps={cfg.train.steps}: its latest checkpoint is "
            f"already at step {step}."
        )
    checkpoint = load_checkpoint(path)
    model.load_state_dict(checkpoint.model.state_dict())
    optimizer_state = checkpoint.optimizer_state()
    if optimizer_state is None:
        raise CheckpointError(f"cannot resume from {path}: it has no optimiser state.")
    optimizer.load_state_dict(optimizer_state)
    state_meta = checkpoint.meta.get("state", {})
    components.load_state(checkpoint.state_tensors(), state_meta)
    grok = state_meta.get("grok", {})
    tracker.train_step = grok.get("train_step")
    tracker.test_step = grok.get("test_step")
    tracker.held = grok.get("held", 0)

    truncate_metrics(run_dir, step, METRICS)
    truncate_metrics(run_dir, step, TOKEN_STATS)
    for later_step, later_path in checkpoints:
        if later_step > step:
            later_path.unlink()
    logger.info("resuming %s from step %d", run_dir, step)
    return step


def _initial_manifest(cfg: RunConfig, data: TaskTensors, run_dir: Path, resume: bool) -> dict:
    previous = read_manifest(run_dir) if resume else {}
    stats = split_statistics(cfg.task, data.pairs, data.split)
    return {
        "format": "grokinterp-run",
        "format_version": 1,
        "name": cfg.name,
        "status": "running",
        "config": config_to_dict(cfg),
        "seeds": {
            "data": cfg.task.data_seed,
            "init": cfg.model.init_seed,
            "batch": cfg.train.batch_seed,
        },
        "split": {
            "n_train": len(data.split.train),
            "n_test": len(data.split.test),
            "sha256": split_digest(data.split),
            "rebuild": "grokinterp.tasks.make_split(config.task)",
            "train_operand_counts": stats.summary(),
        },
        "versions": package_versions(),
        "step": previous.get("step", 0),
        "grok": previous.get("grok", {"train_step": None, "test_step": None}),
        "final": previous.get("final"),
        "wall_time_s": previous.get("wall_time_s", 0.0),
    }
