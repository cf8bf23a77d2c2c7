"""Device strings are checked before training or analysis starts."""

from __future__ import annotations

import pytest
import torch

from grokinterp.devices import resolve_device


def test_cpu_accepted() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_device_rejected() -> None:
    with pytest.raises(ValueError, match=r"train.device='gpu' is invalid: use cpu, cuda or cuda:N"):
        resolve_device("gpu", "train.device")


def test_cuda_without_devices_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda' is unavailable: .* no CUDA device; use cpu"):
        resolve_device("cuda")


def test_cuda_index_beyond_count_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device='cuda:2' is unavailable: .* 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_present_cuda_index_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
