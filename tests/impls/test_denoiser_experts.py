"""Tests for reference_impls/denoiser_experts.py (eDiff-I's noise-level experts, arXiv 2211.01324).

Oracles: EDM's closed-form scalings; a per-sample loop for the ensemble's dispatch (values and
gradients); the exact denoiser of a Gaussian, through which the sampler must reproduce that Gaussian;
a double loop for the MMD. Properties: each sigma reaches exactly one expert (in training and in every
sampler call, including the Heun correction and the last step); a split leaves the function unchanged
and gives independent children; guidance is linear in w.
"""

import math

import pytest
import torch
from torch import nn

from reference_impls.denoiser_experts import (
    Denoiser,
    EDMConfig,
    NoiseLevelExperts,
    denoising_loss,
    edm_scalings,
    guided,
    karras_sigmas,
    loss_weight,
    mmd_rbf,
    sample,
    split_expert,
)


def tiny_denoiser(seed: int = 0, **kwargs) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(2, 4, width=16, depth=2, embed_dim=8, **kwargs)


def tiny_batch(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    sigma = torch.exp(torch.linspace(-4, 3, n))
    return x, sigma, torch.randint(0, 5, (n,), generator=g)


# ------------------------------------------------------------------------------------------------
# EDM parameterisation
# ------------------------------------------------------------------------------------------------


def test_edm_scalings_at_sigma_equal_sigma_data():
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor([0.5]), 0.5)
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(0.5 / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / (0.5 * math.sqrt(2)))
    assert c_noise.item() == pytest.approx(math.log(0.5) / 4)


def test_loss_weight_is_the_inverse_square_of_c_out():
    sigma = torch.exp(torch.linspace(-5, 4, 20))
    _, c_out, _, _ = edm_scalings(sigma, 1.3)
    torch.testing.assert_close(loss_weight(sigma, 1.3) * c_out**2, torch.ones(20))


def test_denoiser_is_the_identity_as_sigma_goes_to_zero_and_uses_the_label():
    model = tiny_denoiser()
    x, _, label = tiny_batch()
    torch.testing.assert_close(model(x, torch.full((12,), 1e-5), label), x, atol=1e-4, rtol=0)
    high = torch.full((12,), 5.0)
    assert not torch.allclose(model(x, high, label), model(x, high, (label + 1) % 5))


def test_input_fourier_features_are_fixed_and_used():
    model = tiny_denoiser(input_fourier=6)
    assert model.input_projection.shape == (2, 6) and not model.input_projection.requires_grad
    assert model.net[0].in_features == 2 + 2 * 8 + 2 * 6
    x, sigma, label = tiny_batch()
    before = model(x, sigma, label)
    with torch.no_grad():
        model.input_projection.mul_(2)
    assert not torch.allclose(before, model(x, sigma, label))


# ------------------------------------------------------------------------------------------------
# The ensemble
# ------------------------------------------------------------------------------------------------


def test_expert_index_puts_each_boundary_in_the_higher_interval():
    ensemble = NoiseLevelExperts([tiny_denoiser(i) for i in range(3)], [0.3, 2.0])
    sigma = torch.tensor([0.01, 0.2999, 0.3, 1.0, 2.0, 50.0])
    assert ensemble.expert_index(sigma).tolist() == [0, 0, 1, 1, 2, 2]


def test_ensemble_matches_a_per_sample_loop_values_and_gradients():
    ensemble = NoiseLevelExperts([tiny_denoiser(i) for i in range(3)], [0.3, 2.0])
    x, sigma, label = tiny_batch(16)
    weights = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    out = ensemble(x, sigma, label)
    (out * weights).sum().backward()
    fast = [p.grad.clone() for p in ensemble.parameters()]
    ensemble.zero_grad()
    rows = []
    for b in range(16):
        expert = ensemble.experts[int(ensemble.expert_index(sigma[b : b + 1]))]
        rows.append(expert(x[b : b + 1], sigma[b : b + 1], label[b : b + 1]))
    naive = torch.cat(rows)
    (naive * weights).sum().backward()
    torch.testing.assert_close(out, naive, atol=1e-6, rtol=1e-6)
    for g_fast, p in zip(fast, ensemble.parameters()):
        torch.testing.assert_close(g_fast, p.grad, atol=1e-6, rtol=1e-6)


