"""Invariants of the sparse-MoE core (research notes, reference_impls.md section 11, items 1-12).

The oracle is ``naive_moe`` below: routing and capacity written as plain Python loops over tokens, and
the experts evaluated densely on every token and masked (the obviously-correct, slow way). It shares
nothing with the library but the parameters.
"""

import math
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impls.moe import (
    ACTIVATIONS,
    Experts,
    FeedForward,
    SparseMoE,
    expert_capacity,
    grouped_mm_available,
    load_balancing_loss,
    route,
    router_z_loss,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = ["grouped_mm", "loop"]


def f32(value: float) -> float:
    """Round to the nearest float32 (an independent way to get DeepSpeed's float32 capacity)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def deepspeed_capacity(T, E, k, cf):
    """DeepSpeed v0.9.5 ``_capacity``: ``ceil((S / E) * tensor(k * cf))`` with the product in float32."""
    return math.ceil(f32(f32(T / E) * f32(k * cf)))


def naive_moe(moe: SparseMoE, x: torch.Tensor, capacity_factor=None, priority="position",
              renormalize=True, normalize_before_drop=False):
    """Python-loop routing plus compute-every-expert-then-mask. Returns (output, keep, gates)."""
    T, E, k = x.shape[0], moe.num_experts, moe.top_k
    logits = x.float() @ moe.router.weight.float().T
    p = torch.softmax(logits, -1)
    idx = p.topk(k, -1).indices
    C = None if capacity_factor is None else deepspeed_capacity(T, E, k, capacity_factor)
    order = list(range(T))
    if priority == "batch":
        order = sorted(order, key=lambda t: -p[t, idx[t, 0]].item())
    fill = [0] * E
    keep = torch.zeros(T, k, dtype=torch.bool)
    for j in range(k):  # all first choices, then all second choices
        for t in order:
            e = int(idx[t, j])
            if C is None or fill[e] < C:
                keep[t, j] = True
                fill[e] += 1
    weights = torch.zeros(T, E)  # combine weight of every (token, expert)
    for t in range(T):
        probs = [p[t, idx[t, j]] for j in range(k)]
        kept = [probs[j] * keep[t, j] for j in range(k)]
        if not renormalize or k == 1:  # Switch: a single choice keeps its raw probability
            g = kept
        elif normalize_before_drop:
            g = [kept[j] / sum(probs) for j in range(k)]
        else:
            g = [kept[j] / max(sum(kept), torch.finfo(torch.float32).eps) for j in range(k)]
        for j in range(k):
            weights[t, idx[t, j]] = g[j]
    ex, act = moe.experts, ACTIVATIONS[moe.experts.activation]
    y = torch.zeros_like(x)
    for e in range(E):
        ffn_e = act(x @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e]  # every token, then masked
        y = y + weights[:, e : e + 1].to(x) * ffn_e
    return y, keep, weights


def make_moe(d=16, h=32, E=4, k=2, seed=0, device="cpu", **kw):
    torch.manual_seed(seed)
    return SparseMoE(d, h, E, k, **kw).to(device)


# --- 1, 2: reductions to the dense FFN ------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_single_expert_is_the_dense_ffn(device, backend):
    torch.manual_seed(0)
    ffn = FeedForward(16, 32).to(device)
    moe = SparseMoE.from_dense(ffn, 1, 1, expert_backend=backend)
    x = torch.randn(3, 7, 16, device=device)
    out = moe(x)
    torch.testing.assert_close(out.output, ffn(x), atol=1e-6, rtol=0)
    assert out.aux_losses["load_balance"].item() == pytest.approx(1.0)
    torch.nn.init.zeros_(moe.router.weight)
    assert moe(x).aux_losses["z_loss"].item() == pytest.approx(0.0, abs=1e-12)  # ln(1)^2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_upcycled_moe_equals_dense_ffn(device, backend):
    torch.manual_seed(0)
    ffn = FeedForward(16, 32).to(device)
    x = torch.randn(4, 9, 16, device=device)
    # dropless, and MoE-LLaVA's eval capacity (cf 2.0 = E/k: nothing can be dropped)
    for cf in (None, 2.0):
        moe = SparseMoE.from_dense(ffn, 4, 2, capacity_factor=cf, expert_backend=backend)
        out = moe(x)
        assert out.dropped == 0
        torch.testing.assert_close(out.output, ffn(x), atol=1e-6, rtol=1e-5)
    # Switch/V-MoE raw gates scale the output by the kept probability mass instead.
    moe = SparseMoE.from_dense(ffn, 4, 2, renormalize=False, expert_backend=backend)
    out = moe(x)
    mass = out.routing.gates.sum(-1).reshape(4, 9, 1)
    assert (mass < 1).all()
    torch.testing.assert_close(out.output, mass * ffn(x), atol=1e-6, rtol=1e-5)


def test_upcycled_output_drops_to_zero_for_a_fully_dropped_token():
    torch.manual_seed(0)
    ffn = FeedForward(8, 16)
    moe = SparseMoE.from_dense(ffn, 4, 2, capacity_factor=0.25)
    x = torch.randn(32, 8)
    out = moe(x)
    all_dropped = ~out.routing.keep.any(-1)
    assert all_dropped.any() and out.dropped > 0
    assert out.output[all_dropped].abs().max() == 0
    survivors = ~all_dropped
    torch.testing.assert_close(out.output[survivors], ffn(x)[survivors], atol=1e-6, rtol=1e-5)


# --- 3: gates -------------------------------------------------------------------------------------


def test_renormalised_gates_sum_to_one_or_zero():
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    r = route(logits, 2, capacity_factor=0.5)
    sums = r.gates.sum(-1)
    kept_any = r.keep.any(-1)
    assert (~kept_any).any() and kept_any.any()
    torch.testing.assert_close(sums[kept_any], torch.ones(int(kept_any.sum())))
    assert (sums[~kept_any] == 0).all()
    # DeepSpeed: a token that lost only its second choice gives the first weight exactly 1.0
    lost_second = r.keep[:, 0] & ~r.keep[:, 1]
    assert lost_second.any() and (r.gates[lost_second, 0] == 1).all()
    # Tutel normalises before dropping: the same token keeps p1 / (p1 + p2) < 1
    t = route(logits, 2, capacity_factor=0.5, normalize_before_drop=True)
    p = torch.softmax(logits, -1).gather(-1, t.expert_index)
    torch.testing.assert_close(t.gates[lost_second, 0], (p[:, 0] / p.sum(-1))[lost_second])
    assert (t.gates[lost_second, 0] < 1).all()


# --- 4: gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("renormalize", [True, False])
def test_top1_gate_is_the_raw_probability_so_the_router_learns(device, renormalize):
    # Switch eq. 2 / DeepSpeed top1gating: y = p_i(x) E_i(x). Renormalising one choice would give
    # exactly 1 and cut the router off from the task loss.
    moe = make_moe(E=4, k=1, device=device, renormalize=renormalize)
    x = torch.randn(40, 16, device=device)
    out = moe(x)
    p = torch.softmax(x.float() @ moe.router.weight.float().T, -1).max(-1).values
    torch.testing.assert_close(out.routing.gates[:, 0], p)
    assert (p < 0.99).all()
    out.output.pow(2).sum().backward()
    grad = moe.router.weight.grad.clone()
    moe.zero_grad()
    naive_moe(moe, x.cpu() if device == "cpu" else x)[0].pow(2).sum().backward()
    torch.testing.assert_close(grad, moe.router.weight.grad, atol=1e-5, rtol=1e-4)
    assert grad.norm() > 1e-3 * moe.router.weight.norm()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_router_and_match_the_naive_loop(backend):
    moe = make_moe(E=4, k=2, capacity_factor=0.75, expert_backend=backend)
    x = torch.randn(48, 16, requires_grad=True)
    g = torch.randn(48, 16)
    out = moe(x)
    assert out.dropped > 0
    out.output.backward(g)
    grads = {n: p.grad.clone() for n, p in moe.named_parameters()}
    grad_x = x.grad.clone()
    assert grads["router.weight"].abs().max() > 1e-4
    moe.zero_grad()
    x.grad = None
    naive_moe(moe, x, capacity_factor=0.75)[0].backward(g)
    for n, p in moe.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    torch.testing.assert_close(grad_x, x.grad, atol=1e-5, rtol=1e-4)


# --- 5, 6: losses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("E", [4, 8])
def test_load_balancing_loss_values(E):
    T = 8 * E
    balanced_index = torch.stack([torch.arange(T) % E, (torch.arange(T) + 1) % E], -1)
    any_probs = torch.softmax(torch.randn(T, E), -1)
    assert load_balancing_loss(any_probs, balanced_index, E).item() == pytest.approx(1.0)  # uniform f
    assert load_balancing_loss(any_probs, balanced_index, E, count="all").item() == pytest.approx(1.0)
    uniform_probs = torch.full((T, E), 1.0 / E)
    skewed_index = torch.zeros(T, 2, dtype=torch.long)
    assert load_balancing_loss(uniform_probs, skewed_index, E).item() == pytest.approx(1.0)  # uniform P
    collapsed_probs = torch.zeros(T, E)
    collapsed_probs[:, 0] = 1
    assert load_balancing_loss(collapsed_probs, skewed_index, E).item() == pytest.approx(E)
    # gradient flows through P only: d/dP_i = E f_i / T per token
    probs = any_probs.clone().requires_grad_()
    load_balancing_loss(probs, skewed_index, E).backward()
    expected = torch.zeros(T, E)
    expected[:, 0] = E / T
    torch.testing.assert_close(probs.grad, expected)


@pytest.mark.parametrize("E, expected", [(4, 1.9218), (8, 4.3241), (64, 17.2964)])
def test_z_loss_at_zero_logits_is_log_E_squared(E, expected):
    assert router_z_loss(torch.zeros(10, E)).item() == pytest.approx(expected, abs=1e-4)
    assert expected == pytest.approx(math.log(E) ** 2, abs=1e-4)


def test_z_loss_sees_a_logit_shift_that_routing_ignores():
    logits = torch.randn(32, 8)
    a, b = route(logits, 2, 1.0), route(logits + 5.0, 2, 1.0)
    assert torch.equal(a.expert_index, b.expert_index) and torch.equal(a.keep, b.keep)
    torch.testing.assert_close(a.gates, b.gates)
    lse = torch.logsumexp(logits, -1)
    assert router_z_loss(logits + 5.0).item() == pytest.approx((lse + 5).square().mean().item(), rel=1e-5)
    assert router_z_loss(logits + 5.0) > router_z_loss(logits) + 10


# --- 7, 12: capacity ------------------------------------------------------------------------------


def test_capacity_numbers():
    assert expert_capacity(1024, 4, 2, 1.5) == 768  # MoE-LLaVA training
    assert expert_capacity(1024, 4, 2, 2.0) == 1024  # MoE-LLaVA eval: = S, dropless
    assert expert_capacity(1024, 4, 1, 1.5) == 384  # DeepSpeed top1gating
    assert expert_capacity(10, 4, 1, 1.0) == 3  # ceil(2.5), where floor would give 2
    assert expert_capacity(9, 4, 1, 1.0, arithmetic="exact") == 3  # ceil(2.25)
    assert expert_capacity(8, 64, 2, 1.0, min_capacity=4) == 4
    assert expert_capacity(8, 4, 2, None) is None
    assert route(torch.randn(1024, 4), 2, 1.5).capacity == 768


def test_capacity_follows_deepspeeds_float32_arithmetic():
    # 26.25 * float32(2.4) = 63.0000025 in float32, so DeepSpeed reserves 64 slots; exactly it is 63.
    assert expert_capacity(210, 8, 2, 1.2) == 64
    assert expert_capacity(210, 8, 2, 1.2, arithmetic="exact") == 63
    differ = 0
    for T in range(1, 129):
        for E in range(1, 129):
            assert expert_capacity(T, E, 2, 1.2) == deepspeed_capacity(T, E, 2, 1.2), (T, E)
            differ += expert_capacity(T, E, 2, 1.2) != expert_capacity(T, E, 2, 1.2, arithmetic="exact")
    assert differ > 0


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 80), E=st.integers(2, 12), k=st.integers(1, 3), seed=st.integers(0, 10_000),
       cf=st.floats(0.1, 3.0))
def test_capacity_is_respected_and_binds_only_when_needed(T, E, k, seed, cf):
    k = min(k, E)
    logits = torch.randn(T, E, generator=torch.Generator().manual_seed(seed))
    r = route(logits, k, cf)
    counts = r.expert_counts
    assert counts.max() <= r.capacity
    assert int(counts.sum()) + r.dropped == T * k
    needed = torch.bincount(r.expert_index.reshape(-1), minlength=E)
    # an expert drops exactly what exceeds its capacity
    torch.testing.assert_close(counts, needed.clamp(max=r.capacity))
    if cf >= E / k:  # C >= T: nothing can drop
        assert r.dropped == 0
    if needed.max() <= r.capacity:  # item 12: capacity mode == dropless
        free = route(logits, k, None)
        assert torch.equal(free.keep, r.keep)
        torch.testing.assert_close(free.gates, r.gates)


# --- 8, 9: token independence and permutation equivariance ----------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropless_outputs_depend_only_on_the_token(backend):
    moe = make_moe(E=8, k=2, expert_backend=backend)
    x = torch.randn(30, 16)
    full = moe(x).output
    one_by_one = torch.cat([moe(x[t : t + 1]).output for t in range(30)])
    torch.testing.assert_close(full, one_by_one, atol=1e-6, rtol=1e-5)
    perm = torch.randperm(30)
    torch.testing.assert_close(moe(x[perm]).output, full[perm], atol=1e-6, rtol=1e-5)


def test_binding_capacity_makes_routing_batch_dependent():
    moe = make_moe(E=4, k=2, capacity_factor=0.5)
    x = torch.randn(40, 16)
    full = moe(x)
    assert full.dropped > 0
    split = torch.cat([moe(x[:20]).output, moe(x[20:]).output])
    assert (full.output - split).abs().max() > 1e-3


def test_permutation_equivariance_under_capacity_holds_for_bpr_only():
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    perm = torch.flip(torch.arange(64), [0])
    bpr = make_moe(E=4, k=2, capacity_factor=0.5, priority="batch")
    assert bpr(x).dropped > 0
    torch.testing.assert_close(bpr(x[perm]).output, bpr(x).output[perm], atol=1e-6, rtol=1e-5)
    pos = make_moe(E=4, k=2, capacity_factor=0.5, priority="position")
    assert (pos(x[perm]).output - pos(x).output[perm]).abs().max() > 1e-3


# --- 10: priority ---------------------------------------------------------------------------------


def test_position_priority_first_choices_then_earlier_tokens():
    logits = torch.randn(200, 4, generator=torch.Generator().manual_seed(4))
    r = route(logits, 2, 0.6)
    for e in range(4):
        first = r.position[:, 0][r.expert_index[:, 0] == e]
        second = r.position[:, 1][r.expert_index[:, 1] == e]
        assert torch.equal(first, torch.arange(first.numel()))  # in token order, from slot 0
        assert torch.equal(second, torch.arange(second.numel()) + first.numel())  # queued after
        kept_second = r.position[:, 1][(r.expert_index[:, 1] == e) & r.keep[:, 1]]
        if kept_second.numel():
            assert kept_second.min() > first.max()
        # who is dropped: the latest positions
        dropped_tokens = torch.nonzero((r.expert_index[:, 0] == e) & ~r.keep[:, 0]).flatten()
        kept_tokens = torch.nonzero((r.expert_index[:, 0] == e) & r.keep[:, 0]).flatten()
        if dropped_tokens.numel():
            assert dropped_tokens.min() > kept_tokens.max()


def test_batch_priority_keeps_the_most_confident_tokens():
    logits = 3 * torch.randn(200, 4, generator=torch.Generator().manual_seed(5))
    r = route(logits, 2, 0.5, priority="batch")
    top1 = r.router_probs.max(-1).values
    assert r.dropped > 0
    for e in range(4):
        mine = r.expert_index[:, 0] == e
        kept, lost = top1[mine & r.keep[:, 0]], top1[mine & ~r.keep[:, 0]]
        if lost.numel():
            assert kept.min() >= lost.max()
            assert not r.keep[:, 1][r.expert_index[:, 1] == e].any()  # full: no second choice fits
    # with a capacity that never binds, BPR and position priority agree
    a, b = route(logits, 2, None, priority="batch"), route(logits, 2, None)
    assert torch.equal(a.keep, b.keep)
    torch.testing.assert_close(a.gates, b.gates)


# --- 11: implementation equivalence ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "E, k, cf, priority, renormalize, before",
    [
        (4, 2, None, "position", True, False),
        (4, 2, 1.5, "position", True, False),
        (4, 2, 0.5, "position", True, False),
        (4, 2, 0.5, "position", True, True),
        (8, 2, 0.75, "batch", True, False),
        (8, 1, 1.0, "position", False, False),
        (16, 3, 0.5, "batch", False, False),
        (64, 2, None, "position", True, False),
    ],
)
def test_sort_dispatch_equals_naive_loop(device, backend, E, k, cf, priority, renormalize, before):
    moe = make_moe(E=E, k=k, capacity_factor=cf, priority=priority, renormalize=renormalize,
                   normalize_before_drop=before, expert_backend=backend)
    x = torch.randn(96, 16)
    expected, keep, weights = naive_moe(moe, x, cf, priority, renormalize, before)
    out = moe.to(device)(x.to(device))
    assert torch.equal(out.routing.keep.cpu(), keep)
    assert out.dropped == int((~keep).sum())
    torch.testing.assert_close(out.expert_counts.cpu(), torch.bincount(
        out.routing.expert_index.cpu()[keep], minlength=E))
    torch.testing.assert_close(out.output.cpu(), expected, atol=1e-6, rtol=1e-5)


# --- 11b: every expert path, values and gradients, against a per-row oracle -----------------------


def per_row_oracle(experts: Experts, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each row through its own expert's FFN, one row at a time; shares only the parameters."""
    act = ACTIVATIONS[experts.activation]
    expert_of_row = torch.repeat_interleave(torch.arange(experts.num_experts), counts).tolist()
    out = []
    for row, e in zip(rows, expert_of_row):
        hidden = row @ experts.w1[e] + (experts.b1[e] if experts.b1 is not None else 0)
        out.append(act(hidden) @ experts.w2[e] + (experts.b2[e] if experts.b2 is not None else 0))
    return torch.stack(out) if out else rows.new_zeros(0, experts.d_model)


@pytest.mark.parametrize("backend", ["auto", "grouped_mm", "loop"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("E, d, h", [(1, 16, 32), (6, 16, 32), (64, 16, 32), (5, 7, 13)])
def test_expert_paths_match_a_per_row_oracle_in_values_and_gradients(backend, bias, E, d, h):
    torch.manual_seed(E + d)
    experts = Experts(E, d, h, bias=bias, backend=backend)
    counts = torch.randint(2, 6, (E,))
    if E > 1:
        counts[0] = counts[E // 2] = 0  # empty experts, first and in the middle
    counts[-1] = 9  # and one larger than the rest
    rows = torch.randn(int(counts.sum()), d, requires_grad=True)
    if backend == "grouped_mm" and not grouped_mm_available(rows, h):
        with pytest.raises(ValueError, match="grouped_mm cannot run here"):  # forced, it says so; auto falls back
            experts(rows, counts)
        return
    upstream = torch.randn(rows.shape[0], d)
    params = [p for p in (experts.w1, experts.b1, experts.w2, experts.b2) if p is not None]

    out = experts(rows, counts)
    grads = torch.autograd.grad(out, [rows, *params], upstream)
    expected = per_row_oracle(experts, rows, counts)
    expected_grads = torch.autograd.grad(expected, [rows, *params], upstream)

    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    for name, got, want in zip(["x", "w1", "b1", "w2", "b2"] if bias else ["x", "w1", "w2"], grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=name)
    # an expert without rows gets exactly zero gradient on every path
    empty = (counts == 0).nonzero().flatten()
    for got in grads[1:]:
        assert (got[empty] == 0).all()


@pytest.mark.parametrize("backend", ["auto", "grouped_mm", "loop"])
def test_expert_paths_take_zero_rows(backend):
    experts = Experts(4, 16, 32, backend=backend)
    rows = torch.randn(0, 16, requires_grad=True)
    out = experts(rows, torch.zeros(4, dtype=torch.long))
    assert out.shape == (0, 16)
    out.sum().backward()
    assert rows.grad is not None and rows.grad.shape == (0, 16)
    assert all(p.grad is None or not p.grad.any() for p in experts.parameters())


# --- second-expert sampling, train/eval capacity, dtypes ------------------------------------------


def test_second_expert_sampling_modes():
    x = torch.randn(256, 16)
    off = make_moe(E=8, k=2).eval()
    assert torch.equal(off(x).routing.expert_index, off(x).routing.expert_index)
    always = make_moe(E=8, k=2, second_expert_sampling="always").eval()  # DeepSpeed v0.9.5
    a, b = always(x).routing, always(x).routing
    assert torch.equal(a.expert_index[:, 0], b.expert_index[:, 0])  # first choice: no noise
    assert not torch.equal(a.expert_index[:, 1], b.expert_index[:, 1])  # second: sampled
    assert (a.expert_index[:, 0] != a.expert_index[:, 1]).all()
    torch.testing.assert_close(a.gates.sum(-1), torch.ones(256))
    train_only = make_moe(E=8, k=2, second_expert_sampling="train")
    train_only.eval()
    assert torch.equal(train_only(x).routing.expert_index, off(x).routing.expert_index)
    train_only.train()
    assert not torch.equal(train_only(x).routing.expert_index, train_only(x).routing.expert_index)


def test_eval_capacity_factor():
    moe = make_moe(E=4, k=2, capacity_factor=0.5, eval_capacity_factor=2.0)
    x = torch.randn(64, 16)
    assert moe.train()(x).routing.capacity == 16
    assert moe.eval()(x).routing.capacity == 64
    same = make_moe(E=4, k=2, capacity_factor=0.5)
    assert same.eval()(x).routing.capacity == 16


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_runs_and_router_stays_fp32(device):
    moe = make_moe(E=4, k=2, device=device).to(torch.bfloat16)
    x = torch.randn(32, 16, device=device, dtype=torch.bfloat16, requires_grad=True)
    out = moe(x)
    assert out.output.dtype == torch.bfloat16 and out.router_logits.dtype == torch.float32
    out.output.float().backward(torch.randn(32, 16, device=device))
    assert moe.experts.w1.grad is not None and torch.isfinite(x.grad.float()).all()


def test_an_empty_batch_gives_zero_losses_that_backpropagate():
    """A rank's empty micro-batch (T = 0) must not turn the summed auxiliary losses into NaN."""
    torch.manual_seed(0)
    layer = SparseMoE(8, 16, 4, 2, capacity_factor=1.25)
    empty = layer(torch.zeros(0, 8, requires_grad=True))
    assert empty.output.shape == (0, 8) and int(empty.expert_counts.sum()) == 0
    assert {k: v.item() for k, v in empty.aux_losses.items()} == {"load_balance": 0.0, "z_loss": 0.0}
    assert all(v.requires_grad for v in empty.aux_losses.values())
    full = layer(torch.randn(6, 8))
    total = sum(full.aux_losses.values()) + sum(empty.aux_losses.values())
    total.backward()
    assert torch.isfinite(total) and layer.router.weight.grad is not None
    assert torch.isfinite(layer.router.weight.grad).all()
