"""Tests for reference_impls/mixture_of_depths.py: a Mixture-of-Depths block applied to visual tokens.

A naive per-sequence oracle (explicit top-C by sorting, explicit attention over the selected tokens in
order) checks values and gradients. The rest checks what the method is about: only C routed tokens go
through the block, skipped tokens pass unchanged and influence nothing, text tokens are always processed,
the router is on the gradient path only through the output scaling, top-C is non-causal while the
predictor and router rules are causal, and the analytical FLOPs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reference_impls.mixture_of_depths import MoDBlock, block_flops, mod_block_flops

D, HEADS, HIDDEN = 8, 2, 16


def make_block(seed=0, **kwargs) -> MoDBlock:
    torch.manual_seed(seed)
    block = MoDBlock(D, HEADS, HIDDEN, **kwargs)
    with torch.no_grad():
        block.router.weight.normal_(0.0, 1.0)  # distinct, O(1) router scores
    return block


def batch(B=3, text=3, visual=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, text + visual, D, generator=g)
    skippable = torch.zeros(B, text + visual, dtype=torch.bool)
    skippable[:, text:] = True
    return x, skippable


def naive_attention(block: MoDBlock, h):
    """softmax(q k^T / sqrt(d_h) + mask) v per head, explicit, for one sequence ``h [K, d]``."""
    K = h.shape[0]
    dh = D // HEADS
    q, k, v = block.qkv(h).split(D, dim=-1)
    heads = []
    for i in range(HEADS):
        sl = slice(i * dh, (i + 1) * dh)
        scores = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
        if block.causal:
            scores = scores.masked_fill(torch.ones(K, K, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v[:, sl])
    return block.proj(torch.cat(heads, -1))


def oracle(block: MoDBlock, x, skippable, processed=None):
    """Per sequence: choose the top-C skippable tokens by sorting r (unless ``processed`` is given),
    run the block on the processed tokens in their original order, add the weighted update."""
    if skippable is None:
        skippable = torch.ones(x.shape[:2], dtype=torch.bool)
    out = []
    for b in range(x.shape[0]):
        r = x[b] @ block.router.weight[0]
        if processed is None:
            cand = [i for i in range(x.shape[1]) if skippable[b, i]]
            C = math.ceil(block.capacity * len(cand) - 1e-9)
            top = sorted(cand, key=lambda i: -float(r[i].detach()))[:C]
            keep = sorted(set(top) | {i for i in range(x.shape[1]) if not skippable[b, i]})
        else:
            keep = processed[b].nonzero().squeeze(1).tolist()
        xs = x[b, keep]
        a = naive_attention(block, block.ln_attn(xs))
        m = block.mlp(block.ln_mlp(xs + a))
        w = torch.sigmoid(r[keep]) if block.router_weight == "sigmoid" else r[keep]
        w = torch.where(skippable[b, keep], w, torch.ones_like(w)).unsqueeze(-1)
        update = w * (a + m) if block.scale == "block" else a + w * m
        row = x[b].clone()
        row[keep] = row[keep] + update
        out.append(row)
    return torch.stack(out)


def assert_matches_oracle(block, x, skippable, routing="topk"):
    """Top-C: the oracle chooses the tokens itself. Causal rules: the oracle is given the block's
    per-token decisions (they depend on each token alone) and checks the computation on them."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = block(x1, skippable, routing=routing)
    ref = oracle(block, x2, skippable, None if routing == "topk" else out.processed)
    torch.testing.assert_close(out.output, ref, atol=1e-5, rtol=1e-5)
    weight = torch.randn_like(ref)
    params = [p for n, p in block.named_parameters() if not n.startswith("predictor")]
    grads = torch.autograd.grad((out.output * weight).sum(), [x1, *params])
    grads_ref = torch.autograd.grad((ref * weight).sum(), [x2, *params])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return out


@pytest.mark.parametrize("scale", ["block", "mlp"])
@pytest.mark.parametrize("router_weight", ["raw", "sigmoid"])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_per_sequence_oracle_values_and_gradients(scale, router_weight, causal):
    block = make_block(capacity=0.3, scale=scale, router_weight=router_weight, causal=causal)
    x, skippable = batch()
    out = assert_matches_oracle(block, x, skippable)
    assert out.capacity == 3  # ceil(0.3 * 10)


