"""The routing family of the core: expert choice, Soft MoE, shared experts, random token selection,
the per-modality drop report, and the defects issue 17 named (widths grouped_mm cannot take,
stride-0 gradients, torch.compile, what the balance loss counts, how noisy the second choice is).

Every oracle here is a per-token or per-expert Python loop written from the paper's equations; it
shares nothing with the library but the parameters.
"""

import math

import pytest
import torch

from reference_impls.moe import (
    ACTIVATIONS,
    DropReport,
    ExpertChoiceMoE,
    Experts,
    SoftMoE,
    SparseMoE,
    load_balancing_loss,
    route,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def expert_ffn(experts: Experts, e: int, x: torch.Tensor) -> torch.Tensor:
    act = ACTIVATIONS[experts.activation]
    return act(x @ experts.w1[e] + experts.b1[e]) @ experts.w2[e] + experts.b2[e]


# --- defects: any width, any gradient, compile ----------------------------------------------------


@pytest.mark.parametrize("d, h", [(32, 50), (30, 64), (7, 13)])
def test_any_width_runs_and_matches_the_loop(d, h):
    torch.manual_seed(0)
    moe = SparseMoE(d, h, 4, 2)
    x = torch.randn(512, d, requires_grad=True)
    out = moe(x).output  # raised "strides should be multiple of 16 bytes" before
    loop = SparseMoE(d, h, 4, 2, expert_backend="loop")
    loop.load_state_dict(moe.state_dict())
    torch.testing.assert_close(out, loop(x).output, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["auto", "loop"])
def test_experts_backward_from_a_plain_sum(backend):
    torch.manual_seed(0)
    experts = Experts(4, 32, 64, backend=backend)
    rows = torch.randn(10, 32, requires_grad=True)
    counts = torch.tensor([3, 0, 5, 2])
    experts(rows, counts).sum().backward()  # a stride-0 gradient: grouped_mm's backward refused it
    expected = torch.cat([expert_ffn(experts, e, r) for e, r in zip(range(4), rows.split([3, 0, 5, 2]))])
    grad = torch.autograd.grad(expected.sum(), rows)[0]
    torch.testing.assert_close(rows.grad, grad, atol=1e-5, rtol=1e-4)


def test_grouped_mm_refuses_clearly_where_it_cannot_run():
    experts = Experts(4, 32, 50, backend="grouped_mm")
    with pytest.raises(ValueError, match="grouped_mm cannot run"):
        experts(torch.randn(4, 32), torch.tensor([1, 1, 1, 1]))


def test_torch_compile_matches_eager_forward_and_backward():
    torch.manual_seed(0)
    moe = SparseMoE(32, 64, 4, 2, capacity_factor=1.0)
    x = torch.randn(128, 32)
    grads = []
    outs = []
    for fn in (lambda v: moe(v).output, torch.compile(lambda v: moe(v).output)):
        moe.zero_grad()
        xi = x.clone().requires_grad_()
        y = fn(xi)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in moe.parameters()])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


# --- what the balance loss counts, and how the second choice is sampled ----------------------------


def test_balance_loss_counts_first_choices():
    # every token: p = (3/4, 1/4), first choice expert 0, second expert 1.
    # first choices: f = (1, 0) -> E * sum f P = 2 * 3/4 = 1.5; all choices: f = (1/2, 1/2) -> 1.0
    moe = SparseMoE(2, 8, 2, 2, bias=False)
    with torch.no_grad():
        moe.router.weight.copy_(torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0]]).repeat(16, 1)
    assert moe(x).aux_losses["load_balance"].item() == pytest.approx(1.5)
    probs = torch.tensor([[0.75, 0.25]]).repeat(16, 1)
    index = torch.tensor([[0, 1]]).repeat(16, 1)
    assert load_balancing_loss(probs, index, 2, count="all").item() == pytest.approx(1.0)


def test_second_choice_is_sampled_from_the_softmax_of_the_other_experts():
    # Gumbel-max: P(e2 = j) = exp(z_j) / sum_{i != e1} exp(z_i). Near-noiseless sampling would give the
    # runner-up almost always.
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0]]).repeat(20_000, 1)
    r = route(z, 2, sample_second_expert=True, generator=torch.Generator().manual_seed(0))
    assert (r.expert_index[:, 0] == 0).all()
    freq = torch.bincount(r.expert_index[:, 1], minlength=4).float() / z.shape[0]
    expected = torch.tensor([0.0, *torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)])
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


