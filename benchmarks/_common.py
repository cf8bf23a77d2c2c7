"""Helpers shared by the benchmark scripts: timing, matmul peak and a record of the machine.

Each script runs from the repository root as a module (``python -m benchmarks.<name>``), so it
imports the working tree's ``grokinterp``, and prints one JSON object to stdout. A typical
script builds its parser with :func:`base_parser`, applies ``--threads`` with
:func:`set_threads`, times its candidates with :func:`interleaved_timings`, and prints
:func:`environment_info` next to its figures with :func:`emit_json`.

Timings are wall-clock seconds from ``time.perf_counter``. On a GPU every timed block is
closed by a device synchronisation so that it measures finished work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata

import torch


def at_least(minimum: int) -> Callable[[str], int]:
    """Return an argparse ``type`` that parses an integer and rejects one below ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is invalid: pass an integer >= {minimum}")
        return value

    return parse


def base_parser(description: str) -> argparse.ArgumentParser:
    """Return an argument parser with the options every benchmark shares.

    ``--quick`` selects a short run, which checks that the script works but gives no
    measurement to quote. ``--threads`` sets the number of intra-op CPU threads of torch.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="short run with fewer steps and repetitions"
    )
    parser.add_argument(
        "--threads",
        type=at_least(1),
        default=None,
        help="number of torch intra-op CPU threads (default: torch's own choice)",
    )
    return parser


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU thread count; ``None`` keeps the current setting."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads={threads} is invalid: expected an integer >= 1.")
    torch.set_num_threads(threads)


def cpu_model() -> str:
    """Return the CPU model name from ``/proc/cpuinfo``, or ``platform.processor()`` elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_info(device: torch.device | str = "cpu") -> dict[str, object]:
    """Describe the software and hardware that produced a measurement.

    Returns:
        A JSON-serialisable dict: Python, platform, CPU model, logical CPU count, torch and
        transformer-lens versions, torch's intra-op and inter-op thread counts, the math
        libraries torch was built with, and the GPU name when ``device`` is a CUDA device.
    """
    device = torch.device(device)
    info: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "transformer_lens": _package_version("transformer-lens"),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device | str) -> None:
    """Wait until ``device`` has finished its queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(
    function: Callable[[], object], *, number: int, device: torch.device | str = "cpu"
) -> float:
    """Call ``function`` ``number`` times in a row and return the mean seconds per call."""
    if number < 1:
        raise ValueError(f"number={number} is invalid: expected an integer >= 1.")
    synchronize(device)
    start = time.perf_counter()
    for _ in range(number):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / number


def interleaved_timings(
    candidates: Mapping[str, Callable[[], object]],
    *,
    number: int,
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Time several candidates in alternation and return seconds per call of each repetition.

    Each repetition times ``number`` consecutive calls of every candidate. The order alternates
    between repetitions (forward, then reversed), so slow drift of a shared or throttled
    machine affects all candidates alike, and the paired repetitions allow per-repetition
    ratios. Every candidate first runs ``warmup`` untimed calls.

    Returns:
        ``{name: [seconds per call in repetition 0, 1, ...]}``, one list entry per repetition.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} is invalid: expected an integer >= 1.")
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()

    timings: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repeats):
        order = names if repetition % 2 == 0 else names[::-1]
        for name in order:
            timings[name].append(time_per_call(candidates[name], number=number, device=device))
    return timings


def summarize_rates(seconds_per_call: Sequence[float]) -> dict[str, object]:
    """Turn per-repetition seconds per call into calls per second: median, min, max, all values."""
    rates = [1.0 / seconds for seconds in seconds_per_call]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "per_repetition": rates,
    }


def matmul_flops(rows: int, inner: int, columns: int) -> int:
    """Return the floating-point operations of a ``[rows, inner] @ [inner, columns]`` product.

    Each output element takes ``inner`` multiplies and ``inner`` adds, so the count is
    ``2 · rows · inner · columns`` (the usual convention, which counts a fused multiply-add as 2).
    """
    return 2 * rows * inner * columns


def measure_matmul_peak(
    sizes: Sequence[int] = (512, 1024, 2048),
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    repeats: int = 5,
    min_seconds: float = 0.1,
) -> dict[str, object]:
    """Measure the ``torch.mm`` throughput of square products, the practical peak of a machine.

    For each size ``n`` the function multiplies two ``n × n`` matrices into a preallocated
    output. It calibrates the number of calls so that each timed block lasts at least
    ``min_seconds``, and takes the median of ``repeats`` blocks. The peak is the maximum over
    sizes, because small products cannot fill the machine and large ones may spill caches.

    Returns:
        ``{"peak_gflops": float, "gflops_by_size": {"n": float}, "dtype": str}``, in units of
        10⁹ floating-point operations per second (see :func:`matmul_flops`).
    """
    generator = torch.Generator().manual_seed(0)
    gflops_by_size: dict[str, float] = {}
    for size in sizes:
        left = torch.randn(size, size, generator=generator, dtype=dtype).to(device)
        right = torch.randn(size, size, generator=generator, dtype=dtype).to(device)
        output = torch.empty(size, size, dtype=dtype, device=device)

        def multiply(left=left, right=right, output=output) -> None:
            torch.mm(left, right, out=output)

        multiply()
        single = time_per_call(multiply, number=1, device=device)
        number = max(1, math.ceil(min_seconds / max(single, 1e-9)))
        seconds = statistics.median(
            time_per_call(multiply, number=number, device=device) for _ in range(repeats)
        )
        gflops_by_size[str(size)] = matmul_flops(size, size, size) / seconds / 1e9

    return {
        "peak_gflops": max(gflops_by_size.values()),
        "gflops_by_size": gflops_by_size,
        "dtype": str(dtype),
    }


def emit_json(result: Mapping[str, object]) -> None:
    """Print ``result`` to stdout as one indented JSON object."""
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
