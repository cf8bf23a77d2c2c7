from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from grokinterp.cli import main
from grokinterp.compare import (
    RunRecord,
    accuracy_band,
    bootstrap_median_interval,
    compare_runs,
    group_runs,
    load_run,
    paired_steps,
    plot_step_limit,
    summarize,
    summarize_steps,
)
from grokinterp.training.config import RunConfig, apply_overrides
from grokinterp.training.loop import train

# p = 23 with a small MLP: 120 steps train in well under a second per run.
GRID = ["task.p=23", "model.d_embed=16", "model.d_mlp=64", "train.batch_size=64", "train.steps=120",
        "train.eval_every=10", "train.checkpoint_every=60"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A 2 methods × 2 seeds comparison through the CLI; returns (runs, out, printed table)."""
    root = tmp_path_factory.mktemp("grid")
    runs, out = root / "runs", root / "out"
    code = main(["compare", "--preset", "tiny", "--methods", "adam", "adam-lr", "--seeds", "2",
                 "--runs", str(runs), "--out", str(out), "--quiet", *GRID])
    assert code == 0
    return runs, out, (out / "comparison.md").read_text()


def test_bootstrap_equal_values_zero_width() -> None:
    assert bootstrap_median_interval([300.0] * 5, seed=3) == (300.0, 300.0, 300.0)


def test_bootstrap_seeded() -> None:
    values = [100.0, 250.0, 400.0, 900.0, 1300.0]
    assert bootstrap_median_interval(values, seed=7) == bootstrap_median_interval(values, seed=7)
    assert bootstrap_median_interval(values, seed=7)[0] == 400.0


def test_bootstrap_matches_binomial_quantiles() -> None:
    # For n = 9 distinct values x_1 < … < x_9, the resampled median is ≤ x_k exactly when at least
    # 5 of the 9 draws are ≤ x_k, so P(median ≤ x_k) = P(Binomial(9, k/9) ≥ 5): 0.0014, 0.0304
    # for k = 1, 2 and 0.9696, 0.9986 for k = 7, 8. The 2.5 % and 97.5 % quantiles are therefore
    # x_2 and x_8. With 100,000 resamples the empirical CDF has a standard error of about 0.0005,
    # ten times smaller than the 0.005 margins to 0.025 and 0.975.
    values = [float(v) for v in range(1, 10)]
    random.Random(0).shuffle(values)
    assert bootstrap_median_interval(values, n_resamples=100_000, seed=1) == (5.0, 2.0, 8.0)


def test_bootstrap_even_count_averages() -> None:
    median, low, high = bootstrap_median_interval([10.0, 20.0, 30.0, 40.0], seed=0)
    assert median == 25.0
    assert (low, high) == (10.0, 40.0)


def test_censored_seed_decides_bound() -> None:
    # With 3 values, P(resampled median = the censored one) = P(≥ 2 of 3 draws) = 7/27 > 0.025.
    summary = summarize_steps([100, 200, None], budget=1000)
    assert (summary.median, summary.low, summary.high) == (200.0, 100.0, None)
    assert (summary.reached, summary.n_seeds, summary.fraction) == (2, 3, 2 / 3)


def test_censored_median_not_reached() -> None:
    summary = summarize_steps([None, None, 100, 400], budget=1000)
    assert summary.median is None
    assert summary.reached == 2


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_median_interval([])
    with pytest.raises(ValueError, match="use math.inf for censored values"):
        bootstrap_median_interval([1.0, math.nan])
    with pytest.raises(ValueError, match="confidence=1.5 is invalid"):
        bootstrap_median_interval([1.0], confidence=1.5)


def test_grid_writes_outputs(grid: tuple[Path, Path, str]) -> None:
    runs, out, markdown = grid
    assert len(list(runs.iterdir())) == 4
    assert "| adam | none | 2 |" in markdown
    assert "| reference |" in markdown
    assert "| adam-lr | optim.embed_lr_ratio=10.0 | 2 |" in markdown
    assert "grokinterp compare --preset tiny --methods adam adam-lr --seeds 2" in markdown
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((out / "comparison.json").read_text())
    assert [method["method"] for method in data["methods"]] == ["adam", "adam-lr"]
    adam_lr = data["methods"][1]
    assert adam_lr["changes"] == {"optim.embed_lr_ratio": 10.0}
    assert adam_lr["n_seeds"] == 2
    assert adam_lr["budget"] == 120
    assert [run["seed"] for run in adam_lr["runs"]] == [0, 1]
    assert set(adam_lr["test_steps"]) == {"median", "low", "high", "reached", "n_seeds", "budget"}
    assert data["methods"][0]["paired_test_steps"] is None
    paired = adam_lr["paired_test_steps"]
    assert paired["reference"] == "adam"
    assert paired["faster"] + paired["slower"] + paired["ties"] == 2
    assert "vs adam on the same seeds: earlier / later / tied, median step ratio" in markdown
    assert 0.0 <= adam_lr["grokked_fraction"] <= 1.0
    for run in adam_lr["runs"]:
        assert run["wall_time_s"] > 0
        manifest = json.loads((Path(run["run_dir"]) / "manifest.json").read_text())
        assert manifest["config"]["optim"]["embed_lr_ratio"] == 10.0
        assert manifest["seeds"] == {"data": run["seed"], "init": run["seed"], "batch": run["seed"]}


def test_grid_reuses_cached_runs(
    grid: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    runs, out, _ = grid
    stamps = {path: (path / "manifest.json").stat().st_mtime_ns for path in runs.iterdir()}
    code, printed, _ = run_cli(capsys, "compare", "--preset", "tiny", "--methods", "adam", "adam-lr",
                               "--seeds", "2", "--runs", str(runs), "--out", str(out / "again"),
                               "--quiet", *GRID)
    assert code == 0
    assert {path: (path / "manifest.json").stat().st_mtime_ns for path in runs.iterdir()} == stamps
    assert "| adam-lr | optim.embed_lr_ratio=10.0 | 2 |" in printed


def test_from_runs_groups_by_method(grid: tuple[Path, Path, str], tmp_path: Path) -> None:
    runs, _, _ = grid
    directories = sorted(runs.iterdir(), reverse=True)
    comparison = compare_runs(directories)
    assert comparison.labels == ["adam-lr", "adam"]
    assert [run.seed for run in comparison.method("adam").runs] == [0, 1]
    # Changes are listed against the first group, here adam-lr.
    assert comparison.method("adam").changes == {"optim.embed_lr_ratio": 1.0}
    assert comparison.method("adam-lr").changes == {}


def test_from_runs_cli(
    grid: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, _, _ = grid
    code, printed, _ = run_cli(capsys, "compare", "--from-runs", *map(str, sorted(runs.iterdir())),
                               "--out", str(tmp_path / "out"))
    assert code == 0
    assert "| adam | none | 2 |" in printed
    data = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [method["method"] for method in data["methods"]] == ["adam", "adam-lr"]


def test_plain_run_labelled_by_name(tmp_path: Path, micro_config: RunConfig) -> None:
    train(micro_config, tmp_path / "run", progress=False)
    assert load_run(tmp_path / "run").label == "micro"


def test_group_rejects_mixed_configs(tmp_path: Path, micro_config: RunConfig) -> None:
    short = apply_overrides(micro_config, ["train.steps=20"])
    train(short, tmp_path / "a", progress=False)
    train(apply_overrides(short, ["optim.lr=0.02", "model.init_seed=1"]), tmp_path / "b", progress=False)
    records = [load_run(tmp_path / "a"), load_run(tmp_path / "b")]
    with pytest.raises(ValueError, match="both labelled 'micro' but differ in optim.lr"):
        group_runs(records)


def test_group_rejects_repeated_seed(grid: tuple[Path, Path, str]) -> None:
    runs, _, _ = grid
    record = load_run(next(runs.iterdir()))
    with pytest.raises(ValueError, match="two runs with the same seed"):
        group_runs([record, dataclasses.replace(record, run_dir=Path("copy"))])


def synthetic_record(
    cfg: RunConfig, steps: tuple[int, ...], test: tuple[float, ...], seed: int = 0,
    test_step: int | None = None,
) -> RunRecord:
    return RunRecord(
        run_dir=Path("x"), label="m", seed=seed, config=cfg, budget=max(steps), train_step=None,
        test_step=test_step, final_test_acc=test[-1], wall_time_s=1.0, curve_steps=steps,
        curve_train_acc=test, curve_test_acc=test,
    )


def test_band_holds_stopped_run(micro_config: RunConfig) -> None:
    def record(steps: tuple[int, ...], test: tuple[float, ...]) -> RunRecord:
        return synthetic_record(micro_config, steps, test)

    band = accuracy_band([record((0, 10), (0.0, 1.0)), record((0, 10, 20, 30), (0.0, 0.5, 0.5, 0.7))])
    assert band.steps.tolist() == [0, 10, 20, 30]
    # The first run stopped at step 10 with accuracy 1.0, which it keeps at steps 20 and 30.
    np.testing.assert_allclose(band.test_mean, [0.0, 0.75, 0.75, 0.85])
    np.testing.assert_allclose(band.test_low, [0.0, 0.5, 0.5, 0.7])
    np.testing.assert_allclose(band.test_high, [0.0, 1.0, 1.0, 1.0])


def test_paired_steps_hand_example(micro_config: RunConfig) -> None:
    def runs(steps: list[int | None]) -> list[RunRecord]:
        return [synthetic_record(micro_config, (0, 10), (0.0, 1.0), seed=seed, test_step=step)
                for seed, step in enumerate(steps)]

    paired = paired_steps(runs([650, 1300, 800, None]), runs([1000, 1300, None, None]), "adam")
    # Seed 0 is earlier (650 < 1000), seed 2 reached the threshold where the reference never did,
    # seed 1 is a tie at 1300 and seed 3 never reached it with either method.
    assert (paired.faster, paired.slower, paired.ties, paired.n_seeds) == (2, 0, 2, 4)
    # Ratios exist for seeds 0 and 1 only: 650/1000 and 1300/1300.
    assert paired.median_ratio == pytest.approx((0.65 + 1.0) / 2, rel=1e-12)
    assert paired.reference == "adam"


def test_paired_steps_without_shared_seeds(micro_config: RunConfig) -> None:
    ours = [synthetic_record(micro_config, (0, 10), (0.0, 1.0), seed=1, test_step=10)]
    theirs = [synthetic_record(micro_config, (0, 10), (0.0, 1.0), seed=2, test_step=10)]
    assert paired_steps(ours, theirs, "adam") is None
    slower = paired_steps([synthetic_record(micro_config, (0, 10), (0.0, 0.5), seed=2)], theirs, "adam")
    assert (slower.faster, slower.slower, slower.ties, slower.median_ratio) == (0, 1, 0, None)


def test_plot_limit_follows_grok_steps(micro_config: RunConfig) -> None:
    grokked = synthetic_record(micro_config, (0, 100, 200), (0.0, 1.0, 1.0), seed=0, test_step=100)
    stuck = synthetic_record(micro_config, (0, 500, 1000), (0.0, 0.2, 0.5), seed=1)
    comparison = summarize({"m": [grokked, stuck]}, micro_config, "t", "micro")
    assert plot_step_limit(comparison) == 150.0
    alone = summarize({"m": [stuck]}, micro_config, "t", "micro")
    assert plot_step_limit(alone) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "adam", "sgd"], "method 'sgd' is unknown: choose one of"),
        (["--methods", "adam", "adam"], "method 'adam' is listed twice"),
        (["--seeds", "0"], "--seeds 0 is invalid: run at least one seed"),
        (["--seeds", "1", "optim.lr=-1"], "optim.lr=-1.0 is invalid"),
    ],
)
def test_grid_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "compare", "--preset", "tiny", "--runs", str(tmp_path), *argv)
    assert code == 2
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_from_runs_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "compare", "--from-runs", str(tmp_path / "empty"))
    assert code == 2
    assert "has no manifest.json: pass a run directory" in err

    code, _, err = run_cli(capsys, "compare", "--from-runs", str(tmp_path / "missing"))
    assert code == 2
    assert "missing not found" in err

    code, _, err = run_cli(capsys, "compare", "--from-runs", str(tmp_path / "empty"), "--seeds", "2")
    assert code == 2
    assert "--seeds cannot apply" in err


def test_from_runs_rejects_unfinished(tmp_path: Path, micro_config: RunConfig, capsys) -> None:
    train(apply_overrides(micro_config, ["train.steps=20"]), tmp_path / "run", progress=False)
    manifest = tmp_path / "run" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"completed"', '"interrupted"'))
    code, _, err = run_cli(capsys, "compare", "--from-runs", str(tmp_path / "run"))
    assert code == 2
    assert "is not a completed run (status 'interrupted')" in err
