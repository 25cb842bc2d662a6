"""Tests for reference_impls/modality_rebalance.py (AGS-SMoE's preemption-factor gradient scaling).

Oracles: hand-computed factors, an independent re-statement of the official ``solver.py`` rule for
three modalities, the per-tensor norm average, a closed-form least-squares probe. Properties: the
factor's bounds, only pre-empting encoders are scaled, Adam cancels a constant factor while SGD does
not, and the scaling slows the dominant encoder.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference_impls.modality_rebalance import (
    MultimodalSMoEClassifier,
    PreemptionGradientScaler,
    average_gradient_norm,
    preemption_factors,
    probe_accuracy,
    scale_gradients,
)


def official_rule(text, audio, vision, alpha):
    """The released solver.py's "average" strategy for three modalities, restated branch by branch."""

    def one(g, a, b):
        if g > (a + b) / 2:
            ratio = g / ((a + b) / 2)
            return 1.0 - math.tanh(alpha * (1.0 / (1.0 + 1.0 / ratio)))
        return 1.0

    return [one(text, audio, vision), one(audio, text, vision), one(vision, audio, text)]


# ------------------------------------------------------------------------------------------------
# The factor
# ------------------------------------------------------------------------------------------------


def test_two_modalities_by_hand():
    f = preemption_factors([3.0, 1.0], 0.5)
    assert f[0] == pytest.approx(1 - math.tanh(0.5 * 0.75))  # r = 3, r / (1 + r) = 0.75
    assert f[1] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_official_three_modality_rule(seed):
    norms = (torch.rand(3, generator=torch.Generator().manual_seed(seed)) * 5).tolist()
    for alpha in (0.01, 1.0, 3.0):
        assert preemption_factors(norms, alpha) == pytest.approx(official_rule(*norms, alpha))


def test_average_and_max_strategies_differ():
    norms = [3.0, 2.9, 0.1]
    average = preemption_factors(norms, 1.0, strategy="average")
    largest = preemption_factors(norms, 1.0, strategy="max")
    assert average[0] < 1 and average[1] < 1 and average[2] == 1  # 2.9 > mean(3.0, 0.1)
    assert largest[0] == average[0] and largest[1] == 1 and largest[2] == 1


def test_factor_bounds_and_the_official_strength():
    torch.manual_seed(0)
    for _ in range(50):
        norms = (torch.rand(3) * 10).tolist()
        for alpha in (0.01, 0.5, 3.0):
            assert all(1 - math.tanh(alpha) <= f <= 1 for f in preemption_factors(norms, alpha))
    assert min(preemption_factors([100.0, 1e-3], 0.01)) > 0.99  # the code's hyperalpha barely moves anything


def test_equal_norms_zero_peers_and_ties():
    assert preemption_factors([2.0, 2.0, 2.0], 1.0) == [1.0, 1.0, 1.0]
    assert preemption_factors([2.0, 0.0], 1.0)[0] == pytest.approx(1 - math.tanh(1.0))  # r = inf
    tied = preemption_factors([2.0, 2.0, 1.0], 1.0, strategy="max")
    assert tied[0] == tied[1] == pytest.approx(1 - math.tanh(1.0 * 2.0 / 3.5))  # r = 2 / 1.5
    with pytest.raises(ValueError):
        preemption_factors([1.0], 1.0)
    with pytest.raises(ValueError):
        preemption_factors([1.0, 2.0], 1.0, strategy="median")


# ------------------------------------------------------------------------------------------------
# Gradient norms and scaling
# ------------------------------------------------------------------------------------------------


def test_average_gradient_norm_is_the_rms_of_per_tensor_norms():
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert average_gradient_norm(module) == 0.0
    module(torch.randn(5, 3)).square().sum().backward()
    norms = [p.grad.norm().item() for p in module.parameters()]
    assert average_gradient_norm(module) == pytest.approx(math.sqrt(sum(n * n for n in norms) / 4))
    global_norm = math.sqrt(sum(n * n for n in norms))
    assert average_gradient_norm(module) == pytest.approx(global_norm / 2)  # 4 tensors: not the global norm


def test_scaler_scales_only_the_preempting_encoder():
    torch.manual_seed(0)
    big, small = nn.Linear(4, 4), nn.Linear(4, 4)
    (10 * big(torch.randn(8, 4)).sum() + small(torch.randn(8, 4)).sum()).backward()
    named = [*big.named_parameters(prefix="big"), *small.named_parameters(prefix="small")]
    before = {n: p.grad.clone() for n, p in named}
    g_big, g_small = average_gradient_norm(big), average_gradient_norm(small)
    report = PreemptionGradientScaler([{"big": big, "small": small}], alphas=2.0)()
    expected = 1 - math.tanh(2.0 * g_big / (g_big + g_small))
    assert report.grad_norms[0] == pytest.approx({"big": g_big, "small": g_small})
    assert report.factors[0] == pytest.approx({"big": expected, "small": 1.0})
    for n, p in big.named_parameters(prefix="big"):
        torch.testing.assert_close(p.grad, expected * before[n])
    for n, p in small.named_parameters(prefix="small"):
        torch.testing.assert_close(p.grad, before[n])


