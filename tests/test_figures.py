"""The figure set: every figure drawn at the quick scale, and the numbers behind the figures."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grokinterp.analysis.hessian import dense_hessian, model_loss_fn
from grokinterp.analysis.spectra import summarize_matrix
from grokinterp.checkpoint import Checkpoint, list_checkpoints, load_checkpoint
from grokinterp.cli import main
from grokinterp.figures import (
    FIGURES,
    PAPER_SCALE,
    QUICK_SCALE,
    mlp_config,
    planned_runs,
    resolve_names,
    run_figures,
    scale_for,
)
from grokinterp.figures.measures import (
    absent_token_fraction,
    block_names,
    curvature_measure,
    fourier_measure,
    lanczos_extremes,
    rank_measure,
)
from grokinterp.figures.series import checkpoint_series, stack_over_seeds
from grokinterp.models import first_layer_matrix
from grokinterp.tasks import all_pairs, make_split
from grokinterp.training.batched import seedless_key, unbatchable_options
from grokinterp.training.config import apply_overrides
from grokinterp.training.loop import train

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# The whole set at the quick scale, through the command line


@pytest.fixture(scope="module")
def quick_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``grokinterp figures --quick`` once for the module: (figure dir, runs dir, stdout)."""
    root = tmp_path_factory.mktemp("figures")
    out, runs = root / "out", root / "runs"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["figures", "--quick", "--out", str(out), "--runs", str(runs), "--quiet"])
    assert code == 0
    return out, runs, buffer.getvalue()


@pytest.mark.parametrize("name", list(FIGURES))
def test_quick_figure_written(quick_set: tuple[Path, Path, str], name: str) -> None:
    out, _, stdout = quick_set
    png = out / f"{name}.png"
    assert png.is_file()
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert str(png) in stdout

    data = json.loads((out / f"{name}.json").read_text())
    assert data["figure"] == name
    assert data["source"] == FIGURES[name].source
    assert data["scale"]["name"] == "quick"
    assert data["data"]


def test_quick_set_lists_every_figure(quick_set: tuple[Path, Path, str]) -> None:
    _, _, stdout = quick_set
    assert f"wrote {len(FIGURES)} figure(s) at the quick scale" in stdout


def test_script_reuses_cached_runs(quick_set: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, runs, _ = quick_set
    before = {path.name: (path / "manifest.json").stat().st_mtime_ns for path in runs.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "analyses" / "fig02_embedding_vs_noembedding.py"), "--quick",
         "--runs", str(runs), "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fig02_embedding_vs_noembedding.png").read_bytes()[:8] == PNG_MAGIC
    after = {path.name: (path / "manifest.json").stat().st_mtime_ns for path in runs.iterdir()}
    assert after == before


def test_fig02_data_matches_manifests(quick_set: tuple[Path, Path, str]) -> None:
    out, runs, _ = quick_set
    data = json.loads((out / "fig02_embedding_vs_noembedding.json").read_text())
    for condition, names in data["conditions"].items():
        manifest = json.loads((runs / names[0] / "manifest.json").read_text())
        assert data["data"][condition]["grok"]["test"]["per_seed"] == [manifest["grok"]["test_step"]]
        final = data["data"][condition]["test_acc"]["mean"][-1]
        assert final == pytest.approx(manifest["final"]["test_acc"], abs=1e-12)


def test_fig08_counts_cover_every_pair() -> None:
    scale = QUICK_SCALE.with_seeds(2)
    output = FIGURES["fig08_token_frequencies"].make(scale, {}, False)
    for split, entry in output.data.items():
        task = mlp_config(scale, f"task.split={split}").task
        split_indices = make_split(task)
        for seed_counts in entry["train_counts"]["per_seed"]:
            # Every training pair contributes two operand occurrences.
            assert sum(seed_counts) == 2 * len(split_indices.train)


def test_two_seeds_average(tmp_path: Path) -> None:
    scale = scale_for(quick=True, seeds=2)
    written = run_figures(["fig02"], scale, tmp_path / "out", tmp_path / "runs", progress=False)
    data = json.loads(written[0].data.read_text())
    band = data["data"]["add/embedding"]["test_acc"]
    per_seed = np.array(band["per_seed"])
    assert per_seed.shape[0] == 2
    np.testing.assert_allclose(band["mean"], per_seed.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(band["min"], per_seed.min(axis=0), rtol=0, atol=0)
    np.testing.assert_allclose(band["max"], per_seed.max(axis=0), rtol=0, atol=0)
    assert len(data["conditions"]["add/embedding"]) == 2


# ---------------------------------------------------------------------------------------------
# Registry, scales and configs


def test_resolve_names_by_prefix() -> None:
    assert resolve_names(["fig02"]) == ["fig02_embedding_vs_noembedding"]
    assert resolve_names(None) == list(FIGURES)


def test_resolve_names_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="'fig99' is unknown: choose from"):
        resolve_names(["fig99"])


