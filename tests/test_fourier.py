"""Tests of grokinterp.analysis.fourier against the mathematics of the real Fourier basis."""

import doctest
import math

import pytest
import torch

from grokinterp.analysis import fourier
from grokinterp.analysis.fourier import (
    UNCLUSTERED,
    basis_frequencies,
    basis_labels,
    cluster_neurons,
    embedding_spectrum,
    excluded_logits,
    excluded_loss,
    fourier_basis,
    fourier_transform_2d,
    gini,
    grid_cross_entropy,
    inverse_participation_ratio,
    key_frequencies,
    key_frequency_losses,
    neuron_frequency_fractions,
    neuron_key_frequencies,
    residue_spectrum,
    restricted_logits,
    restricted_loss,
    spectrum_sparsity,
)

# Float64 rounding over sums of a few hundred terms of size ~1 stays far below this.
EXACT = 1e-12


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # These tensors are tiny, so intra-op threads only add overhead, and on a loaded machine
    # idle OpenMP threads spin: on 2 busy cores this file ran 30 times slower with 2 threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def angle(k, x, p):
    return 2 * math.pi * k * x / p


def residues(p):
    return torch.arange(p, dtype=torch.float64)


def addition_phase(p):
    """Return the grid a + b - c over [a, b, c], as float64."""
    x = residues(p)
    return x[:, None, None] + x[None, :, None] - x[None, None, :]


# ---------------------------------------------------------------------------------------------
# Basis


@pytest.mark.parametrize("p", [2, 5, 7, 8, 12, 13])
def test_basis_orthonormal(p):
    basis = fourier_basis(p)
    identity = torch.eye(p, dtype=torch.float64)

    assert basis.shape == (p, p)
    assert basis.dtype == torch.float64
    assert torch.allclose(basis @ basis.T, identity, atol=EXACT, rtol=0)
    assert torch.allclose(basis.T @ basis, identity, atol=EXACT, rtol=0)


