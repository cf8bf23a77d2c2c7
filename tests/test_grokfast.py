import pytest
import torch
from state_roundtrip import roundtrip
from torch import nn

from grokinterp.training.grokfast import GrokfastEMA, GrokfastMA


def filtered(grad_filter, grads):
    """Feed one step's gradients ({name: tensor or None}) and return the filtered ones."""
    params = {}
    for name, grad in grads.items():
        shape = (2,) if grad is None else grad.shape
        param = nn.Parameter(torch.zeros(shape, dtype=torch.float64))
        param.grad = None if grad is None else grad.clone()
        params[name] = param
    grad_filter.apply(params.items())
    return {name: param.grad for name, param in params.items()}


def vec(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_ema_two_steps_by_hand():
    # α = 0.5, λ = 2. Step 1: μ_1 = g_1 = [1, 2], ĝ_1 = g_1 + 2 μ_1 = [3, 6].
    # Step 2: μ_2 = 0.5 [1, 2] + 0.5 [3, -2] = [2, 0], ĝ_2 = [3, -2] + 2 [2, 0] = [7, -2].
    grad_filter = GrokfastEMA(alpha=0.5, lamb=2.0)

    first = filtered(grad_filter, {"w": vec(1.0, 2.0)})["w"]
    assert torch.equal(first, vec(3.0, 6.0))
    assert torch.equal(grad_filter.state_dict()["mu.w"], vec(1.0, 2.0))

    second = filtered(grad_filter, {"w": vec(3.0, -2.0)})["w"]
    assert torch.equal(second, vec(7.0, -2.0))
    assert torch.equal(grad_filter.state_dict()["mu.w"], vec(2.0, 0.0))


def test_ma_three_steps_by_hand_with_warmup():
    # w = 2, λ = 3. Step 1: window not full, ĝ_1 = g_1 = [1, 2].
    # Step 2: mean(g_1, g_2) = [2, 0], ĝ_2 = [3, -2] + 3 [2, 0] = [9, -2].
    # Step 3: g_1 leaves the window, mean(g_2, g_3) = [4, 1], ĝ_3 = [5, 4] + 3 [4, 1] = [17, 7].
    grad_filter = GrokfastMA(window=2, lamb=3.0, warmup=True)

    assert torch.equal(filtered(grad_filter, {"w": vec(1.0, 2.0)})["w"], vec(1.0, 2.0))
    assert torch.equal(filtered(grad_filter, {"w": vec(3.0, -2.0)})["w"], vec(9.0, -2.0))
    assert torch.equal(filtered(grad_filter, {"w": vec(5.0, 4.0)})["w"], vec(17.0, 7.0))


def test_ma_without_warmup_averages_partial_window():
    # w = 3, λ = 3, no warmup. Step 1: mean(g_1) = g_1, ĝ_1 = 4 g_1 = [4, 8].
    # Step 2: mean(g_1, g_2) = [2, 0], ĝ_2 = [3, -2] + 3 [2, 0] = [9, -2].
    grad_filter = GrokfastMA(window=3, lamb=3.0, warmup=False)

    assert torch.equal(filtered(grad_filter, {"w": vec(1.0, 2.0)})["w"], vec(4.0, 8.0))
    assert torch.equal(filtered(grad_filter, {"w": vec(3.0, -2.0)})["w"], vec(9.0, -2.0))


@pytest.mark.parametrize("make_filter", [lambda: GrokfastEMA(0.5, 2.0), lambda: GrokfastMA(2, 3.0)])
def test_none_grad_skipped_without_state(make_filter):
    grad_filter = make_filter()

    grads = filtered(grad_filter, {"a": vec(1.0, 2.0), "b": None})
    assert grads["b"] is None
    assert not any(key.endswith(".b") for key in grad_filter.state_dict())

    # Parameter b's filter starts at its first gradient, exactly as a's did on step 1.
    first_a = filtered(make_filter(), {"a": vec(1.0, 2.0)})["a"]
    grads = filtered(grad_filter, {"a": vec(3.0, -2.0), "b": vec(1.0, 2.0)})
    assert torch.equal(grads["b"], first_a)


def test_zero_grad_advances_ema():
    # A zero gradient is a gradient: μ_2 = 0.5 [2, 4] + 0.5 [0, 0] = [1, 2], ĝ_2 = 2 μ_2.
    grad_filter = GrokfastEMA(alpha=0.5, lamb=2.0)
    filtered(grad_filter, {"w": vec(2.0, 4.0)})

    assert torch.equal(filtered(grad_filter, {"w": vec(0.0, 0.0)})["w"], vec(2.0, 4.0))


@pytest.mark.parametrize(
    "make_filter",
    [lambda: GrokfastEMA(0.9, 2.0), lambda: GrokfastMA(3, 5.0), lambda: GrokfastMA(3, 5.0, False)],
)
def test_state_roundtrip_continues_identically(make_filter):
    generator = torch.Generator().manual_seed(0)
    steps = [
        {
            "embed.W_E": torch.randn(4, 3, generator=generator, dtype=torch.float64),
            "mlp.b_in": torch.randn(5, generator=generator, dtype=torch.float64),
        }
        for _ in range(8)
    ]
    original = make_filter()
    for grads in steps[:4]:
        filtered(original, grads)

    restored = make_filter()
    restored.load_state_dict(roundtrip(original.state_dict()))
    for grads in steps[4:]:
        expected = filtered(original, grads)
        got = filtered(restored, grads)
        for name in grads:
            assert torch.equal(got[name], expected[name])


def test_load_rejects_other_hyperparameters():
    state = GrokfastEMA(alpha=0.9).state_dict()

    with pytest.raises(ValueError, match=r"alpha=0\.9.*built with alpha=0\.98"):
        GrokfastEMA(alpha=0.98).load_state_dict(state)


def test_shape_change_rejected():
    grad_filter = GrokfastMA(window=2)
    filtered(grad_filter, {"w": vec(1.0, 2.0)})

    with pytest.raises(ValueError, match=r"shape \(3,\).*'w'.*shape \(2,\)"):
        filtered(grad_filter, {"w": vec(1.0, 2.0, 3.0)})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GrokfastEMA(alpha=1.0), r"alpha=1\.0.*\[0, 1\)"),
        (lambda: GrokfastEMA(lamb=-1.0), r"lamb=-1\.0.*>= 0"),
        (lambda: GrokfastMA(window=0), r"window=0.*integer >= 1"),
    ],
)
def test_invalid_settings_rejected(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_sparse_grad_rejected():
    param = nn.Parameter(torch.zeros(3, 2))
    param.grad = torch.zeros(3, 2).to_sparse()

    with pytest.raises(TypeError, match="sparse=False"):
        GrokfastEMA().apply([("embed.W_E", param)])