def test_resolve_names_rejects_ambiguous() -> None:
    with pytest.raises(ValueError, match="matches several figures"):
        resolve_names(["fig0"])


def test_scale_rejects_bad_seeds() -> None:
    with pytest.raises(ValueError, match="seeds=0 is invalid"):
        QUICK_SCALE.with_seeds(0)


def test_scale_rejects_bad_field() -> None:
    with pytest.raises(ValueError, match=r"FigureScale.p=0 is invalid"):
        dataclasses.replace(QUICK_SCALE, p=0)


def test_paper_scale_is_paper_mlp() -> None:
    cfg = mlp_config(PAPER_SCALE)
    assert (cfg.task.p, cfg.task.op, cfg.task.test_fraction, cfg.task.train_fraction) == (
        97, "add", 0.2, 0.3)
    assert (cfg.model.d_embed, cfg.model.d_mlp, cfg.model.input_mode) == (128, 512, "embed")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 0.01, 0.001)
    assert cfg.train.batch_size == 512
    assert cfg.train.early_stop_evals == 0


def test_figures_share_runs() -> None:
    scale = QUICK_SCALE
    fig05 = planned_runs(["fig05"], scale)
    fig06 = planned_runs(["fig06"], scale)
    both = planned_runs(["fig05", "fig06"], scale)
    # c = 1 and c = 10 on addition are Fig. 6's Adam and Adam-LR runs.
    assert len(fig05) == 8
    assert len(fig06) == 8
    assert len(both) == 14


def test_condition_seeds_share_batch_key() -> None:
    # Figure runs carry their seed in their name. The seeds of one MLP condition must still
    # share a batching key, because ensure_runs otherwise trains them one by one.
    scale = PAPER_SCALE.with_seeds(3)
    for name in resolve_names(None):
        for label, seeds in FIGURES[name].conditions(scale).items():
            if unbatchable_options(seeds[0]):
                continue
            assert len({seedless_key(cfg) for cfg in seeds}) == 1, (name, label)
            assert len({cfg.name for cfg in seeds}) == len(seeds), (name, label)


def test_cli_lists_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["figures", "--list"]) == 0
    out = capsys.readouterr().out
    for name in FIGURES:
        assert name in out