def test_scaler_stages_are_compared_separately():
    torch.manual_seed(0)
    a, b, c, d = (nn.Linear(2, 2) for _ in range(4))
    (5 * a(torch.randn(3, 2)).sum() + b(torch.randn(3, 2)).sum() + c(torch.randn(3, 2)).sum()
     + 5 * d(torch.randn(3, 2)).sum()).backward()
    report = PreemptionGradientScaler([{"a": a, "b": b}, {"c": c, "d": d}], alphas=[1.0, 0.5])()
    assert report.factors[0]["a"] < 1 == report.factors[0]["b"]
    assert report.factors[1]["d"] < 1 == report.factors[1]["c"]
    assert report.factors[1]["d"] > 1 - math.tanh(0.5)
    with pytest.raises(ValueError):
        PreemptionGradientScaler([{"a": a, "b": b}], alphas=[1.0, 2.0])


def _train_encoder_weights(optimiser_name, factor, steps=30):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = (torch.optim.Adam(model.parameters(), lr=1e-2) if optimiser_name == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.1))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        scale_gradients(model[0], factor)  # a constant factor on the "encoder"
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_adam_cancels_a_constant_factor_and_sgd_does_not():
    base_adam, scaled_adam = _train_encoder_weights("adam", 1.0), _train_encoder_weights("adam", 0.05)
    torch.testing.assert_close(scaled_adam, base_adam, atol=2e-4, rtol=0)  # only eps differs
    base_sgd, scaled_sgd = _train_encoder_weights("sgd", 1.0), _train_encoder_weights("sgd", 0.05)
    assert (scaled_sgd - base_sgd).abs().max() > 0.05


# ------------------------------------------------------------------------------------------------
# Model and probe
# ------------------------------------------------------------------------------------------------


def test_model_routes_modality_tokens_through_the_core_moe():
    torch.manual_seed(0)
    model = MultimodalSMoEClassifier({"a": 5, "b": 3}, 4, d_model=8, encoder_hidden=16, expert_hidden=16)
    inputs = {"a": torch.randn(6, 5), "b": torch.randn(6, 3)}
    out = model(inputs)
    assert out.logits.shape == (6, 4)
    assert out.tokens["a"].shape == out.tokens["b"].shape == (6, 8)
    assert out.moe.routing.expert_index.shape == (12, 2)  # B * M tokens, top-2 of 3 experts
    torch.testing.assert_close(out.tokens["b"], model.encode("b", inputs["b"]))
    F.cross_entropy(out.logits, torch.randint(0, 4, (6,))).backward()
    for part in (model.encoders["a"], model.encoders["b"], model.moe.router):
        assert average_gradient_norm(part) > 0


def test_probe_matches_least_squares_and_separates_what_is_separable():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=g)
    separable = F.one_hot(labels, 4).float() * 3 + 0.1 * torch.randn(400, 4, generator=g)
    assert probe_accuracy(separable[:300], labels[:300], separable[300:], labels[300:]) == 1.0
    noise = torch.randn(400, 4, generator=g)
    assert probe_accuracy(noise[:300], labels[:300], noise[300:], labels[300:]) < 0.45
    # closed form against torch.linalg.lstsq with ridge = 0
    x = torch.randn(200, 3, generator=g).double()
    y = torch.randint(0, 3, (200,), generator=g)
    z = torch.cat([(x - x.mean(0)) / x.std(0), torch.ones(200, 1, dtype=x.dtype)], -1)
    w = torch.linalg.lstsq(z, F.one_hot(y, 3).double()).solution
    expected = ((z @ w).argmax(-1) == y).float().mean().item()
    assert probe_accuracy(x, y, x, y, ridge=0.0) == pytest.approx(expected)


def test_strong_scaling_slows_the_dominant_encoder_under_sgd():
    def encoder_change(alpha):
        torch.manual_seed(0)
        model = MultimodalSMoEClassifier({"a": 4, "b": 4}, 3, d_model=8, encoder_hidden=16, expert_hidden=16)
        start = [p.detach().clone() for p in model.encoders["a"].parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = PreemptionGradientScaler([{"a": model.encoders["a"], "b": model.encoders["b"]}], alphas=alpha)
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            y = torch.randint(0, 3, (32,), generator=g)
            inputs = {"a": F.one_hot(y, 4).float() * 3, "b": torch.randn(32, 4, generator=g)}  # a is trivial
            loss = F.cross_entropy(model(inputs).logits, y)
            opt.zero_grad()
            loss.backward()
            report = scaler()
            opt.step()
        assert report.grad_norms[0]["a"] > report.grad_norms[0]["b"]  # a dominates the gradient
        return sum((p.detach() - s).norm().item() for p, s in zip(model.encoders["a"].parameters(), start))

    assert encoder_change(3.0) < 0.2 * encoder_change(0.0)
