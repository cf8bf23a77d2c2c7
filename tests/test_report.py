"""Tests of the report: end to end on micro runs, the documented schema, and the Hessian path."""

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from grokinterp.analysis import trajectory as trajectory_module
from grokinterp.analysis.curvature import answer_loss_fn, block_curvature, model_curvature
from grokinterp.analysis.hessian import HessianProblem, dense_hessian, model_loss_fn
from grokinterp.analysis.trajectory import checkpoint_trajectory, select_steps
from grokinterp.checkpoint import read_metrics
from grokinterp.cli import main
from grokinterp.models import HookedMLP, MLPConfig
from grokinterp.models.transformer import make_transformer
from grokinterp.report import SECTIONS, ReportOptions, build_report
from grokinterp.tasks import TaskConfig, all_pairs
from grokinterp.training.config import apply_overrides
from grokinterp.training.loop import train
from grokinterp.training.presets import get_preset

DOCS = Path(__file__).resolve().parent.parent / "docs" / "report.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ReportOptions(max_checkpoints=3, hutchinson_samples=2)

MLP_OVERRIDES = [
    "task.p=11",
    "model.d_embed=8",
    "model.d_mlp=16",
    "train.batch_size=16",
    "train.steps=40",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "train.record_grad_steps=1,5",
]
TRANSFORMER_OVERRIDES = [
    "task.p=11",
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_head=8",
    "model.d_mlp=32",
    "train.steps=30",
    "train.eval_every=10",
    "train.checkpoint_every=10",
]


def train_run(root: Path, preset: str, overrides: list[str]) -> Path:
    cfg = dataclasses.replace(apply_overrides(get_preset(preset), overrides), name=f"micro-{preset}")
    train(cfg, root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("mlp"), "tiny", MLP_OVERRIDES)


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("transformer"), "tiny-transformer", TRANSFORMER_OVERRIDES)


# ---------------------------------------------------------------------------------------------
# The documented schema


def documented_keys() -> dict[str | None, list[str]]:
    """Read the key paths of docs/report.md: None for the top level, else the section name."""
    keys: dict[str | None, list[str]] = {}
    current: str | None = "preamble"
    for line in DOCS.read_text().splitlines():
        if line.startswith("## "):
            match = re.match(r"## Section `(\w+)`", line)
            if match:
                current = match.group(1)
            elif line == "## Top level":
                current = None
            else:
                current = "other"
            keys.setdefault(current, [])
        elif line.startswith("| `") and current not in ("preamble", "other"):
            keys[current].append(line.split("`")[1])
    return keys