def test_plain_mod_routes_every_token():
    block = make_block(capacity=0.125)
    x, _ = batch(text=0, visual=16)
    out = assert_matches_oracle(block, x, None)
    assert out.capacity == 2
    assert out.processed.sum(1).tolist() == [2, 2, 2]


@pytest.mark.parametrize("routing", ["router", "predictor"])
def test_causal_rules_with_unequal_counts_match_the_oracle(routing):
    block = make_block(capacity=0.25, router_weight="sigmoid")
    x, skippable = batch(B=4, visual=12, seed=5)
    out = assert_matches_oracle(block, x, skippable, routing=routing)
    counts = out.processed.sum(1)
    assert len(set(counts.tolist())) > 1  # rows differ, so the padded gather was exercised
    rule = out.router_logits > 0 if routing == "router" else out.predictor_logits > 0
    assert torch.equal(out.processed, ~skippable | (skippable & rule))


def test_only_top_c_visual_tokens_and_all_text_tokens_are_processed():
    block = make_block(capacity=0.25)
    x, skippable = batch(B=4, text=3, visual=16)
    with torch.no_grad():  # make the text tokens' router scores the lowest of all: they still go through
        x[:, :3] = -5.0 * block.router.weight[0] / block.router.weight[0].norm()
    out = block(x, skippable)
    assert out.processed[:, :3].all()
    assert out.processed[:, 3:].sum(1).tolist() == [4, 4, 4, 4]  # C = ceil(0.25 * 16)
    r = out.router_logits[:, 3:]
    kept, skipped = out.processed[:, 3:], ~out.processed[:, 3:]
    for b in range(4):  # every kept visual token outranks every skipped one
        assert r[b][kept[b]].min() > r[b][skipped[b]].max()
    assert torch.equal(out.topk, skippable & out.processed)


def test_skipped_tokens_pass_unchanged_and_influence_nothing():
    block = make_block(capacity=0.25)
    x, skippable = batch(B=2, visual=12)
    out = block(x, skippable)
    skipped = ~out.processed
    assert torch.equal(out.output[skipped], x[skipped])  # x_i' = x_i exactly
    # Change the skipped tokens along a direction orthogonal to the router (ranking unchanged):
    w = block.router.weight[0].detach()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    noise = noise - (noise @ w).unsqueeze(-1) * w / w.dot(w)
    x2 = torch.where(skipped.unsqueeze(-1), x + 3 * noise, x)
    out2 = block(x2, skippable)
    assert torch.equal(out2.processed, out.processed)
    torch.testing.assert_close(out2.output[~skipped], out.output[~skipped])
    # and no gradient flows from the processed tokens' outputs into the skipped tokens
    xg = x.clone().requires_grad_()
    block(xg, skippable).output[~skipped].sum().backward()
    assert torch.count_nonzero(xg.grad[skipped]) == 0


def test_full_capacity_without_router_scaling_is_the_dense_block():
    block = make_block(capacity=1.0, scale_by_router=False)
    x, skippable = batch()
    routed = block(x, skippable).output
    dense = block(x, torch.zeros_like(skippable)).output  # nothing skippable: a plain pre-LN block
    torch.testing.assert_close(routed, dense)
    h = block.ln_attn(x[0])
    a = naive_attention(block, h)
    torch.testing.assert_close(dense[0], x[0] + a + block.mlp(block.ln_mlp(x[0] + a)), atol=1e-5, rtol=1e-5)


def test_router_gets_task_gradient_only_through_the_output_scaling():
    x, skippable = batch()
    for scale_by_router, expect_gradient in ((True, True), (False, False)):
        block = make_block(capacity=0.3, scale_by_router=scale_by_router)
        block(x, skippable).output.pow(2).sum().backward()
        grad = block.router.weight.grad
        has = grad is not None and torch.count_nonzero(grad) > 0
        assert has == expect_gradient


def test_top_c_is_non_causal_and_the_predictor_rule_is_causal():
    block = make_block(capacity=0.25, causal=True)
    x, skippable = batch(B=1, text=2, visual=12, seed=3)
    out = block(x, skippable)
    # Push the last token's router score to the top: it evicts an earlier token from the top-C, whose
    # output changes although it comes *before* the edited token.
    w = block.router.weight[0].detach()
    x2 = x.clone()
    x2[0, -1] = 10 * w / w.norm()
    out2 = block(x2, skippable)
    assert not torch.allclose(out2.output[0, :-1], out.output[0, :-1])
    # With the causal rules, each token decides alone and attention is causal: the past is untouched.
    for routing in ("predictor", "router"):
        a = block(x, skippable, routing=routing).output[0, :-1]
        b = block(x2, skippable, routing=routing).output[0, :-1]
        torch.testing.assert_close(a, b)


