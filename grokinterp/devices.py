"""Check a torch device string before any work starts on it."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device, argument: str = "device") -> torch.device:
    """Parse ``device`` and check that this torch build can run on it.

    Args:
        device: a torch device such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
        argument: the option or config field that gave ``device``, named in the error.

    Returns:
        The parsed device.

    Raises:
        ValueError: if ``device`` is not a torch device, or names CUDA or MPS where this
            machine has none, or a CUDA index beyond the devices present.
    """
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"{argument}={device!r} is invalid: use cpu, cuda or cuda:N ({error})."
        ) from error

    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"{argument}={device!r} is unavailable: this torch build finds no CUDA device; "
                "use cpu."
            )
        if target.index is not None and target.index >= count:
            raise ValueError(
                f"{argument}={device!r} is unavailable: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}."
            )
    elif target.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{argument}={device!r} is unavailable: MPS is not available; use cpu.")
    return target
