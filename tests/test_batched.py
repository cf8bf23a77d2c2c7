"""Batched seeds against separate ``train`` runs: weights, logs, checkpoints, resume and errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grokinterp.checkpoint import (
    EMBED_GRADIENTS,
    TOKEN_STATS,
    list_checkpoints,
    load_checkpoint,
    read_manifest,
    read_metrics,
)
from grokinterp.experiments import ensure_runs, run_directory, with_seed
from grokinterp.models import build_model
from grokinterp.tasks import all_pairs
from grokinterp.training.batched import (
    StackedMLP,
    check_batchable,
    seedless_key,
    train_batched,
    unbatchable_options,
)
from grokinterp.training.config import RunConfig, apply_overrides
from grokinterp.training.loop import RunResult, train

SEEDS = (0, 1, 2)

# The matmul mode runs each member through the same float32 operations as train(), and on the
# x86 CPU these tests were written on the results were bitwise equal. The margin of 1e-6 is for a
# BLAS whose batched product rounds differently from its single one.
MATMUL_ATOL = 1e-6
# The table mode sums the first layer in another order and uses fused Adam: about 4e-7 of
# float32 drift after 60 steps was measured, so 1e-5 is a 25-fold margin.
TABLE_ATOL = 1e-5
ATOL = {"matmul": MATMUL_ATOL, "table": TABLE_ATOL}


def _run_both(
    cfg: RunConfig, root: Path, first_layer: str = "matmul"
) -> tuple[list[RunResult], list[RunResult]]:
    configs = [with_seed(cfg, seed) for seed in SEEDS]
    sequential = [
        train(config, root / f"sequential-{seed}", progress=False)
        for seed, config in zip(SEEDS, configs, strict=True)
    ]
    batched = train_batched(
        configs,
        [root / f"batched-{seed}" for seed in SEEDS],
        progress=False,
        first_layer=first_layer,
    )
    return sequential, batched


def _assert_same_weights(ours: torch.nn.Module, theirs: torch.nn.Module, atol: float) -> None:
    theirs_by_name = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param, theirs_by_name[name], atol=atol, rtol=0, msg=name)


def _assert_same_logs(sequential: Path, batched: Path, loss_rtol: float) -> None:
    expected, actual = read_metrics(sequential), read_metrics(batched)
    assert [row["step"] for row in actual] == [row["step"] for row in expected]
    for ours, theirs in zip(actual, expected, strict=True):
        assert set(ours) == set(theirs)
        assert ours["train_acc"] == theirs["train_acc"], ours["step"]
        assert ours["test_acc"] == theirs["test_acc"], ours["step"]
        for key in ("train_loss", "test_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=loss_rtol), (key, ours["step"])
        for key in ours.keys() - {"train_acc", "test_acc", "train_loss", "test_loss"}:
            assert ours[key] == theirs[key], key

    expected_tokens = read_metrics(sequential, TOKEN_STATS)
    actual_tokens = read_metrics(batched, TOKEN_STATS)
    assert len(actual_tokens) == len(expected_tokens)
    for ours, theirs in zip(actual_tokens, expected_tokens, strict=True):
        assert ours["appearance_count"] == theirs["appearance_count"]
        assert ours["grad_norm_mean"] == pytest.approx(theirs["grad_norm_mean"], rel=1e-4, abs=1e-9)
        assert ours["embed_norm"] == pytest.approx(theirs["embed_norm"], rel=1e-5)


def _assert_same_manifest(sequential: Path, batched: Path) -> None:
    expected, actual = read_manifest(sequential), read_manifest(batched)
    assert actual["batched"]["members"] == len(SEEDS)
    for key in ("format", "format_version", "status", "config", "seeds", "split", "step", "grok"):
        assert actual[key] == expected[key], key
    assert actual["final"].keys() == expected["final"].keys()
    assert actual["final"]["test_acc"] == expected["final"]["test_acc"]


@pytest.mark.parametrize("first_layer", ["matmul", "table"])
def test_batched_matches_sequential(
    tmp_path: Path, micro_config: RunConfig, first_layer: str
) -> None:
    cfg = apply_overrides(micro_config, ["train.early_stop_evals=0"])
    sequential, batched = _run_both(cfg, tmp_path, first_layer)

    for ours, theirs in zip(batched, sequential, strict=True):
        assert ours.step == theirs.step == cfg.train.steps
        _assert_same_weights(ours.model, theirs.model, ATOL[first_layer])
        _assert_same_logs(theirs.run_dir, ours.run_dir, loss_rtol=1e-5)
        _assert_same_manifest(theirs.run_dir, ours.run_dir)
        assert [step for step, _ in list_checkpoints(ours.run_dir)] == [20, 40, 60]


def test_early_stops_at_member_steps(tmp_path: Path, tiny_config: RunConfig) -> None:
    # Test accuracy climbs past 0.3 within 400 steps for seeds 0 and 1, at different steps, and
    # not for seed 2, so one batch covers two early stops and a member that runs to the end.
    cfg = apply_overrides(
        tiny_config,
        [
            "task.p=31",
            "task.train_fraction=0.6",
            "model.d_embed=16",
            "model.d_mlp=64",
            "train.batch_size=64",
            "optim.embed_lr_ratio=10",
            "train.steps=400",
            "train.eval_every=20",
            "train.checkpoint_every=100",
            "train.early_stop_evals=2",
            "train.grok_threshold=0.3",
        ],
    )
    sequential, batched = _run_both(cfg, tmp_path)

    stop_steps = [result.step for result in sequential]
    assert len(set(stop_steps)) == len(SEEDS), stop_steps
    assert max(stop_steps) == cfg.train.steps
    for ours, theirs in zip(batched, sequential, strict=True):
        assert ours.step == theirs.step
        assert ours.grok_train_step == theirs.grok_train_step
        assert ours.grok_test_step == theirs.grok_test_step
        _assert_same_weights(ours.model, theirs.model, MATMUL_ATOL)
        _assert_same_logs(theirs.run_dir, ours.run_dir, loss_rtol=1e-6)
        _assert_same_manifest(theirs.run_dir, ours.run_dir)
        assert list_checkpoints(ours.run_dir)[-1][0] == ours.step
        # A stopped member ends with the weights of its stop step: the last checkpoint.
        last = load_checkpoint(list_checkpoints(ours.run_dir)[-1][1])
        _assert_same_weights(last.model, ours.model, atol=0.0)


@pytest.mark.parametrize(
    "overrides",
    [
        ["optim.name=adamw", "optim.weight_decay=0.1"],
        ["optim.grokfast=ema"],
        ["model.input_mode=onehot"],
        ["model.input_mode=numeric"],
        ["train.record_grad_steps=1,12,40", "optim.embed_lr_ratio=4"],
        ["train.batch_size=0"],
    ],
    ids=["adamw", "grokfast-ema", "onehot", "numeric", "recorded-gradients", "full-batch"],
)
def test_options_match_sequential(
    tmp_path: Path, micro_config: RunConfig, overrides: list[str]
) -> None:
    cfg = apply_overrides(micro_config, ["train.early_stop_evals=0", *overrides])
    sequential, batched = _run_both(cfg, tmp_path)

    for ours, theirs in zip(batched, sequential, strict=True):
        _assert_same_weights(ours.model, theirs.model, MATMUL_ATOL)
        _assert_same_logs(theirs.run_dir, ours.run_dir, loss_rtol=1e-6)
        if cfg.train.record_grad_steps:
            expected = load_file(str(theirs.run_dir / EMBED_GRADIENTS))
            actual = load_file(str(ours.run_dir / EMBED_GRADIENTS))
            assert actual.keys() == expected.keys() == {"step_000001", "step_000012", "step_000040"}
            for key, value in actual.items():
                torch.testing.assert_close(value, expected[key], atol=MATMUL_ATOL, rtol=0)


def test_checkpoints_load_and_resume(tmp_path: Path, micro_config: RunConfig) -> None:
    cfg = apply_overrides(micro_config, ["train.early_stop_evals=0"])
    short = apply_overrides(cfg, ["train.steps=40"])
    batched = train_batched(
        [with_seed(short, seed) for seed in SEEDS],
        [tmp_path / f"batched-{seed}" for seed in SEEDS],
        progress=False,
    )

    for seed, result in zip(SEEDS, batched, strict=True):
        checkpoint = load_checkpoint(list_checkpoints(result.run_dir)[-1][1])
        assert checkpoint.step == 40
        assert checkpoint.optimizer_state() is not None
        _assert_same_weights(checkpoint.model, result.model, atol=0.0)

        # Resumed from the batched checkpoint, the run must end where an uninterrupted one does.
        resumed = train(with_seed(cfg, seed), result.run_dir, resume=True, progress=False)
        reference = train(with_seed(cfg, seed), tmp_path / f"reference-{seed}", progress=False)
        assert resumed.step == 60
        _assert_same_weights(resumed.model, reference.model, MATMUL_ATOL)
        _assert_same_logs(reference.run_dir, result.run_dir, loss_rtol=1e-6)


@pytest.mark.parametrize("input_mode", ["embed", "onehot", "numeric"])
@pytest.mark.parametrize("first_layer", ["matmul", "table"])
def test_stacked_forward_matches_members(
    micro_config: RunConfig, input_mode: str, first_layer: str
) -> None:
    cfg = apply_overrides(micro_config, [f"model.input_mode={input_mode}"])
    members = [build_model(with_seed(cfg, seed).model, cfg.task) for seed in SEEDS]
    pairs = all_pairs(cfg.task)
    position_tokens = [pairs.tokens[:, pos] for pos in range(cfg.task.n_ctx)]
    stacked = StackedMLP(members, position_tokens, first_layer=first_layer)

    generator = torch.Generator().manual_seed(0)
    index = torch.randint(len(pairs.tokens), (len(SEEDS), 32), generator=generator)
    tokens = pairs.tokens[index]
    logits = stacked(tokens)
    for member, (model, member_tokens) in enumerate(zip(members, tokens, strict=True)):
        # float32 logits of size ~1: the table adds the same terms in another order.
        torch.testing.assert_close(logits[member], model(member_tokens), atol=1e-5, rtol=1e-5)


def test_table_rejects_unknown_position_token(micro_config: RunConfig) -> None:
    members = [build_model(micro_config.model, micro_config.task)]
    pairs = all_pairs(micro_config.task)
    stacked = StackedMLP(
        members, [pairs.tokens[:, pos] for pos in range(4)], first_layer="table"
    )
    tokens = pairs.tokens[:2].clone()
    tokens[0, 1] = 0  # an operand token where the operation token belongs
    with pytest.raises(ValueError, match="outside position_tokens"):
        stacked(tokens[None])


def test_configs_differing_beyond_seeds_rejected(
    tmp_path: Path, micro_config: RunConfig
) -> None:
    configs = [micro_config, apply_overrides(with_seed(micro_config, 1), ["optim.lr=0.02"])]
    with pytest.raises(ValueError, match=r"configs\[1\] differs from configs\[0\] in optim.lr"):
        train_batched(configs, [tmp_path / "a", tmp_path / "b"], progress=False)


def test_seedless_key_ignores_seeds_and_name(micro_config: RunConfig) -> None:
    renamed = dataclasses.replace(with_seed(micro_config, 5), name="other")
    assert seedless_key(renamed) == seedless_key(micro_config)
    assert seedless_key(apply_overrides(micro_config, ["optim.lr=0.02"])) != seedless_key(
        micro_config
    )


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        (["task.layout=a_b_eq", "model.kind=transformer"], "model.kind='transformer'"),
        (["optim.lr_ratio=adaptive"], "optim.lr_ratio='adaptive'"),
        (["optim.grokfast=ma"], "optim.grokfast='ma'"),
        (["train.sampler=frequency"], "train.sampler='frequency'"),
        (["train.sampler=balanced"], "train.sampler='balanced'"),
    ],
)
def test_unsupported_options_rejected(
    tmp_path: Path, micro_config: RunConfig, overrides: list[str], option: str
) -> None:
    cfg = apply_overrides(micro_config, overrides)
    assert unbatchable_options(cfg) == [option]
    with pytest.raises(NotImplementedError, match=f"does not implement {option}"):
        check_batchable(cfg)
    with pytest.raises(NotImplementedError, match="Train this config with"):
        train_batched([cfg], [tmp_path / "run"], progress=False)


def test_existing_run_not_overwritten(tmp_path: Path, micro_config: RunConfig) -> None:
    train(micro_config, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="already contains a run"):
        train_batched([micro_config], [tmp_path / "run"], progress=False)


def test_repeated_run_directory_rejected(tmp_path: Path, micro_config: RunConfig) -> None:
    configs = [micro_config, with_seed(micro_config, 1)]
    with pytest.raises(ValueError, match="repeat a directory"):
        train_batched(configs, [tmp_path / "run", tmp_path / "run"], progress=False)


def test_ensure_runs_batches_seed_groups(tmp_path: Path, micro_config: RunConfig) -> None:
    cfg = apply_overrides(micro_config, ["train.early_stop_evals=0"])
    other = apply_overrides(cfg, ["optim.lr=0.02"])
    adaptive = apply_overrides(cfg, ["optim.lr_ratio=adaptive", "optim.adaptive_every=10"])
    configs = [
        *(with_seed(cfg, seed) for seed in SEEDS),
        with_seed(other, 0),
        with_seed(other, 1),
        with_seed(adaptive, 0),
        with_seed(cfg, 0),  # listed twice, trained once
    ]
    directories = ensure_runs(configs, tmp_path / "runs", progress=False, max_batch=2)

    assert directories == [run_directory(config, tmp_path / "runs") for config in configs]
    manifests = [read_manifest(directory) for directory in directories]
    assert all(manifest["status"] == "completed" for manifest in manifests)
    # Three seeds of cfg in batches of at most two, the two of `other` together, the adaptive
    # run alone with train().
    assert [manifest.get("batched", {}).get("members") for manifest in manifests] == [
        2, 2, 1, 2, 2, None, 2,
    ]
    reference = train(with_seed(cfg, 2), tmp_path / "reference", progress=False)
    last = load_checkpoint(list_checkpoints(directories[2])[-1][1])
    _assert_same_weights(last.model, reference.model, MATMUL_ATOL)


def test_ensure_runs_resumes_partial_run(tmp_path: Path, micro_config: RunConfig) -> None:
    cfg = apply_overrides(micro_config, ["train.early_stop_evals=0"])
    directory = ensure_runs([cfg], tmp_path, progress=False)[0]
    manifest_path = directory / "manifest.json"
    manifest_path.write_text(manifest_path.read_text().replace('"completed"', '"interrupted"'))
    for _, path in list_checkpoints(directory)[1:]:
        path.unlink()

    ensure_runs([cfg, with_seed(cfg, 1)], tmp_path, progress=False)
    manifest = read_manifest(directory)
    assert manifest["status"] == "completed"
    # The resumed run continued with train(), which writes no "batched" entry.
    assert "batched" not in manifest
    assert [step for step, _ in list_checkpoints(directory)] == [20, 40, 60]
