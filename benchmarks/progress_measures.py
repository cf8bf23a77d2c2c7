"""Benchmark the vectorised progress measures against per-neuron, per-frequency Python loops.

Run from the repository root::

    python -m benchmarks.progress_measures [--quick] [--threads N] [--p 113] [--d-mlp 512]

Setup: activations ``[p, p, d_mlp]`` and logits ``[p, p, p]`` over every input pair (a, b) with
planted Fourier structure, drawn with a fixed seed (:func:`planted_activations`,
:func:`planted_logits`): most neurons are a product of one key frequency's cosines in a and b
plus noise, and the logits are a sum of ``cos(w_k (a + b − c))`` over the key frequencies plus
noise. Two tasks are timed, in float64:

- key-frequency detection: ``neuron_frequency_fractions`` and ``neuron_key_frequencies`` of
  ``grokinterp.analysis.fourier`` against :func:`reference_frequency_fractions` and
  :func:`reference_key_frequencies`, which loop over neurons and frequencies and project each
  neuron's grid on the eight basis functions of each frequency;
- restricted and excluded loss on the training pairs, with both projections, against
  :func:`reference_restricted_logits`, which loops over key frequencies (and outputs, for the
  per-output projection) and projects on one full-grid direction at a time.

The script checks that both sides agree (``torch.testing.assert_close``) before it times them,
alternates the two sides within each repetition (20 calls per measurement for the losses), and
prints one JSON object with the medians and the speed-ups.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from benchmarks._common import (
    at_least,
    base_parser,
    emit_json,
    environment_info,
    interleaved_timings,
    set_threads,
)
from grokinterp.analysis.fourier import (
    key_frequency_losses,
    neuron_frequency_fractions,
    neuron_key_frequencies,
)

TARGET_SPEEDUP = 50.0
KEY_FREQUENCIES = (14, 35, 41, 52)
THRESHOLD = 0.85
MIN_SHARE = 0.05
LOSS_CALLS_PER_MEASUREMENT = 20


# ---------------------------------------------------------------------------------------------
# Inputs with planted Fourier structure


def planted_activations(
    p: int, d_mlp: int, key_frequencies: Sequence[int], generator: torch.Generator
) -> torch.Tensor:
    """Return ReLU-free activations ``[p, p, d_mlp]``: 90 % of neurons follow one key frequency.

    Neuron ``n`` of the structured ones is ``cos(w_k a + φ) cos(w_k b + ψ)`` plus Gaussian noise of
    standard deviation 0.1, with its frequency ``k`` cycling through ``key_frequencies`` and random
    phases. The other neurons are pure noise, and neuron 0 is constant (a dead neuron).
    """
    x = torch.arange(p, dtype=torch.float64)
    activations = 0.1 * torch.randn(p, p, d_mlp, generator=generator, dtype=torch.float64)
    n_structured = int(0.9 * d_mlp)
    for neuron in range(1, n_structured):
        frequency = key_frequencies[neuron % len(key_frequencies)]
        phases = 2 * math.pi * torch.rand(2, generator=generator, dtype=torch.float64)
        angle = 2 * math.pi * frequency * x / p
        activations[:, :, neuron] += torch.outer(
            torch.cos(angle + phases[0]), torch.cos(angle + phases[1])
        )
    activations[:, :, 0] = 1.0
    return activations


def planted_logits(
    p: int, key_frequencies: Sequence[int], generator: torch.Generator
) -> torch.Tensor:
    """Return logits ``[p, p, p]``: ``Σ_k 3 cos(w_k (a + b − c))`` plus Gaussian noise of 0.5."""
    x = torch.arange(p, dtype=torch.float64)
    phase = x[:, None, None] + x[None, :, None] - x[None, None, :]
    logits = 0.5 * torch.randn(p, p, p, generator=generator, dtype=torch.float64)
    for frequency in key_frequencies:
        logits += 3 * torch.cos(2 * math.pi * frequency * phase / p)
    return logits


def train_mask(p: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Return a random mask ``[p, p]`` of the training pairs, ``fraction`` of all pairs."""
    order = torch.randperm(p * p, generator=generator)[: int(fraction * p * p)]
    mask = torch.zeros(p * p, dtype=torch.bool)
    mask[order] = True
    return mask.view(p, p)


# ---------------------------------------------------------------------------------------------
# Reference loops


def _frequency_functions(p: int, frequency: int) -> list[torch.Tensor]:
    """The eight functions on the p × p grid that frequency k explains, unnormalised."""
    x = torch.arange(p, dtype=torch.float64)
    angle = 2 * math.pi * frequency * x / p
    ones = torch.ones(p, dtype=torch.float64)
    waves = [torch.cos(angle), torch.sin(angle)]
    functions = [torch.outer(wave, ones) for wave in waves]
    functions += [torch.outer(ones, wave) for wave in waves]
    functions += [torch.outer(wave_a, wave_b) for wave_a in waves for wave_b in waves]
    # The sine of the Nyquist frequency (even p) is identically zero and explains nothing.
    return [function for function in functions if float(function.pow(2).sum()) > 0.5]


