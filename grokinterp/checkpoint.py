"""Run directories and checkpoints.

A run directory contains::

    manifest.json                          resolved config, seeds, versions, grok steps, final metrics
    metrics.jsonl                          one JSON object per evaluation
    token_stats.jsonl                      per-token statistics at each evaluation (embedding models)
    embed_gradients.safetensors            ∇_E L at train.record_grad_steps, keys step_NNNNNN
    checkpoints/step_NNNNNN.safetensors    weights, and the training state needed to resume

Checkpoints are safetensors files: tensors under ``model.``, ``optim.`` and ``state.`` prefixes and
a JSON metadata entry with the run config and the non-tensor state. Loading reads only that format,
so a file can never execute code (a pickle is rejected before anything in it is interpreted).
Every file is written to a temporary name in the same directory and renamed into place, so an
interrupted write leaves the previous version intact.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from grokinterp.models import build_model
from grokinterp.training.config import RunConfig, config_from_dict, config_to_dict

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
TOKEN_STATS = "token_stats.jsonl"
EMBED_GRADIENTS = "embed_gradients.safetensors"
CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A run directory or checkpoint file is missing, corrupt or inconsistent."""


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it onto ``path`` if the block succeeds.

    The file gets the permissions of a plain ``open(path, "w")`` (0o666 less the umask), not
    the owner-only mode of ``mkstemp``, so others can read runs and figures as usual.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    # os.umask can only be read by setting it, so set it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:06d}.safetensors"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Return ``(step, path)`` for every checkpoint of ``run_dir``, sorted by step."""
    found = []
    for path in (Path(run_dir) / CHECKPOINT_DIR).glob("step_*.safetensors"):
        try:
            found.append((int(path.stem.removeprefix("step_")), path))
        except ValueError:
            continue
    return sorted(found)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that change numerical results."""
    import numpy
    import transformer_lens

    import grokinterp

    try:
        from importlib.metadata import version

        tl_version = version("transformer-lens")
    except Exception:  # noqa: BLE001 - a missing distribution record must not stop a run
        tl_version = getattr(transformer_lens, "__version__", "unknown")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformer_lens": tl_version,
        "numpy": numpy.__version__,
        "grokinterp": grokinterp.__version__,
    }


def save_checkpoint(
    path: Path,
    model: nn.Module,
    cfg: RunConfig,
    step: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    state_tensors: dict[str, Tensor] | None = None,
    state_meta: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint of ``model`` at ``step`` (and the training state, when given)."""
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "config": config_to_dict(cfg),
        "state": state_meta or {},
    }
    if optimizer is not None:
        optim_tensors, optim_meta = _flatten_optimizer(optimizer)
        tensors.update(optim_tensors)
        meta["optim"] = optim_meta
    for key, value in (state_tensors or {}).items():
        tensors[f"state.{key}"] = value.detach().cpu().clone().contiguous()

    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={"grokinterp": json.dumps(meta)})


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model and the state saved with it."""

    model: nn.Module
    config: RunConfig
    step: int
    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]

    @property
    def run_dir(self) -> Path | None:
        """The run directory that contains this checkpoint, if it lies in one."""
        candidate = self.path.parent.parent
        return candidate if (candidate / MANIFEST).is_file() else None

    def optimizer_state(self) -> dict[str, Any] | None:
        if "optim" not in self.meta:
            return None
        return _unflatten_optimizer(self.tensors, self.meta["optim"])

    def state_tensors(self) -> dict[str, Tensor]:
        return {k.removeprefix("state."): v for k, v in self.tensors.items() if k.startswith("state.")}


def read_checkpoint_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read the tensors and grokinterp metadata of a safetensors checkpoint without building a model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: pass an existing .safetensors file.")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw_meta = (handle.metadata() or {}).get("grokinterp")
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} is not a valid safetensors checkpoint ({error}); grokinterp never loads pickle "
            "files, so re-save the weights with grokinterp or safetensors."
        ) from None
    if raw_meta is None:
        raise CheckpointError(
            f"{path} has no grokinterp metadata: it was not written by grokinterp's save_checkpoint."
        )
    try:
        meta = json.loads(raw_meta)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} has corrupt grokinterp metadata: {error}.") from None
    return tensors, meta


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint file and rebuild its model.

    If the checkpoint lies in a run directory, its config must equal the manifest's (apart from
    ``train.steps``, which a resumed run may extend); a mismatch raises :class:`CheckpointError`.
    """
    path = Path(path)
    tensors, meta = read_checkpoint_file(path)
    try:
        cfg = config_from_dict(meta["config"])
        step = int(meta["step"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has an invalid config in its metadata: {error}") from None

    manifest_path = path.parent.parent / MANIFEST
    if manifest_path.is_file():
        manifest_cfg = read_manifest(path.parent.parent)["config"]
        _check_same_config(path, meta["config"], manifest_cfg)

    model = build_model(cfg.model, cfg.task)
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    _load_weights(path, model, weights)
    # nn.Module.to, because HookedTransformer.to prints a line on every move.
    nn.Module.to(model, device)
    return Checkpoint(model=model, config=cfg, step=step, path=path, tensors=tensors, meta=meta)


def _check_same_config(path: Path, checkpoint_cfg: dict, manifest_cfg: dict) -> None:
    for section in ("task", "model", "optim", "train"):
        ours = dict(checkpoint_cfg.get(section, {}))
        theirs = dict(manifest_cfg.get(section, {}))
        if section == "train":
            ours.pop("steps", None)
            theirs.pop("steps", None)
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                raise CheckpointError(
                    f"checkpoint {path.name} does not match its run's manifest: {section}.{key} is "
                    f"{ours.get(key)!r} in the checkpoint but {theirs.get(key)!r} in manifest.json; "
                    "the file was probably copied from another run."
                )


def _load_weights(path: Path, model: nn.Module, weights: dict[str, Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit its config's model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}."
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, but the config's model "
                f"expects {tuple(expected[name].shape)}."
            )
    model.load_state_dict(weights)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of ``run_dir``."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no {MANIFEST}: pass a run directory written by 'grokinterp train'."
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is corrupt ({error}): it is not valid JSON.") from None
    if not isinstance(manifest, dict) or "config" not in manifest:
        raise CheckpointError(f"{path} is not a grokinterp manifest: it has no 'config' entry.")
    return manifest


def read_metrics(run_dir: Path, name: str = METRICS) -> list[dict[str, Any]]:
    """Read a JSON-lines log of ``run_dir``, skipping a torn last line from an interrupted write."""
    path = Path(run_dir) / name
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise CheckpointError(f"{path} line {number} is not valid JSON.") from None
    return rows


def truncate_metrics(run_dir: Path, after_step: int, name: str = METRICS) -> None:
    """Drop log rows later than ``after_step`` (used when resuming from that checkpoint)."""
    path = Path(run_dir) / name
    if not path.is_file():
        return
    rows = [row for row in read_metrics(run_dir, name) if row.get("step", 0) <= after_step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))


def resolve_checkpoint(path: Path) -> Path:
    """Return the checkpoint file that ``path`` names: itself, or a run directory's latest."""
    path = Path(path)
    if path.is_dir():
        checkpoints = list_checkpoints(path)
        if not checkpoints:
            raise CheckpointError(
                f"{path} contains no checkpoints/step_*.safetensors: train the run first."
            )
        return checkpoints[-1][1]
    if not path.exists():
        raise CheckpointError(f"{path} not found: pass a run directory or a .safetensors checkpoint.")
    return path
