"""Named run configurations.

- ``paper-mlp``: the embedding MLP of "Mechanistic Insights into Grokking from the Embedding Layer"
  (arXiv 2505.15624) on (a + b) mod 97: Adam, lr 0.01, coupled weight decay 0.001, batch 512,
  20 % of pairs held out as test and 30 % used for training.
- ``paper-mlp-adamlr``: the same with the embedding's learning rate 10× the rest ("Adam-LR").
- ``paper-mlp-noemb``: the same MLP fed the token ids as numbers, the paper's no-embedding control.
- ``paper-mlp-onehot``: the same MLP fed one-hot tokens (its first layer is then an embedding).
- ``nanda-transformer``: the one-layer transformer of Nanda et al. 2023 on (a + b) mod 113, full
  batch, AdamW lr 1e-3, weight decay 1.0, betas (0.9, 0.98), 30 % train.
- ``tiny-transformer``: a reduced transformer (p = 31, d_model 64) that still shows delayed
  generalisation in about a minute on a laptop CPU.
- ``tiny-transformer-fast``: the same transformer trained on 60 % of the pairs (40 % test), which
  groks within its 6,000-step budget: test accuracy ≥ 0.99 at steps 2,400 and 1,850 for seeds 0
  and 1, about 1.5 minutes per run on a shared 2-core CPU. With 40 % of the pairs for training,
  ``tiny-transformer`` reaches only 0.39 test accuracy after 6,000 steps.
- ``tiny``: a small embedding MLP (p = 47, d_embed 32, d_mlp 128, half the pairs for training)
  that groks in about a second; used by the tests.
"""

from __future__ import annotations

from grokinterp.models import ModelConfig
from grokinterp.tasks import TaskConfig
from grokinterp.training.config import OptimConfig, RunConfig, TrainConfig


def _paper_mlp(name: str, **model_kwargs: object) -> RunConfig:
    return RunConfig(
        name=name,
        task=TaskConfig(p=97, op="add", layout="a_op_b_eq", test_fraction=0.2, train_fraction=0.3),
        model=ModelConfig(kind="mlp", d_embed=128, d_mlp=512, **model_kwargs),
        optim=OptimConfig(name="adam", lr=0.01, weight_decay=0.001),
        train=TrainConfig(steps=5000, batch_size=512, eval_every=50, checkpoint_every=500),
    )


def _nanda_transformer() -> RunConfig:
    return RunConfig(
        name="nanda-transformer",
        task=TaskConfig(p=113, op="add", layout="a_b_eq", test_fraction=0.7, train_fraction=0.3),
        model=ModelConfig(kind="transformer", d_model=128, n_heads=4, d_head=32, d_mlp=512),
        optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=1.0, beta1=0.9, beta2=0.98),
        train=TrainConfig(
            steps=20000, batch_size=0, eval_every=100, checkpoint_every=1000, early_stop_evals=10
        ),
    )


def _tiny_transformer() -> RunConfig:
    return RunConfig(
        name="tiny-transformer",
        task=TaskConfig(p=31, op="add", layout="a_b_eq", test_fraction=0.6, train_fraction=0.4),
        model=ModelConfig(kind="transformer", d_model=64, n_heads=4, d_head=16, d_mlp=256),
        optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=1.0, beta1=0.9, beta2=0.98),
        train=TrainConfig(
            steps=6000, batch_size=0, eval_every=50, checkpoint_every=500, early_stop_evals=5
        ),
    )


def _tiny_transformer_fast() -> RunConfig:
    import dataclasses

    cfg = _tiny_transformer()
    task = dataclasses.replace(cfg.task, test_fraction=0.4, train_fraction=0.6)
    return dataclasses.replace(cfg, name="tiny-transformer-fast", task=task)


def _tiny() -> RunConfig:
    return RunConfig(
        name="tiny",
        task=TaskConfig(p=47, op="add", layout="a_op_b_eq", test_fraction=0.2, train_fraction=0.5),
        model=ModelConfig(kind="mlp", d_embed=32, d_mlp=128),
        optim=OptimConfig(name="adam", lr=0.01, weight_decay=0.001),
        train=TrainConfig(steps=3000, batch_size=256, eval_every=25, checkpoint_every=250),
    )


PRESETS = {
    "paper-mlp": lambda: _paper_mlp("paper-mlp"),
    "paper-mlp-adamlr": lambda: _with_embed_lr(_paper_mlp("paper-mlp-adamlr"), 10.0),
    "paper-mlp-noemb": lambda: _paper_mlp("paper-mlp-noemb", input_mode="numeric"),
    "paper-mlp-onehot": lambda: _paper_mlp("paper-mlp-onehot", input_mode="onehot"),
    "nanda-transformer": _nanda_transformer,
    "tiny-transformer": _tiny_transformer,
    "tiny-transformer-fast": _tiny_transformer_fast,
    "tiny": _tiny,
}


def _with_embed_lr(cfg: RunConfig, ratio: float) -> RunConfig:
    import dataclasses

    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, embed_lr_ratio=ratio))


def get_preset(name: str) -> RunConfig:
    """Return the preset called ``name``."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown: choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]()
