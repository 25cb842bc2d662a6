"""Tests for reference_impls/modality_experts.py: MoMa-style routed modality groups and VLMo-style hard
modality experts. A naive per-token oracle checks values and gradients; the rest checks the property the
method is about: a token only ever touches its own modality's experts, and capacity is per modality."""

from __future__ import annotations

import math

import typing

import pytest
import torch
import torch.nn.functional as F

from reference_impls.moe import ACTIVATIONS, ExpertBackend, SparseMoE
from reference_impls.modality_experts import ModalityAwareMoE, MultiwayBlock, active_ffn_flops

D, H = 8, 12


def make_layer(sizes=(3, 2), seed=0, **kwargs) -> ModalityAwareMoE:
    torch.manual_seed(seed)
    layer = ModalityAwareMoE(D, H, sizes, **kwargs)
    with torch.no_grad():  # distinct, non-trivial router logits (no top-k ties)
        for router in layer.routers.values():
            router.weight.normal_(0.0, 1.0)
    return layer


def tokens(n=40, num_modalities=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    ids = torch.randint(0, num_modalities, (n,), generator=g)
    return x, ids


def oracle(layer: ModalityAwareMoE, x, ids):
    """Per-token loop: the token's group router, softmax over its group, top-k, gate, expert FFN."""
    act = ACTIVATIONS["gelu"]
    ex = layer.experts
    outs = []
    for t in range(x.shape[0]):
        m = int(ids[t])
        first, num = layer.offsets[m], layer.experts_per_modality[m]
        if num == 1:
            chosen, gates = [first], [torch.tensor(1.0)]
        else:
            p = torch.softmax(x[t] @ layer.routers[str(m)].weight.T, -1)  # softmax over the group only
            top = p.topk(min(layer.top_k, num)).indices.tolist()
            gates = [p[j] for j in top]
            if layer.renormalize:
                total = sum(gates)
                gates = [g / total for g in gates]
            chosen = [first + j for j in top]
        y = torch.zeros(D)
        for e, g in zip(chosen, gates):
            y = y + g * (act(x[t] @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e])
        outs.append(y)
    return torch.stack(outs)


@pytest.mark.parametrize(
    "sizes,top_k,renormalize",
    [((3, 2), 1, False), ((4, 4), 2, True), ((4, 1), 2, False), ((2, 3, 1), 1, False)],
    ids=["3-2-top1-raw", "4t4i-top2-renorm", "4-1-top2", "three-modalities"],
)
@pytest.mark.parametrize("backend", typing.get_args(ExpertBackend))  # every backend the core offers
def test_matches_per_token_oracle_values_and_gradients(sizes, top_k, renormalize, backend):
    layer = make_layer(sizes, top_k=top_k, renormalize=renormalize, expert_backend=backend)
    x, ids = tokens(num_modalities=len(sizes))
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out = layer(x1, ids).output
    ref = oracle(layer, x2, ids)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), [x1, *layer.parameters()])
    grads_ref = torch.autograd.grad((ref * weight).sum(), [x2, *layer.parameters()])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_tokens_only_touch_their_own_modality_experts():
    # Loss on text tokens (modality 0) only: image experts and the image router get exactly zero gradient.
    layer = make_layer((4, 4), top_k=2)
    x, ids = tokens(n=64)
    out = layer(x, ids)
    assert set(out.expert_index[ids == 0].flatten().tolist()) <= set(layer.group_experts(0))
    assert set(out.expert_index[ids == 1].flatten().tolist()) <= set(layer.group_experts(1))
    out.output[ids == 0].pow(2).sum().backward()
    image = list(layer.group_experts(1))
    assert torch.count_nonzero(layer.experts.w1.grad[image]) == 0
    assert torch.count_nonzero(layer.experts.w2.grad[image]) == 0
    assert layer.routers["1"].weight.grad is None or torch.count_nonzero(layer.routers["1"].weight.grad) == 0
    assert torch.count_nonzero(layer.experts.w1.grad[list(layer.group_experts(0))]) > 0
    assert torch.count_nonzero(layer.routers["0"].weight.grad) > 0  # raw gates: the task loss trains it