def test_training_below_the_boundary_never_touches_the_high_noise_expert():
    ensemble = NoiseLevelExperts([tiny_denoiser(0), tiny_denoiser(1)], [1.0])
    x, _, label = tiny_batch()
    g = torch.Generator().manual_seed(0)
    denoising_loss(ensemble, x, label, sigma=torch.full((12,), 0.5), generator=g).backward()
    assert all(p.grad is None for p in ensemble.experts[1].parameters())
    assert all(p.grad is not None for p in ensemble.experts[0].net.parameters())


def test_boundaries_must_fit_the_experts():
    with pytest.raises(ValueError):
        NoiseLevelExperts([tiny_denoiser(0), tiny_denoiser(1)], [])
    with pytest.raises(ValueError):
        NoiseLevelExperts([tiny_denoiser(i) for i in range(3)], [2.0, 0.3])


# ------------------------------------------------------------------------------------------------
# Binary-tree branching
# ------------------------------------------------------------------------------------------------


def test_a_split_leaves_the_function_unchanged_and_makes_independent_children():
    root = NoiseLevelExperts.from_denoiser(tiny_denoiser())
    x, sigma, label = tiny_batch(20)
    before = root(x, sigma, label)
    two = split_expert(root, 0, 0.3)
    three = split_expert(two, 1, 2.0)  # second level of the tree: split the high-noise child
    assert three.boundaries.tolist() == pytest.approx([0.3, 2.0])
    torch.testing.assert_close(two(x, sigma, label), before)
    torch.testing.assert_close(three(x, sigma, label), before)
    with torch.no_grad():
        three.experts[2].net[0].weight.add_(1.0)  # train one child: the others and the root do not move
    torch.testing.assert_close(root(x, sigma, label), before)
    low = sigma < 2.0
    torch.testing.assert_close(three(x[low], sigma[low], label[low]), before[low])
    assert not torch.allclose(three(x[~low], sigma[~low], label[~low]), before[~low])


def test_split_shares_the_other_experts_and_rejects_a_boundary_outside_the_interval():
    two = split_expert(NoiseLevelExperts.from_denoiser(tiny_denoiser()), 0, 0.3)
    three = split_expert(two, 1, 2.0)
    assert three.experts[0] is two.experts[0]
    with pytest.raises(ValueError):
        split_expert(two, 1, 0.1)  # expert 1 covers [0.3, inf)


# ------------------------------------------------------------------------------------------------
# Loss, guidance, sampler
# ------------------------------------------------------------------------------------------------


def test_denoising_loss_matches_a_manual_computation():
    model = tiny_denoiser()
    x, _, label = tiny_batch()
    sigma = torch.full((12,), 0.7)
    loss = denoising_loss(model, x, label, sigma=sigma, cond_drop=0.0, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    manual = (loss_weight(sigma) * (model(x + 0.7 * noise, sigma, label) - x).square().sum(-1)).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_cond_drop_one_uses_the_empty_token_everywhere():
    model = tiny_denoiser()
    x, _, label = tiny_batch()
    sigma = torch.full((12,), 0.7)
    dropped = denoising_loss(model, x, label, sigma=sigma, cond_drop=1.0, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.rand(12, generator=g)  # the draw that decides which labels are dropped
    noise = torch.randn(x.shape, generator=g)
    empty = torch.full_like(label, model.empty_token)
    manual = (loss_weight(sigma) * (model(x + 0.7 * noise, sigma, empty) - x).square().sum(-1)).mean()
    assert dropped.item() == pytest.approx(manual.item(), rel=1e-6)


def test_guidance_is_linear_in_w():
    ensemble = NoiseLevelExperts([tiny_denoiser(0), tiny_denoiser(1)], [0.5])
    x, sigma, label = tiny_batch()
    conditional = ensemble(x, sigma, label)
    unconditional = ensemble(x, sigma, torch.full_like(label, 4))
    torch.testing.assert_close(guided(ensemble, x, sigma, label, 1.0), conditional)
    torch.testing.assert_close(guided(ensemble, x, sigma, label, 0.0), unconditional)
    expected = unconditional + 3 * (conditional - unconditional)
    torch.testing.assert_close(guided(ensemble, x, sigma, label, 3.0), expected)


def test_karras_schedule():
    sigmas = karras_sigmas(18, EDMConfig())
    assert sigmas.shape == (19,)
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-5)
    assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-4) and sigmas[-1].item() == 0
    assert (sigmas[1:] < sigmas[:-1]).all()