def tree(paths: list[str]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for part in path.split("."):
            node = node.setdefault(part, {})
    return root


def check_against(value: Any, spec: dict[str, Any], where: str) -> None:
    """Check that every documented object level of ``value`` has exactly the documented keys."""
    if not spec or value is None:
        return
    list_specs = {name.removesuffix("[]"): child for name, child in spec.items() if name.endswith("[]")}
    if set(spec) == {"*"}:
        assert isinstance(value, dict), where
        for name, child in value.items():
            check_against(child, spec["*"], f"{where}.{name}")
        return
    assert isinstance(value, dict), f"{where} is {type(value).__name__}, documented as an object"
    names = {name.removesuffix("[]") for name in spec}
    assert set(value) == names, f"{where}: keys {sorted(value)} but documented {sorted(names)}"
    for name, child in spec.items():
        if name.endswith("[]"):
            for index, element in enumerate(value[name.removesuffix("[]")] or []):
                check_against(element, list_specs[name.removesuffix("[]")], f"{where}.{name}{index}")
        else:
            check_against(value[name], child, f"{where}.{name}")


def check_schema(report: dict[str, Any]) -> None:
    keys = documented_keys()
    # Objects documented without children (config, sections, timings_s) are not descended into;
    # the sections are checked one by one below.
    check_against(report, tree(keys[None]), "report")
    for section, data in report["sections"].items():
        if set(data) == {"skipped"}:
            assert isinstance(data["skipped"], str)
            continue
        check_against(data, tree(keys[section]), f"sections.{section}")


def test_docs_list_every_section():
    assert set(documented_keys()) - {None, "other", "preamble"} == set(SECTIONS)


def check_figures(out_dir: Path, report: dict[str, Any], expected: set[str]) -> None:
    stems = {Path(name).stem for name in report["figures"]}
    assert stems == expected
    for name in report["figures"]:
        assert (out_dir / name).read_bytes()[:8] == PNG_MAGIC, name


# ---------------------------------------------------------------------------------------------
# End to end


def test_mlp_run_report(mlp_run: Path, tmp_path: Path):
    report = build_report(mlp_run, tmp_path / "report", progress=False, options=FAST)
    data = json.loads((tmp_path / "report" / "report.json").read_text())

    assert list(data["sections"]) == list(SECTIONS)
    assert not [name for name, section in data["sections"].items() if "skipped" in section]
    check_schema(data)
    check_figures(
        tmp_path / "report",
        data,
        {
            "training_curves",
            "embedding_spectrum",
            "unembedding_spectrum",
            "singular_values",
            "neuron_frequencies",
            "token_dynamics",
            "gradient_heatmap",
            "hessian_eigenvalues",
            "trajectory",
        },
    )
    assert data["sections"]["accuracy"]["matches_manifest"] is True
    assert data["sections"]["dynamics"]["gradient_heatmap"]["steps"] == [1, 5]
    assert data["sections"]["coupling"]["update_balance"]["frequency_source"] == "token_stats"
    assert set(data["sections"]["hessian"]["blocks"]) == {"E", "W", "all"}
    assert data["sections"]["trajectory"]["steps"] == [0, 20, 40]

    markdown = (tmp_path / "report" / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section.capitalize()}" in markdown
    summary = report.summary()
    for label in ("accuracy", "hessian", "verdict", "coupling", "time"):
        assert label in summary


def test_transformer_run_report(transformer_run: Path, tmp_path: Path):
    build_report(transformer_run, tmp_path / "report", progress=False, options=FAST)
    data = json.loads((tmp_path / "report" / "report.json").read_text())

    assert not [name for name, section in data["sections"].items() if "skipped" in section]
    check_schema(data)
    check_figures(
        tmp_path / "report",
        data,
        {
            "training_curves",
            "embedding_spectrum",
            "unembedding_spectrum",
            "singular_values",
            "neuron_frequencies",
            "token_dynamics",
            "hessian_eigenvalues",
            "trajectory",
        },
    )
    coupling = data["sections"]["coupling"]
    assert coupling["W_name"] == "blocks.0.attn.W_V"
    assert coupling["gradients"]["alignment_E"] is None
    assert data["sections"]["progress"]["hook"].startswith("blocks.0.mlp.hook_post")
    assert "record_grad_steps" in data["sections"]["dynamics"]["gradient_heatmap"]["missing"]


def test_checkpoint_report_skips_trajectory(mlp_run: Path, tmp_path: Path):
    checkpoint = mlp_run / "checkpoints" / "step_000020.safetensors"
    build_report(checkpoint, tmp_path / "report", progress=False, options=FAST, sections=["history", "trajectory"])
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["step"] == 20
    assert "skipped" in data["sections"]["trajectory"]
    assert data["sections"]["history"]["curves"]["step"][-1] == 40


def test_numeric_mlp_report(tmp_path: Path):
    run_dir = train_run(tmp_path, "tiny", [*MLP_OVERRIDES, "model.input_mode=numeric"])
    build_report(run_dir, tmp_path / "report", progress=False, options=FAST)
    data = json.loads((tmp_path / "report" / "report.json").read_text())

    check_schema(data)
    sections = data["sections"]
    assert sections["coupling"]["E"] is None
    assert sections["coupling"]["gradients"] is None
    assert sections["fourier"]["embedding_spectrum"] is None
    assert "skipped" in sections["dynamics"]
    assert set(sections["hessian"]["blocks"]) == {"W", "all"}


def test_other_operation_report(tmp_path: Path):
    run_dir = train_run(tmp_path, "tiny", [*MLP_OVERRIDES, "task.op=multiply"])
    build_report(run_dir, tmp_path / "report", progress=False, options=FAST, sections=["progress"])
    progress = json.loads((tmp_path / "report" / "report.json").read_text())["sections"]["progress"]
    assert progress["restricted_loss"] is None
    assert "defined for addition" in progress["not_applicable"]


def test_cli_analyze_options(mlp_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = main(
        [
            "analyze", str(mlp_run), "--out", str(tmp_path / "cli"), "--quiet", "--sections",
            "hessian", "trajectory", "--max-checkpoints", "2", "--hessian-dtype", "float64",
            "--hessian-k", "2", "--trace-samples", "0", "--threads", "1",
        ]
    )
    assert code == 0
    assert "verdict" in capsys.readouterr().out
    data = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert data["options"]["hessian_dtype"] == "float64"
    assert data["sections"]["trajectory"]["steps"] == [0, 40]
    assert len(data["sections"]["hessian"]["blocks"]["all"]["eigenvalues"]) == 3
    assert data["sections"]["hessian"]["blocks"]["all"]["trace"] is None


def test_cli_help_lists_sections(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    help_text = capsys.readouterr().out
    for section in SECTIONS:
        assert section in help_text


def test_cli_rejects_bad_options(mlp_run: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["analyze", str(mlp_run), "--threads", "0"]) == 2
    assert "--threads 0 is invalid" in capsys.readouterr().err
    assert main(["analyze", str(mlp_run), "--max-checkpoints", "1"]) == 2
    assert "max_checkpoints=1 is invalid" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The Hessian path of the report, against dense Hessians


def small_mlp(input_mode: str = "embed") -> tuple[HookedMLP, torch.Tensor, torch.Tensor]:
    task = TaskConfig(p=5)
    model = HookedMLP(MLPConfig(d_vocab=7, n_ctx=4, d_out=5, input_mode=input_mode, d_embed=4, d_mlp=6), seed=1)
    pairs = all_pairs(task)
    return model.double(), pairs.tokens, pairs.labels


def small_transformer() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = make_transformer(5, d_model=4, n_heads=1, d_head=4, d_mlp=8, seed=2, dtype=torch.float64)
    pairs = all_pairs(TaskConfig(p=5, layout="a_b_eq"))
    return model, pairs.tokens, pairs.labels


@pytest.mark.parametrize("build", [small_mlp, lambda: small_mlp("onehot"), lambda: small_mlp("numeric"), small_transformer])
def test_answer_loss_matches_model_loss(build):
    model, tokens, labels = build()
    params = {name: value.detach() for name, value in model.named_parameters()}
    fast, reference = answer_loss_fn(model), model_loss_fn(model)
    # Different summation order only: float64 rounding.
    assert math.isclose(float(fast(params, tokens, labels)), float(reference(params, tokens, labels)), rel_tol=1e-12)

    vector = torch.randn(sum(p.numel() for p in params.values()), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hvp_fast = HessianProblem(fast, params, tokens, labels).hvp(vector)
    hvp_reference = HessianProblem(reference, params, tokens, labels).hvp(vector)
    assert torch.allclose(hvp_fast, hvp_reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("build", [small_mlp, small_transformer])
def test_lanczos_matches_dense_at_both_ends(build):
    model, tokens, labels = build()
    curvature = model_curvature(
        model, tokens, labels, k=2, k_smallest=2, tol=1e-12, tol_smallest=1e-12, dtype=torch.float64, trace_samples=0
    )
    params = {name: value.detach() for name, value in model.named_parameters()}
    for label, block in curvature.items():
        dense = dense_hessian(model_loss_fn(model), params, tokens, labels, block=block.names, dtype=torch.float64)
        exact = torch.linalg.eigvalsh(dense)
        computed = torch.tensor(block.eigenvalues, dtype=torch.float64)
        scale = float(exact.abs().max())
        # The largest eigenvalues to 1e-6 relative each. The smallest lie near 0, where a
        # relative error means nothing, so they are compared to 1e-6 of the spectral scale.
        assert torch.allclose(computed[2:], exact[-2:], rtol=1e-6, atol=0), label
        assert torch.allclose(computed[:2], exact[:2], rtol=0, atol=1e-6 * scale), label
        assert block.converged, label


@pytest.mark.parametrize("build", [small_mlp, small_transformer])
def test_single_lanczos_run_matches_dense(build):
    # The trajectory's setting: k = 1 per end from one Lanczos run. A repeated eigenvalue shows
    # once, which does not matter for k = 1, so λ_min and λ_max must match the dense spectrum.
    model, tokens, labels = build()
    curvature = model_curvature(
        model, tokens, labels, k=1, tol=1e-10, tol_smallest=1e-10, dtype=torch.float64,
        trace_samples=0, solver="lanczos",
    )
    params = {name: value.detach() for name, value in model.named_parameters()}
    for label, block in curvature.items():
        dense = dense_hessian(model_loss_fn(model), params, tokens, labels, block=block.names, dtype=torch.float64)
        exact = torch.linalg.eigvalsh(dense)
        scale = float(exact.abs().max())
        lambda_min, lambda_max = block.eigenvalues
        # Residuals below 1e-10 · scale bound the eigenvalue errors by the same amount; 1e-8 of
        # the scale leaves room for rounding in the dense eigensolver.
        assert abs(lambda_max - float(exact[-1])) <= 1e-8 * scale, label
        assert abs(lambda_min - float(exact[0])) <= 1e-8 * scale, label
        assert block.converged, label


def test_saddle_of_linear_network_at_zero():
    # f = mean over x of (w u x - y)^2 / 2 at u = w = 0 is a critical point with Hessian
    # [[0, -m], [-m, 0]], m = mean(x y) = 3: the textbook saddle of a two-layer linear network.
    # Two extra coordinates with f += |z|^2 (curvature 2) give ARPACK room for its Krylov space.
    x = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    y = torch.tensor([2.0, 3.0, -1.0], dtype=torch.float64)

    def loss_fn(params, inputs, labels):
        network = 0.5 * ((params["w"] * params["u"] * inputs - labels) ** 2).mean()
        return network + (params["z"] ** 2).sum()

    zeros = {name: torch.zeros(size, dtype=torch.float64) for name, size in (("u", 1), ("w", 1), ("z", 2))}
    problem = HessianProblem(loss_fn, zeros, x, y)
    result = block_curvature(problem, "all", k=1, tol=1e-12, tol_smallest=1e-12)

    assert result.verdict.verdict == "saddle"
    assert result.eigenvalues == pytest.approx((-3.0, 3.0), abs=1e-9)
    assert result.grad_norm == 0.0


def test_convex_loss_is_minimum():
    A = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64))

    def loss_fn(params, inputs, labels):
        return 0.5 * params["x"] @ A @ params["x"]

    problem = HessianProblem(loss_fn, {"x": torch.zeros(5, dtype=torch.float64)}, torch.zeros(1), torch.zeros(1))
    result = block_curvature(problem, "x", k=2, tol=1e-12, tol_smallest=1e-12)
    assert result.verdict.verdict == "minimum"
    assert result.eigenvalues == pytest.approx((0.25, 2.0, 3.0), abs=1e-10)


class NoisyProblem(HessianProblem):
    """A quadratic loss whose Hessian-vector products carry noise, like float32 near zero loss."""

    def __init__(self, n: int, noise: float) -> None:
        curvatures = torch.linspace(-0.5, 1.0, n, dtype=torch.float64)

        def loss_fn(params, inputs, labels):
            return 0.5 * (curvatures * params["x"] ** 2).sum()

        super().__init__(loss_fn, {"x": torch.zeros(n, dtype=torch.float64)}, torch.zeros(1), torch.zeros(1))
        self.curvatures = curvatures
        self.noise = noise
        self.generator = torch.Generator().manual_seed(0)

    def hvp(self, vector: torch.Tensor) -> torch.Tensor:
        vector = vector.to(torch.float64)
        noise = torch.randn(self.size, generator=self.generator, dtype=torch.float64)
        return self.curvatures * vector + self.noise * noise * vector.norm()

    __call__ = hvp


def test_noisy_products_fail_residual_check():
    clean = block_curvature(NoisyProblem(50, 0.0), "x", k=1, tol=1e-6, tol_smallest=1e-6)
    noisy = block_curvature(NoisyProblem(50, 1e-3), "x", k=1, tol=1e-6, tol_smallest=1e-6)
    assert clean.eigenvalues == pytest.approx((-0.5, 1.0), abs=1e-9)
    assert clean.converged
    assert not noisy.converged


# ---------------------------------------------------------------------------------------------
# Trajectory


def test_trajectory_points(mlp_run: Path):
    trajectory = checkpoint_trajectory(mlp_run, max_checkpoints=3, hessian=False)
    assert [point.step for point in trajectory.points] == [0, 20, 40]
    assert trajectory.available_steps == (0, 10, 20, 30, 40)

    # Step 0 is the initialisation rebuilt from the config; it must reproduce the first
    # evaluation of the run exactly.
    first = read_metrics(mlp_run)[0]
    assert first["step"] == 0
    assert trajectory.points[0].train_acc == first["train_acc"]
    assert math.isclose(trajectory.points[0].train_loss, first["train_loss"], rel_tol=1e-6)
    assert trajectory.points[0].lambda_max is None


def test_select_steps_keeps_ends():
    assert select_steps(range(0, 1001, 100), 4) == [0, 300, 700, 1000]
    assert select_steps([5, 1, 3], 10) == [1, 3, 5]
    with pytest.raises(ValueError, match="max_count=1 is invalid"):
        select_steps([1, 2], 1)


def test_trajectory_docstring_examples():
    import doctest

    assert doctest.testmod(trajectory_module).failed == 0
