"""The shared argument parsing of the benchmark scripts."""

from __future__ import annotations

import argparse

import pytest

from benchmarks._common import at_least, base_parser


def test_at_least_parses_integers() -> None:
    assert at_least(2)("2") == 2
    assert at_least(2)("113") == 113


@pytest.mark.parametrize(("text", "message"), [("1", "pass an integer >= 2"), ("x", "not an integer")])
def test_at_least_rejects_bad_values(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        at_least(2)(text)


def test_parser_rejects_zero_threads(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        base_parser("benchmark").parse_args(["--threads", "0"])
    assert "argument --threads: 0 is invalid: pass an integer >= 1" in capsys.readouterr().err