class GaussianDenoiser(nn.Module):
    """Exact D for x0 ~ N(mu_c, s^2 I): mu + s^2 / (s^2 + sigma^2) (x - mu), per class; records sigmas."""

    def __init__(self, means: torch.Tensor, std: float):
        super().__init__()
        self.means, self.std, self.seen = means, std, []

    @property
    def empty_token(self) -> int:
        return self.means.shape[0] - 1

    def forward(self, x, sigma, label):
        self.seen.append(sigma.clone())
        mu = self.means[label]
        return mu + (self.std**2 / (self.std**2 + sigma**2)).unsqueeze(-1) * (x - mu)


def test_sampler_with_the_exact_denoiser_reproduces_the_gaussian():
    means = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [0.0, 0.0]])
    model = GaussianDenoiser(means, 0.3)
    label = torch.tensor([0, 1]).repeat_interleave(2000)
    x = sample(model, label, steps=32, generator=torch.Generator().manual_seed(0))
    for c in (0, 1):
        xs = x[label == c]
        torch.testing.assert_close(xs.mean(0), means[c], atol=0.03, rtol=0)
        torch.testing.assert_close(xs.std(0), torch.full((2,), 0.3), atol=0.02, rtol=0)


def test_every_sampler_call_reaches_the_expert_of_its_own_sigma():
    means = torch.zeros(3, 2)
    experts = [GaussianDenoiser(means, 0.3) for _ in range(3)]
    ensemble = NoiseLevelExperts(experts, [0.3, 2.0])
    steps = 18
    sample(ensemble, torch.zeros(5, dtype=torch.long), steps=steps, generator=torch.Generator().manual_seed(0))
    lows, highs = [0.0, 0.3, 2.0], [0.3, 2.0, math.inf]
    calls = 0
    for expert, lo, hi in zip(experts, lows, highs):
        seen = torch.cat(expert.seen) if expert.seen else torch.zeros(0)
        assert ((seen >= lo) & (seen < hi)).all()
        assert len(expert.seen) > 0
        calls += len(expert.seen)
    assert calls == 2 * steps - 1  # Heun: two calls per step, one on the last (sigma_N = 0 is never evaluated)
    smallest = min(float(torch.cat(e.seen).min()) for e in experts)
    assert smallest == pytest.approx(0.002, rel=1e-4)


# ------------------------------------------------------------------------------------------------
# MMD
# ------------------------------------------------------------------------------------------------


def test_mmd_matches_a_double_loop():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 2, generator=g), torch.randn(5, 2, generator=g) + 0.5
    h = (0.3, 1.0)
    k = lambda a, b: sum(math.exp(-float((a - b).square().sum()) / (2 * w * w)) for w in h)
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert mmd_rbf(x, y, h).item() == pytest.approx(xx + yy - 2 * xy, abs=1e-5)


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    same = mmd_rbf(a, b, (0.2, 1.0)).item()
    shifted = mmd_rbf(a, b + 0.5, (0.2, 1.0)).item()
    assert abs(same) < 0.004 < 0.03 < shifted  # the biased V-statistic would add about 2 (1/400 + 1/400) = 0.01
