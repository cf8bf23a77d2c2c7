"""grokinterp: mechanistic interpretability of grokking on modular arithmetic.

The public API in one place::

    import grokinterp as gi

    cfg = gi.apply_overrides(gi.get_preset("tiny"), ["optim.embed_lr_ratio=10"])
    result = gi.train(cfg, "runs/tiny-adamlr")
    checkpoint = gi.load_checkpoint(result.run_dir / "checkpoints/step_000500.safetensors")
"""

__version__ = "0.1.0"


class GrokinterpWarning(UserWarning):
    """Base class of the warnings that grokinterp emits."""


from grokinterp.checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_manifest  # noqa: E402
from grokinterp.models import HookedMLP, ModelConfig, answer_logits, build_model  # noqa: E402
from grokinterp.tasks import TaskConfig, all_pairs, make_split  # noqa: E402
from grokinterp.training.config import (  # noqa: E402
    OptimConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
)
from grokinterp.training.loop import RunResult, train  # noqa: E402
from grokinterp.training.presets import PRESETS, get_preset  # noqa: E402

__all__ = [
    "PRESETS",
    "Checkpoint",
    "CheckpointError",
    "GrokinterpWarning",
    "HookedMLP",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "RunResult",
    "TaskConfig",
    "TrainConfig",
    "all_pairs",
    "answer_logits",
    "apply_overrides",
    "build_model",
    "get_preset",
    "load_checkpoint",
    "make_split",
    "read_manifest",
    "train",
]
