"""Checkpointable state of the training components: flat dicts of tensors and plain values.

Every stateful training component (gradient filters, learning-rate controllers, token statistics,
batch samplers) returns its state from ``state_dict()`` as one flat ``dict`` with string keys. Each
value is either a tensor or a JSON value: ``int``, ``float``, ``bool``, ``str``, ``None`` or a list
of these. :func:`split_state` separates the two kinds so that the tensors can go into
a safetensors file and the rest into JSON; :func:`join_state` puts them back together for
``load_state_dict()``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

PlainValue = int | float | bool | str | None | list
StateDict = dict[str, Tensor | PlainValue]


def split_state(state: StateDict) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``state`` into ``(tensors, plain)`` for safetensors and JSON respectively.

    Tensors are made contiguous because safetensors stores only contiguous tensors.
    """
    tensors = {}
    plain = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            tensors[key] = value.detach().contiguous()
        else:
            plain[key] = value
    return tensors, plain


def join_state(tensors: dict[str, Tensor], plain: dict[str, Any]) -> StateDict:
    """Merge the two halves returned by :func:`split_state` into one state dict."""
    overlap = sorted(set(tensors) & set(plain))
    if overlap:
        raise ValueError(
            f"join_state got the keys {overlap} in both tensors and plain: each key must appear "
            "in exactly one of them, as split_state writes them."
        )
    return {**plain, **tensors}


def check_state_keys(owner: str, state: StateDict, required: set[str]) -> None:
    """Raise ValueError naming ``owner`` when ``state`` lacks one of the ``required`` keys."""
    missing = sorted(required - set(state))
    if missing:
        raise ValueError(
            f"{owner}.load_state_dict got a state without the keys {missing}: pass the dict "
            f"returned by {owner}.state_dict()."
        )


def check_same_setting(owner: str, state: StateDict, name: str, expected: object) -> None:
    """Raise ValueError when the saved hyperparameter ``name`` differs from the current one.

    Resuming with different hyperparameters would continue a different run than the one saved,
    so a mismatch is rejected rather than silently adopted.
    """
    saved = state[name]
    if saved != expected:
        raise ValueError(
            f"{owner}.load_state_dict got {name}={saved!r}, but this {owner} was built with "
            f"{name}={expected!r}: build it with the saved value to resume the saved run."
        )
