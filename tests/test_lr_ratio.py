import copy
import math

import pytest
import torch
from state_roundtrip import roundtrip
from torch import nn

from grokinterp.training.lr_ratio import AdaptiveLRRatio, param_groups


class TinyEmbedMLP(nn.Module):
    """Embedding, then one linear layer: the E → W coupling in miniature."""

    def __init__(self, d_vocab=5, d_embed=3, d_mlp=4, p=5):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.embed = nn.Module()
        self.embed.W_E = nn.Parameter(
            torch.randn(d_vocab, d_embed, generator=generator, dtype=torch.float64)
        )
        self.W_in = nn.Parameter(
            torch.randn(2 * d_embed, d_mlp, generator=generator, dtype=torch.float64)
        )
        self.W_U = nn.Parameter(torch.randn(d_mlp, p, generator=generator, dtype=torch.float64))

    def forward(self, tokens):
        x = self.embed.W_E[tokens].flatten(1)
        return torch.relu(x @ self.W_in) @ self.W_U


def backward_on_batch(model, seed):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 5, (6, 2), generator=generator)
    labels = torch.randint(0, 5, (6,), generator=generator)
    model.zero_grad()
    nn.functional.cross_entropy(model(tokens), labels).backward()


def test_param_groups_lrs_and_weight_decay():
    model = TinyEmbedMLP()
    groups = param_groups(model.named_parameters(), ["embed.W_E"], 0.01, 10.0, 0.001)
    optimizer = torch.optim.Adam(groups)

    embed, rest = optimizer.param_groups
    assert embed["name"] == "embed"
    assert rest["name"] == "rest"
    assert embed["lr"] == pytest.approx(0.1, rel=1e-15)  # 0.01 · 10 in binary floating point
    assert rest["lr"] == 0.01
    assert embed["weight_decay"] == rest["weight_decay"] == 0.001
    assert [id(param) for param in embed["params"]] == [id(model.embed.W_E)]
    assert {id(param) for param in rest["params"]} == {id(model.W_in), id(model.W_U)}


def test_param_groups_separate_embed_weight_decay():
    model = TinyEmbedMLP()
    groups = param_groups(
        model.named_parameters(), ["embed.W_E"], 0.01, 10.0, 0.001, embed_weight_decay=0.0
    )

    assert groups[0]["weight_decay"] == 0.0
    assert groups[1]["weight_decay"] == 0.001


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW])
def test_embed_steps_like_adam_with_ratio_lr(optimizer_class):
    lr, ratio, weight_decay = 0.01, 10.0, 0.05
    model = TinyEmbedMLP()
    reference_embed = nn.Parameter(model.embed.W_E.detach().clone())
    reference_rest = [
        nn.Parameter(model.W_in.detach().clone()),
        nn.Parameter(model.W_U.detach().clone()),
    ]
    optimizer = optimizer_class(
        param_groups(model.named_parameters(), ["embed.W_E"], lr, ratio, weight_decay)
    )
    embed_optimizer = optimizer_class([reference_embed], lr=lr * ratio, weight_decay=weight_decay)
    rest_optimizer = optimizer_class(reference_rest, lr=lr, weight_decay=weight_decay)

    for step in range(3):
        backward_on_batch(model, seed=step)
        reference_embed.grad = model.embed.W_E.grad.clone()
        for reference, param in zip(reference_rest, [model.W_in, model.W_U], strict=True):
            reference.grad = param.grad.clone()
        optimizer.step()
        embed_optimizer.step()
        rest_optimizer.step()

        # Same operations on the same float64 values, so the results agree bit for bit.
        assert torch.equal(model.embed.W_E, reference_embed)
        assert torch.equal(model.W_in, reference_rest[0])
        assert torch.equal(model.W_U, reference_rest[1])


def test_param_groups_unknown_name_lists_choices():
    model = TinyEmbedMLP()

    with pytest.raises(
        ValueError, match=r"\['embed\.W_e'\].*choose from \['W_in', 'W_U', 'embed\.W_E'\]"
    ):
        param_groups(model.named_parameters(), ["embed.W_e"], 0.01, 10.0, 0.0)


