"""The progress-measure benchmark's reference loops against the vectorised library functions."""

from __future__ import annotations

import pytest
import torch

from benchmarks.progress_measures import (
    library_key_frequencies,
    library_losses,
    planted_activations,
    planted_logits,
    reference_frequency_fractions,
    reference_key_frequencies,
    reference_losses,
    train_mask,
)
from grokinterp.analysis.fourier import neuron_frequency_fractions


@pytest.mark.parametrize("p", [7, 11, 12])
def test_reference_fractions_match_library(p: int) -> None:
    keys = [2, 3] if p < 12 else [2, 6]  # 6 is the Nyquist frequency of p = 12
    activations = planted_activations(p, 24, keys, torch.Generator().manual_seed(p))

    expected = reference_frequency_fractions(activations)
    # Both sides sum the same float64 squares in another order: rounding stays near 1e-15.
    torch.testing.assert_close(neuron_frequency_fractions(activations), expected, atol=1e-12, rtol=0)
    assert library_key_frequencies(activations) == reference_key_frequencies(expected)
    assert reference_key_frequencies(expected) == sorted(keys)
    # The planted dead neuron has no variance and gets no fraction.
    assert float(expected[0].abs().max()) == 0.0


@pytest.mark.parametrize("projection", ["joint", "per_output"])
@pytest.mark.parametrize("p", [7, 11, 12])
def test_reference_losses_match_library(p: int, projection: str) -> None:
    keys = [2] if p < 12 else [2, 6]  # 6 is the Nyquist frequency of p = 12
    generator = torch.Generator().manual_seed(p)
    logits = planted_logits(p, keys, generator)
    mask = train_mask(p, 0.5, generator)

    ours = library_losses(logits, keys, mask, projection)
    theirs = reference_losses(logits, keys, mask, projection)
    # Float64 cross-entropies of size ~1 from projections summed in another order.
    assert ours == pytest.approx(theirs, abs=1e-12)
    # The planted logits are built from the key frequencies, so keeping them must beat removing them.
    assert ours[0] < ours[1]
