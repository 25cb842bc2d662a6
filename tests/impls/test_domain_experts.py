"""Tests for reference_impls/domain_experts.py (Med-MoE, arXiv 2404.10237).

Oracles: a per-expert loop for the layer (values and gradients), the unweighted meta-expert sum of the
official ``moe/layer.py``, a brute-force matching for the domain-expert agreement. Properties: the
stage-3 router is a frozen copy and the balance loss cannot move it; upcycling doubles the FFN branch
(routed copies with gates summing to 1, plus the meta copy); a supervised router learns the domains.
"""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from reference_impls.domain_experts import (
    DomainExpertsLayer,
    DomainRegressor,
    active_ffn_parameters,
    domain_expert_agreement,
    router_domain_loss,
)
from reference_impls.moe import FeedForward

D, H, E = 8, 12, 4


def tiny_layer(seed: int = 0, **kwargs) -> DomainExpertsLayer:
    torch.manual_seed(seed)
    return DomainExpertsLayer(D, H, E, 2, **kwargs)


def naive_layer(layer: DomainExpertsLayer, x):
    probs = torch.softmax(layer.router(x), -1)
    top = probs.topk(layer.top_k, -1)
    gates = top.values / top.values.sum(-1, keepdim=True)
    ex = layer.experts
    rows = []
    for b in range(x.shape[0]):
        y = layer.meta(x[b]) if layer.meta is not None else torch.zeros(D)
        for j in range(layer.top_k):
            e = int(top.indices[b, j])
            y = y + gates[b, j] * (F.gelu(x[b] @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e])
        rows.append(y)
    return torch.stack(rows)


@pytest.mark.parametrize("meta", [True, False])
def test_layer_matches_a_per_expert_loop_values_and_gradients(meta):
    layer = tiny_layer(meta_expert=meta)
    x = torch.randn(10, D, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(layer)
    out = layer(x).output
    ref = naive_layer(twin, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for (name, p), q in zip(layer.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_router_has_a_bias_and_routes_top2_without_drops():
    layer = tiny_layer()
    assert layer.router.bias is not None
    out = layer(torch.randn(64, D))
    assert out.routing.expert_index.shape == (64, 2) and out.routing.keep.all()
    torch.testing.assert_close(out.routing.gates.sum(-1), torch.ones(64))


def test_upcycling_doubles_the_ffn_branch():
    # Routed experts are copies of the dense FFN with gates summing to 1, and the meta expert is another
    # copy added without a weight (moe/layer.py: output = output + mea_output): at the moment of
    # upcycling the layer computes 2 * FFN(x), not FFN(x).
    torch.manual_seed(0)
    ffn = FeedForward(D, H)
    x = torch.randn(20, D)
    with_meta = DomainExpertsLayer.from_dense(ffn, E, 2)
    torch.testing.assert_close(with_meta(x).output, 2 * ffn(x), atol=1e-5, rtol=1e-5)
    without_meta = DomainExpertsLayer.from_dense(ffn, E, 2, meta_expert=False)
    torch.testing.assert_close(without_meta(x).output, ffn(x), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        with_meta.meta.fc1.weight.add_(1.0)  # the meta expert is a copy, not the dense module itself
    assert not torch.equal(with_meta.meta.fc1.weight, ffn.fc1.weight)


def test_stage3_router_is_a_frozen_copy_and_the_balance_loss_cannot_move_it():
    torch.manual_seed(0)
    router = torch.nn.Linear(D, E)
    layer = DomainExpertsLayer.from_dense(FeedForward(D, H), E, 2, router=router)
    assert not any(p.requires_grad for p in layer.router.parameters())
    torch.testing.assert_close(layer.router.weight, router.weight)
    assert layer.router.weight is not router.weight
    out = layer(torch.randn(32, D))
    (out.output.square().mean() + 0.01 * out.aux_losses["load_balance"]).backward()
    assert layer.router.weight.grad is None and layer.router.bias.grad is None
    assert layer.experts.w1.grad is not None and layer.meta.fc1.weight.grad is not None
    assert not out.aux_losses["load_balance"].requires_grad  # nothing trainable behind it


def test_a_trainable_router_gets_the_task_gradient():
    layer = tiny_layer()
    layer(torch.randn(32, D)).output.square().mean().backward()
    assert layer.router.weight.grad.abs().max() > 1e-5


def test_router_domain_loss_is_cross_entropy():
    logits, domains = torch.randn(7, E), torch.randint(0, E, (7,))
    assert router_domain_loss(logits, domains).item() == pytest.approx(F.cross_entropy(logits, domains).item())


def test_agreement_finds_the_best_matching():
    domains = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    same = domains.unsqueeze(-1)
    assert domain_expert_agreement(same, domains, 4)[0] == 1.0
    permuted = torch.tensor([2, 3, 0, 1])[domains].unsqueeze(-1)
    assert domain_expert_agreement(permuted, domains, 4)[0] == 1.0
    collapsed = torch.zeros(8, 1, dtype=torch.long)
    assert domain_expert_agreement(collapsed, domains, 4)[0] == pytest.approx(3 / 8)  # the largest domain
    g = torch.Generator().manual_seed(0)
    random = torch.randint(0, 4, (8, 1), generator=g)
    score, table = domain_expert_agreement(random, domains, 4)
    assert table.sum() == 8 and table.shape == (4, 4)
    brute = max(sum(int(table[d, p[d]]) for d in range(4)) for p in itertools.permutations(range(4))) / 8
    assert score == pytest.approx(brute)


def test_active_parameters_count_k_experts_the_meta_expert_and_the_router():
    layer = tiny_layer()
    per_expert = D * H + H + H * D + D
    assert active_ffn_parameters(layer) == 2 * per_expert + per_expert + (D * E + E)
    assert active_ffn_parameters(FeedForward(D, 3 * H)) == 2 * D * 3 * H + 3 * H + D


def test_regressor_upcycles_once_and_the_router_learns_separable_domains():
    torch.manual_seed(0)
    model = DomainRegressor(6, 2, d_model=D, d_hidden=H)
    g = torch.Generator().manual_seed(0)
    domains = torch.randint(0, E, (400,), generator=g)
    x = torch.cat([torch.randn(400, 2, generator=g), 3 * F.one_hot(domains, E).float()], -1)
    router = torch.nn.Linear(D, E)
    opt = torch.optim.Adam(router.parameters(), lr=0.05)
    with torch.no_grad():
        features = model.hidden(x)
    for _ in range(100):
        loss = router_domain_loss(router(features), domains)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.upcycle(E, 2, router=router)
    with pytest.raises(ValueError):
        model.upcycle(E, 2)
    prediction, moe = model(x)
    assert prediction.shape == (400, 2)
    assert domain_expert_agreement(moe.routing.expert_index, domains, E)[0] == 1.0
    assert (moe.routing.expert_index[:, 0] == domains).all()  # expert e is the router's class e