def reference_frequency_fractions(activations: torch.Tensor) -> torch.Tensor:
    """Compute the fraction of each neuron's variance per frequency, one neuron and frequency at a time.

    The eight functions of frequency k are mutually orthogonal and orthogonal to constants, so
    the variance they explain is ``Σ_f <grid, f>² / <f, f>``; a neuron's variance is
    ``‖grid − mean‖²``. A neuron whose variance is at most float64 eps times its energy gets 0.
    """
    p, _, d_mlp = activations.shape
    functions = {k: _frequency_functions(p, k) for k in range(1, p // 2 + 1)}
    eps = torch.finfo(activations.dtype).eps
    fractions = torch.zeros(d_mlp, p // 2, dtype=activations.dtype)
    for neuron in range(d_mlp):
        grid = activations[:, :, neuron]
        variance = float((grid - grid.mean()).pow(2).sum())
        if variance <= eps * float(grid.pow(2).sum()):
            continue
        for frequency in range(1, p // 2 + 1):
            explained = 0.0
            for function in functions[frequency]:
                explained += float((grid * function).sum()) ** 2 / float(function.pow(2).sum())
            fractions[neuron, frequency - 1] = explained / variance
    return fractions


def reference_key_frequencies(
    fractions: torch.Tensor, threshold: float = THRESHOLD, min_share: float = MIN_SHARE
) -> list[int]:
    """Count the neurons per dominant frequency in a loop and keep the frequent frequencies."""
    counts: dict[int, int] = {}
    for row in fractions.tolist():
        best = max(range(len(row)), key=lambda column: row[column])
        if row[best] >= threshold:
            counts[best + 1] = counts.get(best + 1, 0) + 1
    clustered = sum(counts.values())
    return sorted(k for k, count in counts.items() if count >= min_share * clustered)


def reference_restricted_logits(
    logits: torch.Tensor, key_frequencies: Sequence[int], projection: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (restricted, excluded) logits, projecting on one direction at a time.

    ``"joint"``: the directions ``cos(w_k(a + b − c))`` and ``sin(w_k(a + b − c))`` on the whole
    grid. ``"per_output"``: ``cos(w_k(a + b))`` and ``sin(w_k(a + b))`` on the (a, b) grid of each
    output c separately. Both sets are orthogonal, so the projection is the sum of the
    projections on each direction.
    """
    p = logits.shape[0]
    x = torch.arange(p, dtype=torch.float64)
    mean = logits.mean(dim=-1, keepdim=True)
    centred = logits - mean
    projected = torch.zeros_like(logits)
    for frequency in key_frequencies:
        w = 2 * math.pi * frequency / p
        if projection == "joint":
            phase = x[:, None, None] + x[None, :, None] - x[None, None, :]
            for direction in (torch.cos(w * phase), torch.sin(w * phase)):
                norm = float(direction.pow(2).sum())
                if norm > 0.5:
                    projected += float((centred * direction).sum()) / norm * direction
        else:
            phase = x[:, None] + x[None, :]
            for c in range(p):
                for direction in (torch.cos(w * phase), torch.sin(w * phase)):
                    norm = float(direction.pow(2).sum())
                    if norm > 0.5:
                        coefficient = float((centred[:, :, c] * direction).sum()) / norm
                        projected[:, :, c] += coefficient * direction
    return mean + projected, logits - projected


def reference_losses(
    logits: torch.Tensor, key_frequencies: Sequence[int], mask: torch.Tensor, projection: str
) -> tuple[float, float]:
    """Return the (restricted, excluded) cross-entropy on the pairs of ``mask``."""
    p = logits.shape[0]
    x = torch.arange(p)
    labels = (x[:, None] + x[None, :]) % p
    restricted, excluded = reference_restricted_logits(logits, key_frequencies, projection)
    return (
        float(F.cross_entropy(restricted[mask], labels[mask])),
        float(F.cross_entropy(excluded[mask], labels[mask])),
    )


# ---------------------------------------------------------------------------------------------
# The library's vectorised versions, as the benchmark times them


def library_key_frequencies(activations: torch.Tensor) -> list[int]:
    """Return the key frequencies from ``grokinterp.analysis.fourier``, as the benchmark times them.

    ``neuron_key_frequencies`` computes the frequency fractions itself, so the timed work matches
    the reference's: fractions, then clusters and counts.
    """
    return neuron_key_frequencies(activations, threshold=THRESHOLD, min_share=MIN_SHARE)


def library_losses(
    logits: torch.Tensor, key_frequencies: Sequence[int], mask: torch.Tensor, projection: str
) -> tuple[float, float]:
    """Return the (restricted, excluded) cross-entropy from ``grokinterp.analysis.fourier``.

    ``key_frequency_losses`` is what ``progress_measures`` calls: one projection for both losses.
    """
    keys = list(key_frequencies)
    losses = key_frequency_losses(logits, keys, pair_mask=mask, projection=projection)
    return float(losses.restricted), float(losses.excluded)


# ---------------------------------------------------------------------------------------------
# Timing


def time_pair(
    vectorised: Callable[[], object],
    loop: Callable[[], object],
    repeats: int,
    number: int,
    warmup: int = 1,
) -> dict[str, object]:
    """Time both sides in alternation; return seconds per call and the median paired speed-up.

    Each repetition times ``number`` consecutive calls of each side after ``warmup`` untimed
    calls, so that a call of a few milliseconds is not measured alone, where the allocator's
    first page faults and the timer's resolution would dominate it.
    """
    seconds = interleaved_timings(
        {"vectorised": vectorised, "loop": loop}, number=number, repeats=repeats, warmup=warmup
    )
    ratios = [lo / ve for lo, ve in zip(seconds["loop"], seconds["vectorised"], strict=True)]
    return {
        "seconds": seconds,
        "calls_per_measurement": number,
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "speedup": statistics.median(ratios),
        "speedup_per_repetition": ratios,
        "target": TARGET_SPEEDUP,
        "target_met": statistics.median(ratios) >= TARGET_SPEEDUP,
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--p",
        type=at_least(2),
        default=None,
        help="modulus (default: 113, quick: 31)",
    )
    parser.add_argument(
        "--d-mlp",
        type=at_least(1),
        default=None,
        help="neurons (default: 512, quick: 64)",
    )
    parser.add_argument(
        "--repeats", type=at_least(1), default=None, help="timed repetitions (default: 5, quick: 2)"
    )
    args = parser.parse_args()
    set_threads(args.threads)
    p = args.p if args.p is not None else (31 if args.quick else 113)
    d_mlp = args.d_mlp if args.d_mlp is not None else (64 if args.quick else 512)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    planted = [k for k in KEY_FREQUENCIES if k <= p // 2] or [1]

    load_before = os.getloadavg()
    generator = torch.Generator().manual_seed(0)
    activations = planted_activations(p, d_mlp, planted, generator)
    logits = planted_logits(p, planted, generator)
    mask = train_mask(p, 0.3, generator)

    # Both sides must agree before either is timed.
    fractions = neuron_frequency_fractions(activations)
    keys = library_key_frequencies(activations)
    expected_fractions = reference_frequency_fractions(activations)
    torch.testing.assert_close(fractions, expected_fractions, rtol=1e-9, atol=1e-12)
    expected_keys = reference_key_frequencies(expected_fractions)
    if keys != expected_keys:
        raise AssertionError(f"key frequencies differ: library {keys}, reference {expected_keys}")
    differences = {"frequency_fractions": float((fractions - expected_fractions).abs().max())}
    losses = {}
    for projection in ("joint", "per_output"):
        ours = torch.tensor(library_losses(logits, keys, mask, projection), dtype=torch.float64)
        theirs = torch.tensor(reference_losses(logits, keys, mask, projection), dtype=torch.float64)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
        differences[f"losses_{projection}"] = float((ours - theirs).abs().max())
        losses[projection] = {"restricted": float(ours[0]), "excluded": float(ours[1])}

    timings = {
        "key_frequencies": time_pair(
            lambda: library_key_frequencies(activations),
            lambda: reference_key_frequencies(reference_frequency_fractions(activations)),
            repeats,
            number=1,
            warmup=0,  # the loop takes tens of seconds, and both sides were run once above
        ),
    }
    for projection in ("joint", "per_output"):
        timings[f"losses_{projection}"] = time_pair(
            lambda projection=projection: library_losses(logits, keys, mask, projection),
            lambda projection=projection: reference_losses(logits, keys, mask, projection),
            repeats,
            number=LOSS_CALLS_PER_MEASUREMENT,
        )

    emit_json(
        {
            "benchmark": "progress_measures",
            "setup": {
                "p": p,
                "d_mlp": d_mlp,
                "dtype": "float64",
                "planted_key_frequencies": planted,
                "detected_key_frequencies": keys,
                "train_fraction": 0.3,
                "repetitions": repeats,
                "quick": args.quick,
            },
            "environment": environment_info(),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "losses": losses,
            "max_abs_difference_to_reference": differences,
            "timings": timings,
        }
    )


if __name__ == "__main__":
    main()