def test_bce_losses_and_predictor_stop_gradient():
    block = make_block(capacity=0.25)
    x, skippable = batch(B=2, visual=12)
    xg = x.clone().requires_grad_()
    out = block(xg, skippable)
    target = out.topk.float()
    manual = F.binary_cross_entropy_with_logits(out.router_logits[skippable], target[skippable])
    assert out.aux_losses["router_bce"].item() == pytest.approx(manual.item(), abs=1e-6)
    manual = F.binary_cross_entropy_with_logits(out.predictor_logits[skippable], target[skippable])
    assert out.aux_losses["predictor_bce"].item() == pytest.approx(manual.item(), abs=1e-6)
    assert not out.topk[~skippable].any() and out.topk.sum().item() == 2 * 3
    out.aux_losses["predictor_bce"].backward()
    assert xg.grad is None or torch.count_nonzero(xg.grad) == 0  # the predictor's input is detached
    assert block.router.weight.grad is None
    assert all(p.grad is not None for p in block.predictor.parameters())


def test_predictor_learns_membership():
    # The predictor sees single tokens, yet top-C membership is decided relative to the whole sequence;
    # with a linear router it is still nearly a threshold on the token's own score, so a short fit of the
    # predictor's BCE loss reaches high accuracy on fresh sequences (the paper: "very high accuracy").
    block = make_block(capacity=0.25)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, D, generator=g)
    with torch.no_grad():
        target = block(x).topk.float()
    optimiser = torch.optim.Adam(block.predictor.parameters(), lr=2e-2)
    for _ in range(100):  # the same BCE as aux_losses["predictor_bce"], without re-running the block
        loss = F.binary_cross_entropy_with_logits(block.predictor(x).squeeze(-1), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    fresh = block(torch.randn(64, 16, D, generator=g))
    accuracy = ((fresh.predictor_logits > 0) == fresh.topk).float().mean().item()
    assert accuracy > 0.9


def test_random_selection_ignores_the_router():
    block = make_block(capacity=0.25, selection="random")
    x, skippable = batch(B=200, visual=12)
    out = block(x, skippable, generator=torch.Generator().manual_seed(0))
    assert out.processed[:, 3:].sum(1).eq(3).all()
    # learned top-C would always take the highest score; random picks it only ~C/n = 1/4 of the time
    best = out.router_logits[:, 3:].argmax(1)
    share = out.processed[:, 3:].gather(1, best[:, None]).float().mean().item()
    assert 0.15 < share < 0.35


def test_zero_capacity_and_input_validation():
    block = make_block(capacity=0.0)
    x, skippable = batch()
    out = block(x, skippable)
    assert out.capacity == 0 and not out.processed[:, 3:].any()
    torch.testing.assert_close(out.output[:, 3:], x[:, 3:])
    bad = skippable.clone()
    bad[0, 3] = False
    with pytest.raises(ValueError):
        block(x, bad)
    with pytest.raises(ValueError):
        MoDBlock(D, 3, HIDDEN)
    with pytest.raises(ValueError):
        MoDBlock(D, HEADS, HIDDEN, capacity=1.5)


def test_flops_closed_form():
    # 8 n d^2 + 4 n^2 d + 4 n d h with n = 10, d = 8, h = 16
    assert block_flops(10, 8, 16) == 8 * 10 * 64 + 4 * 100 * 8 + 4 * 10 * 8 * 16 == 13440
    # 4 text + 32 visual at capacity 1/8: the block sees 4 + 4 = 8 tokens, the router all 32 visual
    d, h = 32, 64
    dense = block_flops(36, d, h)
    mod = mod_block_flops(4, 32, 0.125, d, h)
    assert mod == block_flops(8, d, h) + 2 * d * 32
    assert (dense, mod) == (755712, 141312)
    assert 1 - mod / dense == pytest.approx(0.8130, abs=1e-4)  # 81% of the block's FLOPs saved
    with_predictor = mod_block_flops(4, 32, 0.125, d, h, predictor_hidden=32)
    assert with_predictor - mod == 2 * (32 * 32 + 32) * 32