def test_param_groups_rejects_nonpositive_ratio():
    with pytest.raises(ValueError, match=r"embed_lr_ratio=0\.0.*> 0"):
        param_groups(TinyEmbedMLP().named_parameters(), ["embed.W_E"], 0.01, 0.0, 0.0)


# Hand-set weights. E = diag(3, 2, 1) with a zero row: singular values 3, 2, 1, so σ_max(E) = 3.
# W = R · diag(1.5, 0.5) with R a rotation: singular values 1.5 and 0.5, so σ_max(W) = 1.5.
E_HAND = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [0, 0, 0]], dtype=torch.float64)
ANGLE = 0.3
ROTATION = torch.tensor(
    [[math.cos(ANGLE), -math.sin(ANGLE)], [math.sin(ANGLE), math.cos(ANGLE)]], dtype=torch.float64
)
W_HAND = ROTATION @ torch.diag(torch.tensor([1.5, 0.5], dtype=torch.float64))

# Rows with a nonzero gradient per step: row 0 on 4 of 4 steps, rows 1 and 2 on 2, row 3 on 1.
UPDATED_ROWS = [[0, 1, 2, 3], [0, 1], [0], [0, 2]]


def gradient_with_rows(rows, d_vocab=4, d_embed=3):
    grad = torch.zeros(d_vocab, d_embed, dtype=torch.float64)
    grad[rows, 1] = 0.5
    return grad


def optimizer_with_groups(rest_lr=0.01):
    embed = nn.Parameter(torch.zeros(1))
    rest = nn.Parameter(torch.zeros(1))
    return torch.optim.Adam(
        [
            {"name": "embed", "params": [embed], "lr": rest_lr},
            {"name": "rest", "params": [rest], "lr": rest_lr},
        ]
    )


def observed_controller(updated_rows=UPDATED_ROWS, **kwargs):
    settings = {"k": 2.0, "every": 5, "c_min": 0.5, "c_max": 32.0} | kwargs
    controller = AdaptiveLRRatio(**settings)
    for rows in updated_rows:
        controller.observe(gradient_with_rows(rows))
    return controller


def test_row_frequencies_from_hand_sequence():
    controller = observed_controller()

    expected = torch.tensor([1.0, 0.5, 0.5, 0.25], dtype=torch.float64)
    assert torch.equal(controller.row_frequencies(), expected)
    assert controller.embed_update_frequency() == 0.5625  # (1 + 0.5 + 0.5 + 0.25) / 4