def test_random_token_selection_keeps_capacity_and_varies_the_survivors():
    z = torch.zeros(64, 4)
    z[:, 0] = 5.0  # every token wants expert 0; capacity ceil(64 / 4) = 16
    kept = []
    for seed in range(3):
        r = route(z, 1, 1.0, priority="random", generator=torch.Generator().manual_seed(seed))
        assert r.expert_counts.tolist() == [16, 0, 0, 0]
        kept.append(r.keep[:, 0].clone())
    assert not torch.equal(kept[0], kept[1])
    position = route(z, 1, 1.0, priority="position")
    assert position.keep[:16, 0].all() and not position.keep[16:, 0].any()


# --- shared experts (DeepSeekMoE eq. 9) ------------------------------------------------------------


def test_shared_experts_add_the_sum_of_separate_ffns():
    torch.manual_seed(0)
    d, h, Ks = 16, 8, 2
    moe = SparseMoE(d, h, 6, 2, num_shared_experts=Ks)
    routed_only = SparseMoE(d, h, 6, 2)
    routed_only.load_state_dict({k: v for k, v in moe.state_dict().items() if not k.startswith("shared.")})
    x = torch.randn(20, d)
    shared = moe.shared
    separate = torch.zeros(20, d)
    for i in range(Ks):  # K_s FFNs of width h: rows i*h..(i+1)*h of fc1, columns of fc2
        w1, b1 = shared.fc1.weight[i * h:(i + 1) * h], shared.fc1.bias[i * h:(i + 1) * h]
        w2 = shared.fc2.weight[:, i * h:(i + 1) * h]
        separate += torch.nn.functional.gelu(x @ w1.T + b1) @ w2.T
    separate += shared.fc2.bias  # one output bias for the merged FFN
    torch.testing.assert_close(moe(x).output, routed_only(x).output + separate, atol=1e-5, rtol=1e-4)
    assert moe.router.weight.shape == (6, d)  # shared experts stay out of the router's softmax


# --- the drop report -------------------------------------------------------------------------------


def test_drop_report_counts_by_modality_expert_and_rank():
    torch.manual_seed(3)
    moe = SparseMoE(8, 16, 4, 2, capacity_factor=0.5)
    x = torch.randn(30, 8)
    modality = torch.randint(0, 3, (30,))
    out = moe(x, modality=modality, num_modalities=3)
    r, report = out.routing, out.drops
    assigned = torch.zeros(3, 4, dtype=torch.long)
    dropped = torch.zeros(3, 4, dtype=torch.long)
    by_rank = torch.zeros(3, 2, dtype=torch.long)
    fully = torch.zeros(3, dtype=torch.long)
    for t in range(30):
        m = int(modality[t])
        for j in range(2):
            e = int(r.expert_index[t, j])
            assigned[m, e] += 1
            if not r.keep[t, j]:
                dropped[m, e] += 1
                by_rank[m, j] += 1
        fully[m] += int(not r.keep[t].any())
    assert torch.equal(report.assigned, assigned) and torch.equal(report.dropped, dropped)
    assert torch.equal(report.dropped_by_rank, by_rank) and torch.equal(report.tokens_fully_dropped, fully)
    assert int(report.dropped.sum()) == out.dropped > 0
    assert report.tokens.tolist() == torch.bincount(modality, minlength=3).tolist()
    assert isinstance(DropReport.from_routing(r), DropReport)


# --- expert choice (Zhou et al. 2022) ---------------------------------------------------------------