def test_vlmo_has_no_router_and_equals_one_ffn_per_modality():
    layer = ModalityAwareMoE.vlmo(D, H, num_modalities=2)
    assert len(layer.routers) == 0
    assert layer.num_experts == 2
    x, ids = tokens(n=30)
    out = layer(x, ids)
    ex = layer.experts
    for m in (0, 1):
        rows = ids == m
        ffn = F.gelu(x[rows] @ ex.w1[m] + ex.b1[m]) @ ex.w2[m] + ex.b2[m]
        torch.testing.assert_close(out.output[rows], ffn, atol=1e-6, rtol=1e-6)
    assert out.gates[:, 0].eq(1).all()
    assert out.aux_losses["load_balance"].item() == 0.0


def test_capacity_is_per_modality_and_the_majority_cannot_crowd_out_the_minority():
    # 48 image tokens, 8 text tokens; top-1, cf = 1: C_image = ceil(48/4) = 12, C_text = ceil(8/4) = 2.
    layer = make_layer((4, 4), capacity_factor=1.0)
    g = torch.Generator().manual_seed(3)
    image, text = torch.randn(48, D, generator=g), torch.randn(8, D, generator=g)
    ids = torch.tensor([1] * 48 + [0] * 8)
    out = layer(torch.cat([image, text]), ids)
    assert out.group_routing[1].capacity == 12 and out.group_routing[0].capacity == 2
    text_alone = layer(text, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(out.output[48:], text_alone.output)  # images change nothing for text
    assert out.group_routing[0].dropped == text_alone.group_routing[0].dropped
    # Contrast: a modality-agnostic MoE with shared experts and capacity (LIMoE-style) lets the images,
    # which come first under position priority, take the slots that the text tokens needed.
    torch.manual_seed(0)
    shared = SparseMoE(D, H, 8, 1, capacity_factor=1.0, renormalize=False)
    with torch.no_grad():
        shared.router.weight.normal_()
    with_images = shared(torch.cat([image, text])).output[48:]
    assert not torch.allclose(with_images, shared(text).output, atol=1e-4)


def test_capacity_formula_and_drops_inside_a_group():
    layer = make_layer((4, 4), top_k=2, capacity_factor=0.5, renormalize=True)
    x, ids = tokens(n=50)
    out = layer(x, ids)
    for m, r in out.group_routing.items():
        n = int((ids == m).sum())
        assert r.capacity == math.ceil(2 * 0.5 * n / 4)
        assert int(r.expert_counts.max()) <= r.capacity
    assert sum(r.dropped for r in out.group_routing.values()) > 0
    assert int(out.expert_counts.sum()) == int(out.keep.sum())
    dropped_everywhere = ~out.keep.any(-1)
    assert torch.all(out.output[dropped_everywhere] == 0)  # residual-only tokens


def test_top1_position_priority_is_causal_even_when_capacity_binds():
    # Token choice with k = 1 and position priority: a token's slot depends only on earlier tokens,
    # so changing the last tokens cannot change any earlier output. (MoMa's expert choice is not causal.)
    layer = make_layer((4, 4), capacity_factor=0.5)
    x, ids = tokens(n=48)
    out = layer(x, ids)
    assert sum(r.dropped for r in out.group_routing.values()) > 0
    x2 = x.clone()
    x2[40:] = torch.randn(8, D, generator=torch.Generator().manual_seed(9)) * 3
    torch.testing.assert_close(layer(x2, ids).output[:40], out.output[:40])
    # Batch priority ranks by router confidence over the whole group: the future now matters.
    bpr = make_layer((4, 4), capacity_factor=0.5, priority="batch")
    a, b = bpr(x, ids).output[:40], bpr(x2, ids).output[:40]
    assert not torch.allclose(a, b)


def test_per_modality_load_balance_and_absent_modality():
    layer = make_layer((4, 2))
    x, ids = tokens(n=60)
    out = layer(x, ids)
    for m in (0, 1):
        r = out.group_routing[m]
        f = torch.bincount(r.expert_index[:, 0], minlength=r.num_experts).float() / r.expert_index.shape[0]
        expected = r.num_experts * (f * r.router_probs.mean(0)).sum()  # E_m sum f_i P_i, per group
        assert out.per_modality_losses[m]["load_balance"].item() == pytest.approx(expected.item(), abs=1e-6)
    mean = (out.per_modality_losses[0]["load_balance"] + out.per_modality_losses[1]["load_balance"]) / 2
    assert out.aux_losses["load_balance"].item() == pytest.approx(mean.item(), abs=1e-6)
    only_text = layer(x[ids == 0], torch.zeros(int((ids == 0).sum()), dtype=torch.long))
    assert set(only_text.per_modality_losses) == {0}
    torch.testing.assert_close(only_text.output, out.output[ids == 0])
    empty = layer(x[:0], ids[:0])
    assert empty.output.shape == (0, D) and empty.aux_losses["load_balance"].item() == 0.0


def test_collapsed_router_gives_load_balance_equal_to_group_size():
    layer = make_layer((4, 4))
    with torch.no_grad():
        layer.routers["0"].weight.zero_()
        layer.routers["0"].weight[2] = 50.0  # every text token with positive sum(x) -> expert 2
    x = torch.ones(10, D)
    out = layer(x, torch.zeros(10, dtype=torch.long))
    assert out.expert_index[:, 0].eq(2).all()
    assert out.per_modality_losses[0]["load_balance"].item() == pytest.approx(4.0, abs=1e-4)


def test_random_routing_spreads_tokens_uniformly_inside_the_group():
    layer = make_layer((4, 4), routing="random")
    x, ids = tokens(n=4000)
    out = layer(x, ids, generator=torch.Generator().manual_seed(0))
    assert out.gates[:, 0].eq(1).all()
    share = out.expert_counts.float() / out.expert_counts.sum()
    assert (share - 1 / 8).abs().max() < 0.02
    assert set(out.expert_index[ids == 1, 0].tolist()) == set(layer.group_experts(1))
    assert out.aux_losses["load_balance"].item() == 0.0


def test_input_validation():
    layer = make_layer((2, 2))
    with pytest.raises(ValueError):
        layer(torch.randn(4, D), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError):
        layer(torch.randn(4, D), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        ModalityAwareMoE(D, H, (2, 0))


def test_multiway_block_uses_per_modality_norms_and_shared_attention():
    torch.manual_seed(0)
    block = MultiwayBlock(D, 2, ModalityAwareMoE.vlmo(D, H), layer_scale_init=0.1)
    assert block.gamma_1.eq(0.1).all() and block.gamma_2.eq(0.1).all()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 6, D, generator=g)
    ids = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    out, moe_out = block(h, ids)
    # Recompute by hand: shared attention, then each token's own LN_2^m and FFN_m.
    a = block.ln_attn(h)
    h1 = h + 0.1 * block.attn(a, a, a, need_weights=False)[0]
    ex = block.ffn.experts
    ref = torch.empty_like(h1)
    for m in (0, 1):
        rows = ids == m
        z = block.ln_ffn[m](h1[rows])
        ref[rows] = h1[rows] + 0.1 * (F.gelu(z @ ex.w1[m] + ex.b1[m]) @ ex.w2[m] + ex.b2[m])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Shared attention mixes modalities: changing an image token changes the text tokens' outputs.
    h2 = h.clone()
    h2[:, 5] = torch.randn(2, D, generator=g)  # (a constant shift would vanish in LayerNorm)
    assert not torch.allclose(block(h2, ids)[0][:, :3], out[:, :3], atol=1e-4)


def test_causal_multiway_block_ignores_the_future():
    torch.manual_seed(0)
    block = MultiwayBlock(D, 2, make_layer((2, 2)), causal=True)
    h = torch.randn(1, 7, D)
    ids = torch.tensor([[0, 1, 0, 1, 1, 0, 0]])
    h2 = h.clone()
    h2[:, 5:] = torch.randn(1, 2, D)
    torch.testing.assert_close(block(h2, ids)[0][:, :5], block(h, ids)[0][:, :5])


def test_active_flops():
    assert active_ffn_flops(16, 16) == 1024  # dense FFN or VLMo: 2 * (2 * 16 * 16)
    assert active_ffn_flops(16, 16, router_experts=4) == 1024 + 128  # MoMa 4t4i top-1: + router 2*16*4
    assert active_ffn_flops(16, 16, top_k=2) == 2048