def test_window_keeps_last_steps_only():
    # The last two steps update rows {0} and {0, 2}: frequencies 1, 0, 0.5, 0.
    controller = observed_controller(window=2)

    expected = torch.tensor([1.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    assert torch.equal(controller.row_frequencies(), expected)


def test_ratio_follows_formula():
    # c = k · (σ_max(E) / σ_max(W)) · (f_W / f_E) = 2 · (3 / 1.5) · (1 / 0.5625) = 64 / 9.
    controller = observed_controller()
    optimizer = optimizer_with_groups(rest_lr=0.01)

    ratio = controller.update(0, E_HAND, W_HAND, optimizer)

    # matrix_norm(ord=2) comes from an SVD, exact to a few float64 ulps.
    assert ratio == pytest.approx(64 / 9, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 64 / 9, rel=1e-12)
    assert optimizer.param_groups[1]["lr"] == 0.01
    measurement = controller.last_measurement
    assert measurement.sigma_max_embed == pytest.approx(3.0, rel=1e-12)
    assert measurement.sigma_max_weight == pytest.approx(1.5, rel=1e-12)
    assert measurement.f_embed == 0.5625


def test_ratio_per_row_over_operand_rows():
    # f_E over rows 1, 2, 3 only: (0.5 + 0.5 + 0.25) / 3 = 5 / 12, so c = 4 · 12 / 5 = 9.6.
    controller = observed_controller(per_row=True, operand_rows=[1, 2, 3])

    ratio = controller.update(0, E_HAND, W_HAND, optimizer_with_groups())

    assert controller.embed_update_frequency() == pytest.approx(5 / 12, rel=1e-15)
    assert ratio == pytest.approx(9.6, rel=1e-12)


def test_ratio_clipped_to_range():
    high = observed_controller(c_max=5.0).update(0, E_HAND, W_HAND, optimizer_with_groups())
    low = observed_controller(c_min=8.0, c_max=9.0).update(
        0, E_HAND, W_HAND, optimizer_with_groups()
    )

    assert high == 5.0
    assert low == 8.0


def test_no_updated_rows_gives_c_max():
    controller = observed_controller(updated_rows=[[], []], c_max=24.0)

    ratio = controller.update(0, E_HAND, W_HAND, optimizer_with_groups())

    assert ratio == 24.0
    assert controller.last_measurement.unclipped_ratio == math.inf


def test_ratio_recomputed_every_steps():
    controller = observed_controller(every=5)
    optimizer = optimizer_with_groups(rest_lr=0.01)
    first = controller.update(0, E_HAND, W_HAND, optimizer)

    # Halving σ_max(E) would halve c, but only once 5 steps have passed.
    optimizer.param_groups[1]["lr"] = 0.02
    unchanged = controller.update(4, E_HAND / 2, W_HAND, optimizer)
    assert unchanged == first
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * first, rel=1e-15)

    recomputed = controller.update(5, E_HAND / 2, W_HAND, optimizer)
    assert recomputed == pytest.approx(first / 2, rel=1e-12)
    assert controller.last_measurement.step == 5


def test_adaptive_state_roundtrip_continues_identically():
    generator = torch.Generator().manual_seed(3)
    grads = [
        torch.randn(4, 3, generator=generator) * (torch.rand(4, 1, generator=generator) > 0.5)
        for _ in range(12)
    ]
    weights = [
        (torch.randn(4, 3, generator=generator), torch.randn(3, 6, generator=generator))
        for _ in range(12)
    ]
    original = AdaptiveLRRatio(k=1.0, every=3, c_min=0.5, c_max=32.0, window=4)
    optimizer = optimizer_with_groups()
    for step in range(6):
        original.observe(grads[step])
        original.update(step, *weights[step], optimizer)

    restored = AdaptiveLRRatio(k=1.0, every=3, c_min=0.5, c_max=32.0, window=4)
    restored.load_state_dict(roundtrip(original.state_dict()))
    assert restored.last_measurement == original.last_measurement
    restored_optimizer = copy.deepcopy(optimizer)
    for step in range(6, 12):
        original.observe(grads[step])
        restored.observe(grads[step])
        assert restored.update(step, *weights[step], restored_optimizer) == original.update(
            step, *weights[step], optimizer
        )
        assert torch.equal(restored.row_frequencies(), original.row_frequencies())


def test_update_before_observe_rejected():
    controller = AdaptiveLRRatio(k=1.0, every=1, c_min=1.0, c_max=2.0)

    with pytest.raises(RuntimeError, match=r"call observe\(embed_grad\)"):
        controller.update(0, E_HAND, W_HAND, optimizer_with_groups())


def test_optimizer_without_named_groups_rejected():
    controller = observed_controller()
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))])

    with pytest.raises(ValueError, match=r"groups named \[None\].*param_groups\(\)"):
        controller.update(0, E_HAND, W_HAND, optimizer)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"per_row": True}, r"per_row=True with operand_rows=None"),
        ({"operand_rows": [0, 1]}, r"operand_rows with per_row=False"),
        ({"c_min": 3.0, "c_max": 2.0}, r"0 < c_min <= c_max"),
        ({"f_W": 0.0}, r"f_W=0\.0.*\(0, 1\]"),
        ({"every": 0}, r"every=0.*integer >= 1"),
    ],
)
def test_invalid_controller_settings_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveLRRatio(**({"k": 1.0, "every": 1, "c_min": 1.0, "c_max": 2.0} | settings))


def test_operand_rows_beyond_vocab_rejected():
    controller = AdaptiveLRRatio(
        k=1.0, every=1, c_min=1.0, c_max=2.0, per_row=True, operand_rows=[0, 7]
    )

    with pytest.raises(ValueError, match=r"up to 7.*only 4 rows"):
        controller.observe(gradient_with_rows([0]))