@pytest.mark.parametrize("p", [7, 8])
def test_basis_rows_are_cosines_and_sines(p):
    basis = fourier_basis(p)
    x = residues(p)
    labels = basis_labels(p)

    assert torch.allclose(
        basis[0], torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64), atol=EXACT
    )
    for k in range(1, (p - 1) // 2 + 1):
        expected_cos = math.sqrt(2 / p) * torch.cos(angle(k, x, p))
        expected_sin = math.sqrt(2 / p) * torch.sin(angle(k, x, p))
        assert torch.allclose(basis[labels.index(f"cos {k}")], expected_cos, atol=EXACT)
        assert torch.allclose(basis[labels.index(f"sin {k}")], expected_sin, atol=EXACT)
    if p % 2 == 0:
        assert labels[-1] == f"cos {p // 2}"
        assert torch.allclose(basis[-1], torch.cos(math.pi * x) / math.sqrt(p), atol=EXACT)


def test_basis_frequencies_and_labels_agree():
    assert basis_frequencies(7).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert basis_labels(7) == ["const", "cos 1", "sin 1", "cos 2", "sin 2", "cos 3", "sin 3"]
    assert basis_frequencies(8).tolist() == [0, 1, 1, 2, 2, 3, 3, 4]
    assert basis_labels(8)[-1] == "cos 4"


def test_basis_float32_dtype():
    basis = fourier_basis(11, dtype=torch.float32)
    assert basis.dtype == torch.float32
    # float32 rounding: eps ~ 1.2e-7 times sums of 11 terms.
    assert torch.allclose(basis @ basis.T, torch.eye(11), atol=1e-6)


@pytest.mark.parametrize("p", [1, 0, True])
def test_basis_rejects_invalid_modulus(p):
    with pytest.raises(ValueError, match="not a valid modulus"):
        fourier_basis(p)


# ---------------------------------------------------------------------------------------------
# Spectra


@pytest.mark.parametrize("p", [7, 8, 13])
def test_embedding_spectrum_parseval(p):
    generator = torch.Generator().manual_seed(p)
    W_E = torch.randn(p + 2, 16, generator=generator, dtype=torch.float64)

    spectrum = embedding_spectrum(W_E, p)

    assert spectrum.shape == (p // 2 + 1,)
    # Only the p residue rows enter; the op and "=" rows are ignored.
    assert torch.isclose(spectrum.pow(2).sum(), W_E[:p].pow(2).sum(), rtol=EXACT, atol=0)


@pytest.mark.parametrize("p", [7, 8, 13])
def test_embedding_spectrum_matches_raw_dft(p):
    generator = torch.Generator().manual_seed(100 + p)
    W_E = torch.randn(p + 1, 5, generator=generator, dtype=torch.float64)

    raw = torch.fft.fft(W_E[:p], dim=0).abs().pow(2).sum(dim=1).sqrt()[: p // 2 + 1]
    scale = torch.full((p // 2 + 1,), math.sqrt(2 / p), dtype=torch.float64)
    scale[0] = 1 / math.sqrt(p)
    if p % 2 == 0:
        scale[-1] = 1 / math.sqrt(p)

    assert torch.allclose(embedding_spectrum(W_E, p), scale * raw, rtol=1e-10, atol=EXACT)


def test_known_frequencies_two_and_five():
    p, d, keys = 13, 16, (2, 5)
    generator = torch.Generator().manual_seed(0)
    x = residues(p)
    W_E = torch.zeros(p + 2, d, dtype=torch.float64)
    for k in keys:
        # Amplitudes in [1, 2] keep the two frequencies' energies within a factor of 4, so both
        # are needed to reach 95 % of the energy.
        cos_amplitude = 1 + torch.rand(d, generator=generator, dtype=torch.float64)
        sin_amplitude = 1 + torch.rand(d, generator=generator, dtype=torch.float64)
        W_E[:p] += torch.outer(torch.cos(angle(k, x, p)), cos_amplitude)
        W_E[:p] += torch.outer(torch.sin(angle(k, x, p)), sin_amplitude)
    W_E[p:] = torch.randn(2, d, generator=generator, dtype=torch.float64)

    spectrum = embedding_spectrum(W_E, p)
    found = key_frequencies(spectrum)

    assert found == [2, 5]
    others = [k for k in range(p // 2 + 1) if k not in keys]
    assert spectrum[others].abs().max() < 1e-12
    assert spectrum[list(keys)].min() > 1.0


def test_key_frequencies_energy_fraction():
    # Energies (index 1..5): 96, 0, 3, 1, 0 out of 100.
    spectrum = torch.tensor([7.0, 96.0, 0.0, 3.0, 1.0, 0.0]).sqrt()

    assert key_frequencies(spectrum, energy_fraction=0.95) == [1]
    assert key_frequencies(spectrum, energy_fraction=0.97) == [1, 3]
    assert key_frequencies(spectrum, energy_fraction=0.995) == [1, 3, 4]
    assert key_frequencies(spectrum, energy_fraction=1.0) == [1, 3, 4]


def test_key_frequencies_ignores_constant_term():
    spectrum = torch.tensor([1000.0, 0.0, 1.0, 0.0])
    assert key_frequencies(spectrum) == [2]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_key_frequencies_rejects_fraction(fraction):
    with pytest.raises(ValueError, match="energy_fraction"):
        key_frequencies(torch.ones(4), energy_fraction=fraction)


def test_key_frequencies_rejects_constant_only_spectrum():
    with pytest.raises(ValueError, match="no energy outside the constant term"):
        key_frequencies(torch.tensor([3.0, 0.0, 0.0]))


def test_residue_spectrum_axis_one_is_transpose():
    p = 11
    W_U = torch.randn(9, p, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(
        residue_spectrum(W_U, p, axis=1), residue_spectrum(W_U.T, p, axis=0), atol=EXACT
    )


def test_residue_spectrum_rejects_short_axis():
    with pytest.raises(ValueError, match="fewer than p=7 residues"):
        residue_spectrum(torch.zeros(5, 3), 7, axis=0)
    with pytest.raises(ValueError, match="axis=2"):
        residue_spectrum(torch.zeros(7, 7), 7, axis=2)


# ---------------------------------------------------------------------------------------------
# Sparsity


@pytest.mark.parametrize("n", [1, 4, 9])
def test_gini_and_ipr_uniform(n):
    uniform = torch.full((n,), 2.5, dtype=torch.float64)
    assert abs(float(gini(uniform))) < EXACT
    assert math.isclose(float(inverse_participation_ratio(uniform)), 1 / n, rel_tol=EXACT)


@pytest.mark.parametrize("n", [2, 4, 9])
def test_gini_and_ipr_one_peak(n):
    one_hot = torch.zeros(n, dtype=torch.float64)
    one_hot[n // 2] = 3.0
    assert math.isclose(float(gini(one_hot)), (n - 1) / n, rel_tol=EXACT)
    assert math.isclose(float(inverse_participation_ratio(one_hot)), 1.0, rel_tol=EXACT)


def test_gini_and_ipr_batched_and_ordered():
    weights = torch.tensor(
        [[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 5.0]], dtype=torch.float64
    )
    gini_values = gini(weights)
    ipr_values = inverse_participation_ratio(weights)

    assert gini_values.shape == (3,)
    assert gini_values[0] < gini_values[1] < gini_values[2]
    assert ipr_values[0] < ipr_values[1] < ipr_values[2]
    # [0, 1, 1, 2]: sum (2i - 5) x_(i) = 0*-3 + 1*-1 + 1*1 + 2*3 = 6, over n * total = 16.
    assert math.isclose(float(gini_values[1]), 6 / 16, rel_tol=EXACT)


def test_gini_rejects_zero_and_negative_weights():
    with pytest.raises(ValueError, match="sums to zero"):
        gini(torch.zeros(3))
    with pytest.raises(ValueError, match="negative"):
        inverse_participation_ratio(torch.tensor([1.0, -1.0]))


def test_spectrum_sparsity_unembedding_single_frequency():
    p, d = 11, 6
    x = residues(p)
    W_U = torch.outer(
        torch.randn(d, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
        torch.cos(angle(3, x, p)),
    )
    W_U = W_U + 4.0  # a constant offset only touches frequency 0

    sparsity = spectrum_sparsity(W_U, p, axis=1)

    n = p // 2
    assert math.isclose(sparsity.gini, (n - 1) / n, rel_tol=1e-10)
    assert math.isclose(sparsity.inverse_participation_ratio, 1.0, rel_tol=1e-10)
    assert not sparsity.include_constant
    assert int(sparsity.spectrum[1:].argmax()) + 1 == 3


def test_spectrum_sparsity_include_constant():
    p = 7
    W_E = torch.ones(p, 3, dtype=torch.float64)
    W_E[:, 0] += torch.cos(angle(1, residues(p), p))

    with_constant = spectrum_sparsity(W_E, p, include_constant=True)
    without_constant = spectrum_sparsity(W_E, p)

    assert with_constant.include_constant
    # Frequencies 0 and 1 both hold energy once the constant counts, so the IPR drops below 1.
    assert with_constant.inverse_participation_ratio < 1.0
    assert math.isclose(without_constant.inverse_participation_ratio, 1.0, rel_tol=1e-10)


# ---------------------------------------------------------------------------------------------
# 2-D transform and neuron frequencies


@pytest.mark.parametrize("p", [7, 8])
def test_transform_2d_parseval(p):
    grid = torch.randn(p, p, 5, generator=torch.Generator().manual_seed(p), dtype=torch.float64)
    coefficients = fourier_transform_2d(grid)

    assert coefficients.shape == grid.shape
    assert torch.allclose(
        coefficients.pow(2).sum(dim=(0, 1)), grid.pow(2).sum(dim=(0, 1)), rtol=EXACT
    )


def test_transform_2d_is_basis_product():
    # The definition per channel: coefficients[:, :, c] = B grid[:, :, c] B^T. A p of 31 with
    # many channels also keeps the contraction order honest: the p^4 outer product of the two
    # bases would take about 7 MB here and 0.7 GB at p = 97.
    p = 31
    grid = torch.randn(p, p, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    basis = fourier_basis(p)

    expected = torch.stack([basis @ grid[:, :, c] @ basis.T for c in range(64)], dim=-1)

    assert torch.allclose(fourier_transform_2d(grid), expected, rtol=EXACT, atol=1e-12)


@pytest.mark.parametrize("p, k", [(7, 2), (8, 3), (8, 4), (13, 5)])
def test_product_neuron_has_its_frequency(p, k):
    x = residues(p)
    cos_a = torch.cos(angle(k, x, p))[:, None]
    sin_b = torch.sin(angle(k, x, p))[None, :]
    neurons = torch.stack(
        [
            cos_a * cos_a.T,  # cos(w_k a) cos(w_k b)
            cos_a + 0.5 * sin_b + 3.0,  # single-variable terms and a constant
        ],
        dim=-1,
    )

    fractions = neuron_frequency_fractions(neurons)

    assert fractions.shape == (2, p // 2)
    expected = torch.zeros(2, p // 2, dtype=torch.float64)
    expected[:, k - 1] = 1.0
    assert torch.allclose(fractions, expected, atol=EXACT)
    assert cluster_neurons(fractions).tolist() == [k, k]


def test_mixed_frequency_neuron_is_unclustered():
    p = 11
    x = residues(p)
    # cos(w_2 a) cos(w_3 b) lies in no frequency's span, and a dead neuron has no variance.
    mixed = torch.cos(angle(2, x, p))[:, None] * torch.cos(angle(3, x, p))[None, :]
    dead = torch.full((p, p), 0.7, dtype=torch.float64)
    half = torch.cos(angle(1, x, p))[:, None] + torch.cos(angle(4, x, p))[None, :]
    neurons = torch.stack([mixed, dead, half], dim=-1)

    fractions = neuron_frequency_fractions(neurons)

    assert torch.allclose(fractions[0], torch.zeros(p // 2, dtype=torch.float64), atol=EXACT)
    assert torch.equal(fractions[1], torch.zeros(p // 2, dtype=torch.float64))
    assert math.isclose(float(fractions[2, 0]), 0.5, rel_tol=1e-10)
    assert math.isclose(float(fractions[2, 3]), 0.5, rel_tol=1e-10)
    assert cluster_neurons(fractions).tolist() == [UNCLUSTERED] * 3
    assert cluster_neurons(fractions, threshold=0.5).tolist()[:2] == [UNCLUSTERED, UNCLUSTERED]


def loop_frequency_fractions(activations):
    """Reference: explicit 2-D basis functions, one neuron and one frequency at a time."""
    p, _, d_mlp = activations.shape
    basis = fourier_basis(p)
    row_frequency = basis_frequencies(p).tolist()
    fractions = torch.zeros(d_mlp, p // 2, dtype=torch.float64)

    for neuron in range(d_mlp):
        values = activations[:, :, neuron]
        variance = (values - values.mean()).pow(2).sum()
        for k in range(1, p // 2 + 1):
            rows = [i for i in range(p) if row_frequency[i] in (0, k)]
            explained = 0.0
            for i in rows:
                for j in rows:
                    if i == 0 and j == 0:
                        continue
                    coefficient = (torch.outer(basis[i], basis[j]) * values).sum()
                    explained += float(coefficient) ** 2
            fractions[neuron, k - 1] = explained / float(variance)
    return fractions


@pytest.mark.parametrize("p", [7, 8])
def test_vectorised_fractions_match_loop(p):
    activations = torch.randn(
        p, p, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    activations = torch.relu(activations)

    assert torch.allclose(
        neuron_frequency_fractions(activations), loop_frequency_fractions(activations), atol=1e-10
    )


# ---------------------------------------------------------------------------------------------
# Restricted and excluded losses on a closed-form network


def closed_form_network(p, keys, scale):
    """Build the activations and logits of an MLP that adds with the frequencies ``keys``.

    Four neurons per frequency compute cos(w a) cos(w b), sin(w a) sin(w b), sin(w a) cos(w b)
    and cos(w a) sin(w b). The unembedding combines them with cos(w c) and sin(w c), which by
    the angle-sum identities gives the logit scale * sum_k cos(w_k (a + b - c)).
    """
    x = residues(p)
    neurons, logits = [], torch.zeros(p, p, p, dtype=torch.float64)
    for k in keys:
        cos_x, sin_x = torch.cos(angle(k, x, p)), torch.sin(angle(k, x, p))
        cc, ss = torch.outer(cos_x, cos_x), torch.outer(sin_x, sin_x)
        sc, cs = torch.outer(sin_x, cos_x), torch.outer(cos_x, sin_x)
        neurons += [cc, ss, sc, cs]
        logits += scale * ((cc - ss)[:, :, None] * cos_x + (sc + cs)[:, :, None] * sin_x)
    return torch.stack(neurons, dim=-1), logits


def test_closed_form_network_matches_identity():
    p, keys = 13, (1, 4, 5)
    _, logits = closed_form_network(p, keys, scale=2.0)
    expected = sum(2.0 * torch.cos(angle(k, addition_phase(p), p)) for k in keys)
    assert torch.allclose(logits, expected, atol=1e-12)


@pytest.mark.parametrize("projection", ["joint", "per_output"])
def test_closed_form_network_losses(projection):
    p, keys = 13, (1, 4, 5)
    activations, logits = closed_form_network(p, keys, scale=6.0)
    train_mask = torch.rand(p, p, generator=torch.Generator().manual_seed(0)) < 0.3

    found = neuron_key_frequencies(activations)
    full = grid_cross_entropy(logits, train_mask)
    restricted = restricted_loss(logits, found, train_mask, projection=projection)
    excluded = excluded_loss(logits, found, train_mask, projection=projection)

    assert found == list(keys)
    assert full < 0.01
    # The logits lie in the key span, so the projection is exact up to float64 rounding.
    assert abs(float(restricted - full)) < 1e-10
    # Nothing is left once the key directions go, so every output is equally likely: log p.
    assert math.isclose(float(excluded), math.log(p), rel_tol=1e-10)


def test_restricted_and_excluded_split_the_logits():
    p, keys, other = 11, [2, 3], 5
    phase = addition_phase(p)
    generator = torch.Generator().manual_seed(4)
    key_part = 3.0 * torch.cos(angle(2, phase, p)) - 1.5 * torch.sin(angle(3, phase, p))
    noise_part = 0.8 * torch.cos(angle(other, phase, p))
    constant_in_c = torch.randn(p, p, 1, generator=generator, dtype=torch.float64)
    logits = key_part + noise_part + constant_in_c

    assert torch.allclose(restricted_logits(logits, keys), key_part + constant_in_c, atol=1e-12)
    assert torch.allclose(excluded_logits(logits, keys), noise_part + constant_in_c, atol=1e-12)


def test_projections_differ_on_output_mismatch():
    # cos(w_2 (a + b)) cos(w_3 c) is in the per-output span of frequency 2 but orthogonal to the
    # joint directions cos/sin(w_2 (a + b - c)), because cos(w_3 c) is orthogonal to cos/sin(w_2 c).
    p = 11
    x = residues(p)
    sums = x[:, None] + x[None, :]
    logits = torch.cos(angle(2, sums, p))[:, :, None] * torch.cos(angle(3, x, p))

    joint = restricted_logits(logits, [2], projection="joint")
    per_output = restricted_logits(logits, [2], projection="per_output")

    mean = logits.mean(dim=-1, keepdim=True)
    assert torch.allclose(joint, mean.expand_as(logits), atol=1e-12)
    assert torch.allclose(per_output, logits, atol=1e-12)


def test_even_modulus_nyquist_key():
    p = 8
    logits = 5.0 * torch.cos(angle(4, addition_phase(p), p)) + 5.0 * torch.cos(
        angle(1, addition_phase(p), p)
    )

    restricted = restricted_logits(logits, [1, 4])
    excluded = excluded_logits(logits, [4])

    assert torch.allclose(restricted, logits, atol=1e-12)
    assert torch.allclose(excluded, 5.0 * torch.cos(angle(1, addition_phase(p), p)), atol=1e-12)


def test_no_key_frequencies_gives_uniform_restricted_loss():
    p = 7
    logits = torch.randn(p, p, p, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert math.isclose(float(restricted_loss(logits, [])), math.log(p), rel_tol=1e-12)
    assert torch.allclose(excluded_logits(logits, []), logits)


@pytest.mark.parametrize("projection", ["joint", "per_output"])
@pytest.mark.parametrize(
    ("p", "keys", "scale"), [(11, [2, 5], 3.0), (12, [1, 6], 3.0), (7, [3], 400.0)]
)
def test_losses_match_projected_logits(p, keys, scale, projection):
    # The losses never form the projected grids: the restricted loss reads p rows of (s, c)
    # logits and the excluded loss sums exponentials in base 2, block by block. Both must equal
    # the cross-entropy of the logits that restricted_logits and excluded_logits return. The
    # scale 400 gives logits whose exponentials overflow float64 without a shift.
    generator = torch.Generator().manual_seed(p)
    logits = scale * torch.randn(p, p, p, generator=generator, dtype=torch.float64)
    logits += 4.0 * torch.cos(angle(keys[0], addition_phase(p), p))
    for mask in (torch.rand(p, p, generator=generator) < 0.4, None):
        expected_restricted = grid_cross_entropy(restricted_logits(logits, keys, projection), mask)
        expected_excluded = grid_cross_entropy(excluded_logits(logits, keys, projection), mask)
        losses = key_frequency_losses(logits, keys, mask, projection=projection)

        # Float64 sums of a few thousand terms in another order: relative rounding near 1e-15.
        for value, expected in [
            (losses.restricted, expected_restricted),
            (restricted_loss(logits, keys, mask, projection=projection), expected_restricted),
            (losses.excluded, expected_excluded),
            (excluded_loss(logits, keys, mask, projection=projection), expected_excluded),
        ]:
            assert math.isfinite(float(value))
            assert math.isclose(float(value), float(expected), rel_tol=1e-12)


def test_excluded_loss_spans_several_row_blocks(monkeypatch):
    # Force blocks of 10 rows, so 7 * 7 pairs take five blocks, the last one partial.
    monkeypatch.setattr(fourier, "_EXCLUDED_ROWS_PER_BLOCK", 10)
    p = 7
    logits = torch.randn(p, p, p, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = grid_cross_entropy(excluded_logits(logits, [2]))
    assert math.isclose(float(excluded_loss(logits, [2])), float(expected), rel_tol=1e-12)


@pytest.mark.parametrize("projection", ["joint", "per_output"])
def test_loss_gradients_match_projected_logits(projection):
    # The shortcuts must differentiate like the definitions: same gradient with respect to
    # every logit, so that the losses can drive optimisation or attribution.
    p, keys = 9, [1, 4]
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(p, p, p, generator=generator, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(p, p, generator=generator) < 0.5

    losses = key_frequency_losses(logits, keys, mask, projection=projection)
    ours = torch.autograd.grad(losses.restricted + 2.0 * losses.excluded, logits)[0]
    expected_loss = grid_cross_entropy(
        restricted_logits(logits, keys, projection), mask
    ) + 2.0 * grid_cross_entropy(excluded_logits(logits, keys, projection), mask)
    expected = torch.autograd.grad(expected_loss, logits)[0]

    assert torch.allclose(ours, expected, rtol=0, atol=EXACT)


def test_losses_after_inference_mode_keep_autograd():
    # The index grids are cached per p, so one made under inference mode must still serve a
    # later call that records gradients.
    p = 13
    with torch.inference_mode():
        restricted_loss(torch.randn(p, p, p, dtype=torch.float64), [1])
    logits = torch.randn(p, p, p, dtype=torch.float64, requires_grad=True)

    key_frequency_losses(logits, [1]).excluded.backward()

    assert logits.grad is not None


def test_losses_reject_a_mask_of_another_shape():
    # Under the test suite's jaxtyping hook the annotations already catch this mismatch, so the
    # check that runs without the hook is called directly.
    with pytest.raises(ValueError, match=r"pair_mask has shape \(4, 4\): expected \[5, 5\]"):
        fourier._selected_pairs(torch.ones(4, 4, dtype=torch.bool), 5, torch.device("cpu"))


def test_grid_cross_entropy_labels_are_sums():
    p = 5
    logits = torch.zeros(p, p, p, dtype=torch.float64)
    for a in range(p):
        for b in range(p):
            logits[a, b, (a + b) % p] = 50.0
    assert float(grid_cross_entropy(logits)) < 1e-20
    logits[0, 0] = torch.tensor([0.0, 50.0, 0.0, 0.0, 0.0])  # wrong answer on pair (0, 0) only
    only_first = torch.zeros(p, p, dtype=torch.bool)
    only_first[0, 0] = True
    assert math.isclose(float(grid_cross_entropy(logits, only_first)), 50.0, rel_tol=1e-12)


def test_loss_rejects_other_operations():
    logits = torch.zeros(5, 5, 5)
    with pytest.raises(NotImplementedError, match="addition only"):
        restricted_loss(logits, [1], operation="multiply")


@pytest.mark.parametrize("keys", [[0], [3], [1, 1], [True]])
def test_loss_rejects_invalid_keys(keys):
    with pytest.raises(ValueError, match="key_frequencies"):
        excluded_loss(torch.zeros(5, 5, 5), keys)


def test_loss_rejects_non_grid_logits():
    with pytest.raises(ValueError, match="expected \\[p, p, p\\]"):
        restricted_logits(torch.zeros(5, 5, 4), [1])
    with pytest.raises(ValueError, match="selects no input pair"):
        grid_cross_entropy(torch.zeros(5, 5, 5), torch.zeros(5, 5, dtype=torch.bool))


def test_docstring_examples():
    result = doctest.testmod(fourier)
    assert result.attempted > 0
    assert result.failed == 0
