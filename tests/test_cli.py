from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from grokinterp.cli import main

MICRO = ["task.p=11", "model.d_embed=8", "model.d_mlp=16", "train.batch_size=16", "train.steps=40",
         "train.eval_every=10", "train.checkpoint_every=20"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_then_analyze(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--preset", "tiny", "--out", str(run_dir), "--quiet", *MICRO)
    assert code == 0
    assert "grokking" in out
    code, out, _ = run_cli(capsys, "analyze", str(run_dir), "--quiet")
    assert code == 0
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert {"accuracy", "fourier", "coupling"} <= set(report["sections"])
    assert report["sections"]["accuracy"]["matches_manifest"] is True
    assert (run_dir / "report" / "report.md").is_file()
    assert (run_dir / "report" / "figures" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_single_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_cli(capsys, "train", "--preset", "tiny", "--out", str(run_dir), "--quiet", *MICRO)
    checkpoint = run_dir / "checkpoints" / "step_000020.safetensors"
    code, out, _ = run_cli(capsys, "analyze", str(checkpoint), "--out", str(tmp_path / "rep"), "--quiet",
                           "--sections", "accuracy", "coupling")
    assert code == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["step"] == 20
    assert set(report["sections"]) == {"accuracy", "coupling"}


def test_seed_sets_all_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_cli(capsys, "train", "--preset", "tiny", "--out", str(run_dir), "--seed", "7", "--steps", "20", "--quiet", *MICRO)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["seeds"] == {"data": 7, "init": 7, "batch": 7}
    assert manifest["final"]["step"] == 20


def test_resume_flag_continues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_cli(capsys, "train", "--preset", "tiny", "--out", str(run_dir), "--steps", "20", "--quiet", *MICRO)
    code, out, _ = run_cli(capsys, "train", "--preset", "tiny", "--out", str(run_dir), "--steps", "40",
                           "--resume", "--quiet", *MICRO)
    assert code == 0
    assert "steps      40" in out


BAD_INPUTS = [
    (["train", "--preset", "nope"], "preset 'nope' is unknown: choose one of"),
    (["train", "task.op=power"], "task.op='power' is not a known operation"),
    (["train", "task.p=1"], "task.p=1 is invalid"),
    (["train", "task.test_fraction=1.5"], "task.test_fraction=1.5 is invalid: it must lie in (0, 1)"),
    (["train", "task.test_fraction=0.6", "task.train_fraction=0.6"], "exceeds 1: lower one of them"),
    (["train", "--preset", "tiny", "train.batch_size=100000"], "train.batch_size=100000 exceeds the"),
    (["train", "optim.lr=abc"], "override optim.lr='abc' is invalid: expected a value of type float"),
    (["train", "optim.colour=red"], "override key 'optim.colour' is unknown"),
    (["train", "lr=0.1"], "override key 'lr' is invalid: write section.field"),
    (["train", "tiny"], "To start from the preset 'tiny', pass --preset tiny."),
    (["train", "--preset", "tiny", "train.device=gpu"], "train.device='gpu' is invalid: use cpu, cuda or cuda:N"),
    (["train", "task.op=divide", "task.p=12"], "needs a prime modulus"),
    (["train", "--preset", "tiny", "model.input_mode=numeric", "optim.embed_lr_ratio=10"], "has no embedding"),
    (["analyze", "/nonexistent/run"], "not found: pass a run directory or a .safetensors checkpoint"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS)
def test_bad_input_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *argv, *(["--out", str(tmp_path / "r")] if argv[0] == "train" else []))
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("grokinterp: error: ")
    assert message in err
    assert "Traceback" not in err


def test_corrupt_and_pickle_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01garbage")
    (tmp_path / "weights.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    for name in ("junk.safetensors", "weights.pt"):
        code, _, err = run_cli(capsys, "analyze", str(tmp_path / name))
        assert code == 2
        assert "is not a valid safetensors checkpoint" in err
        assert err.count("\n") == 1


def test_existing_run_and_missing_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_cli(capsys, "train", "--preset", "tiny", "--out", str(run_dir), "--quiet", *MICRO)
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--out", str(run_dir), "--quiet", *MICRO)
    assert code == 2
    assert "already contains a run: pass --resume" in err
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--out", str(tmp_path / "empty"), "--resume", *MICRO)
    assert code == 2
    assert "drop --resume to start a new run" in err


def test_console_script_help() -> None:
    for argv in (["--help"], ["train", "--help"], ["analyze", "--help"]):
        result = subprocess.run([sys.executable, "-m", "grokinterp.cli", *argv], capture_output=True, text=True)
        assert result.returncode == 0
        assert "usage: grokinterp" in result.stdout