def naive_expert_choice(moe: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    T = x.shape[0]
    S = torch.softmax(x.float() @ moe.router.weight.float().T, dim=-1)  # softmax over experts, per token
    C = moe.capacity(T)
    y = torch.zeros_like(x)
    for e in range(moe.num_experts):
        order = sorted(range(T), key=lambda t: -S[t, e].item())[:C]  # expert e picks its C best tokens
        for t in order:
            y[t] = y[t] + S[t, e] * expert_ffn(moe.experts, e, x[t:t + 1])[0]
    return y


@pytest.mark.parametrize("cf", [0.5, 1.0, 2.0])
def test_expert_choice_matches_the_per_expert_oracle(cf):
    torch.manual_seed(1)
    moe = ExpertChoiceMoE(16, 32, 4, capacity_factor=cf, min_capacity=1)
    x = torch.randn(24, 16, requires_grad=True)
    out = moe(x)
    torch.testing.assert_close(out.output, naive_expert_choice(moe, x), atol=1e-5, rtol=1e-4)
    g = torch.randn(24, 16)
    grads = torch.autograd.grad((out.output * g).sum(), [x, moe.router.weight, moe.experts.w1])
    oracle = torch.autograd.grad((naive_expert_choice(moe, x) * g).sum(), [x, moe.router.weight, moe.experts.w1])
    for a, b in zip(grads, oracle):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    C = moe.capacity(24)
    assert C == max(round(cf * 24 / 4), 1)
    assert int(out.experts_per_token.sum()) == 4 * C  # every expert exactly full
    if cf == 2.0:
        assert out.experts_per_token.max() > 2 or (out.experts_per_token == 0).any()  # uneven by design


# --- Soft MoE (Puigcerver et al.) -------------------------------------------------------------------


def naive_soft_moe(moe: SoftMoE, x: torch.Tensor) -> torch.Tensor:
    B, m, d = x.shape
    n, p = moe.num_experts, moe.slots_per_expert
    out = torch.zeros_like(x)
    for b in range(B):
        L = moe.logits(x[b:b + 1])[0]  # [m, n*p]
        D = torch.exp(L) / torch.exp(L).sum(0, keepdim=True)  # each slot: convex weights over tokens
        Cw = torch.exp(L) / torch.exp(L).sum(1, keepdim=True)  # each token: convex weights over slots
        slot_out = []
        for s in range(n * p):
            slot_in = (D[:, s:s + 1] * x[b]).sum(0, keepdim=True)
            slot_out.append(expert_ffn(moe.experts, s // p, slot_in)[0])
        out[b] = Cw @ torch.stack(slot_out)
    return out


@pytest.mark.parametrize("normalize, slots", [(True, 1), (False, 2)])
def test_soft_moe_matches_the_per_slot_oracle(normalize, slots):
    torch.manual_seed(2)
    moe = SoftMoE(8, 16, 4, slots_per_expert=slots, normalize=normalize)
    x = torch.randn(3, 5, 8, requires_grad=True)
    out = moe(x)
    torch.testing.assert_close(out.output, naive_soft_moe(moe, x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.dispatch.sum(1), torch.ones(3, 4 * slots))  # columns: over tokens
    torch.testing.assert_close(out.combine.sum(2), torch.ones(3, 5))  # rows: over all slots
    g = torch.randn_like(x)
    params = [x, moe.slots, moe.experts.w2]
    grads = torch.autograd.grad((out.output * g).sum(), params)
    oracle = torch.autograd.grad((naive_soft_moe(moe, x) * g).sum(), params)
    for a, b in zip(grads, oracle):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    assert grads[1].abs().max() > 0  # fully differentiable: the slot parameters learn


def test_soft_moe_groups_do_not_mix():
    torch.manual_seed(0)
    moe = SoftMoE(8, 16, 4)
    x = torch.randn(2, 6, 8)
    together = moe(x).output
    alone = moe(x[1:]).output
    torch.testing.assert_close(together[1:], alone)


def test_soft_moe_normalisation_keeps_dispatch_soft_as_token_norms_grow():
    torch.manual_seed(0)
    x = torch.randn(1, 64, 32)
    entropy = {}
    for normalize in (True, False):
        moe = SoftMoE(32, 16, 8, normalize=normalize)
        D = moe(16 * x).dispatch[0].detach()
        entropy[normalize] = float(-(D * D.clamp_min(1e-12).log()).sum(0).mean() / math.log(64))
    assert entropy[True] > 0.95 > entropy[False]


@pytest.mark.parametrize("device", DEVICES)
def test_routers_run_in_bf16(device):
    torch.manual_seed(0)
    dtype = torch.bfloat16
    for layer, x in ((ExpertChoiceMoE(16, 32, 4), torch.randn(32, 16)),
                     (SoftMoE(16, 32, 4), torch.randn(2, 8, 16)),
                     (SparseMoE(16, 32, 4, 2, num_shared_experts=1), torch.randn(32, 16))):
        layer = layer.to(device, dtype)
        y = layer(x.to(device, dtype)).output
        assert y.dtype == dtype and torch.isfinite(y.float()).all()


def test_unknown_expert_paths_are_refused():
    with pytest.raises(ValueError, match="unknown expert backend"):
        Experts(4, 8, 16, backend="padded_bmm")