def test_cli_rejects_unknown_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["figures", "--only", "nope", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grokinterp: error: figure 'nope' is unknown")
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds


def test_stack_over_seeds_keeps_common_steps() -> None:
    band = stack_over_seeds([[0, 10, 20, 30], [0, 10, 20]], [[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0]])
    assert band.steps.tolist() == [0, 10, 20]
    np.testing.assert_array_equal(band.mean, [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(band.low, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(band.high, [3.0, 4.0, 5.0])
    np.testing.assert_array_equal(band.std, [1.0, 1.0, 1.0])


def test_stack_over_seeds_undefined_values() -> None:
    band = stack_over_seeds([[0, 1], [0, 1]], [[None, 2.0], [None, 4.0]])
    assert band.as_dict()["mean"] == [None, 3.0]


def test_stack_over_seeds_rejects_ragged() -> None:
    with pytest.raises(ValueError, match="a seed has 2 steps but 1 values"):
        stack_over_seeds([[0, 1]], [[1.0]])


# ---------------------------------------------------------------------------------------------
# Measurements against mathematics


def _symmetric(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return (matrix + matrix.T) / 2


def test_lanczos_full_steps_exact() -> None:
    matrix = _symmetric(12, 0)
    ritz = lanczos_extremes(lambda v: matrix @ v, 12, 12, torch.Generator().manual_seed(1))
    # With as many steps as dimensions the Ritz values are the eigenvalues, up to rounding of a
    # 12 × 12 float64 problem.
    np.testing.assert_allclose(ritz.values, torch.linalg.eigvalsh(matrix).numpy(), atol=1e-10)


def test_lanczos_bounds_interlace() -> None:
    matrix = _symmetric(60, 2)
    eigenvalues = torch.linalg.eigvalsh(matrix).numpy()
    ritz = lanczos_extremes(lambda v: matrix @ v, 60, 8, torch.Generator().manual_seed(3))
    # Cauchy interlacing; 1e-12 covers float64 rounding.
    assert ritz.smallest >= eigenvalues[0] - 1e-12
    assert ritz.largest <= eigenvalues[-1] + 1e-12
    # Each Ritz value is within its residual of some eigenvalue (Kahan's bound).
    for value, residual in zip(ritz.values, ritz.residuals, strict=True):
        assert np.abs(eigenvalues - value).min() <= residual + 1e-12


def test_lanczos_rejects_bad_steps() -> None:
    with pytest.raises(ValueError, match="steps=0 is invalid for n=5"):
        lanczos_extremes(lambda v: v, 5, 0, torch.Generator())


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A p = 7 embedding MLP trained 40 steps, with checkpoints at 20 and 40."""
    torch.set_num_threads(1)
    cfg = apply_overrides(
        mlp_config(QUICK_SCALE),
        ["task.p=7", "model.d_embed=4", "model.d_mlp=8", "train.batch_size=8", "train.steps=40",
         "train.eval_every=10", "train.checkpoint_every=20", "task.train_fraction=0.5"],
    )
    run_dir = tmp_path_factory.mktemp("micro") / "run"
    train(cfg, run_dir, progress=False)
    return run_dir


def test_curvature_matches_dense_hessian(micro_run: Path) -> None:
    checkpoint = load_checkpoint(list_checkpoints(micro_run)[-1][1])
    model = checkpoint.model.double()
    task = checkpoint.config.task
    pairs, split = all_pairs(task), make_split(task)
    for block in ("E", "W", "E+W"):
        hessian = dense_hessian(model_loss_fn(model), dict(model.named_parameters()),
                                pairs.tokens[split.train], pairs.labels[split.train],
                                block=block_names(model)[block])
        eigenvalues = torch.linalg.eigvalsh(hessian)
        n = hessian.shape[0]
        result = curvature_measure(block, lanczos_steps=n, dtype=torch.float64)(
            load_checkpoint(list_checkpoints(micro_run)[-1][1]))
        scale = float(eigenvalues.abs().max())
        # A full Lanczos run in float64 reproduces both ends; 1e-8 relative covers the
        # reorthogonalised recurrence on up to a few hundred dimensions.
        assert result["lambda_max"] == pytest.approx(float(eigenvalues[-1]), abs=1e-8 * scale)
        assert result["lambda_min"] == pytest.approx(float(eigenvalues[0]), abs=1e-8 * scale)
        assert result["verdict"] in ("saddle", "minimum", "maximum", "flat")


def test_curvature_rejects_unknown_block() -> None:
    with pytest.raises(ValueError, match="block='Q' is unknown"):
        curvature_measure("Q", 5)


def test_rank_measure_matches_spectra(micro_run: Path) -> None:
    checkpoint = load_checkpoint(list_checkpoints(micro_run)[-1][1])
    result = rank_measure()(checkpoint)
    E = checkpoint.model.embed.W_E.detach().double()
    W = first_layer_matrix(checkpoint.model).double()
    assert result["EW"]["rank"] == summarize_matrix(E @ W).rank
    assert result["E"]["sigma_max"] == pytest.approx(float(torch.linalg.matrix_norm(E, 2)))
    assert result["EW"]["rank"] <= min(result["E"]["rank"], result["W"]["rank"])


def test_fourier_measure_finds_planted_frequency(micro_run: Path) -> None:
    checkpoint = load_checkpoint(list_checkpoints(micro_run)[-1][1])
    p = checkpoint.config.task.p
    x = torch.arange(p, dtype=torch.float64)
    with torch.no_grad():
        planted = torch.stack([torch.cos(2 * math.pi * 2 * x / p), torch.sin(2 * math.pi * 2 * x / p),
                               torch.cos(2 * math.pi * 2 * x / p), torch.zeros(p, dtype=torch.float64)],
                              dim=1)
        checkpoint.model.embed.W_E[:p] = planted.float()
    result = fourier_measure()(checkpoint)
    assert result["key_frequencies"] == [2]
    # All non-constant energy is at k = 2, so the Gini coefficient is (n - 1) / n over p // 2
    # frequencies; float32 weights leave rounding energy of about 1e-14 elsewhere.
    assert result["gini"] == pytest.approx((p // 2 - 1) / (p // 2), abs=1e-6)


def test_checkpoint_series_caches(micro_run: Path) -> None:
    calls = []

    def measure(checkpoint: Checkpoint) -> dict:
        calls.append(checkpoint.step)
        return {"value": checkpoint.step * 2}

    first = checkpoint_series(micro_run, "test-measure", {"k": 1}, measure)
    second = checkpoint_series(micro_run, "test-measure", {"k": 1}, measure)
    assert [row["step"] for row in first] == [20, 40]
    assert first == second == [{"step": 20, "value": 40}, {"step": 40, "value": 80}]
    assert calls == [20, 40]
    checkpoint_series(micro_run, "test-measure", {"k": 2}, measure)
    assert calls == [20, 40, 20, 40]


def test_checkpoint_series_last_only(micro_run: Path) -> None:
    rows = checkpoint_series(micro_run, "test-last", {}, lambda c: {"step_seen": c.step},
                             last_only=True)
    assert rows == [{"step": 40, "step_seen": 40}]


def test_absent_fraction_counts_zero_rows() -> None:
    gradient = torch.ones(9, 3)
    gradient[[1, 4]] = 0.0
    gradient[8] = 0.0  # a non-operand row does not count
    assert absent_token_fraction(gradient, 7) == pytest.approx(2 / 7)
