"""Tests for reference_impls/encoder_mixture.py: MoVA's coarse router and MoV-Adapter, and Eagle's
channel concatenation.

The adapter block is checked against a naive per-sample computation (masked fp32 softmax, top-k,
renormalised weights, one cross-attention per selected expert; values and gradients). The tests also check
the properties the method relies on: a fresh adapter is the identity, unselected experts never run (their
features are never read and their encoders are never called), an empty selection adds nothing, and
resizing aligns every encoder to the base grid.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference_impls.encoder_mixture import (
    MASK_VALUE,
    ChannelConcatFusion,
    CoarseRouter,
    MoVA,
    MoVAdapterBlock,
    resize_to_grid,
    routing_loss,
    routing_targets_from_losses,
)

C, D_T, GRID = 8, 6, 2
L = GRID * GRID
EXPERT_CHANNELS = [4, 6, 10]
N = len(EXPERT_CHANNELS)


def data(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomise(module, seed=0):
    """Give every parameter random values, so that no zero-initialised projection hides a path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return module


def block(seed=0, top_k=2, random=True):
    torch.manual_seed(seed)
    b = MoVAdapterBlock(C, EXPERT_CHANNELS, D_T, top_k=top_k, num_heads=2).eval()
    return randomise(b, seed) if random else b


def inputs(B=5, seed=1):
    x = data(B, L, C, seed=seed)
    feats = [data(B, L, c, seed=seed + 10 + j) for j, c in enumerate(EXPERT_CHANNELS)]
    context = data(B, D_T, seed=seed + 20)
    rho = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)[:B]
    return x, feats, context, rho


def naive_block(b, x, feats, context, rho):
    """Sample by sample, from the equations: w = softmax(g + (1 - rho)(-1e6)) in fp32, top-k, renormalised;
    x + sum_j w_j CrossAttn_j(LN x, LN v_j); then self-attention and SwiGLU residuals."""
    outs = []
    for s in range(x.shape[0]):
        xs = x[s:s + 1]
        g = b.gate(torch.cat([context[s], xs[0].mean(0)]))
        w = torch.softmax((g + (~rho[s]).float() * -1e6).float(), dim=-1)
        top = w.topk(b.top_k)
        weights = top.values / top.values.sum()
        y = xs
        for wj, j in zip(weights, top.indices.tolist()):
            if not rho[s, j]:
                assert wj == 0
                continue
            v = b.expert_norms[j](feats[j][s:s + 1])
            y = y + wj * b.cross_attention[j](b.query_norm(xs), v, v, need_weights=False)[0]
        h = b.self_norm(y)
        y = y + b.self_attention(h, h, h, need_weights=False)[0]
        outs.append(y + b.ffn(b.ffn_norm(y)))
    return torch.cat(outs)


# ------------------------------------------------------------------------------------------------
# Resizing and Eagle's concatenation
# ------------------------------------------------------------------------------------------------


def test_resize_is_identity_on_the_same_grid_and_averages_blocks_when_halving():
    x = data(2, 16, 3)
    assert resize_to_grid(x, 4) is x
    down = resize_to_grid(x, 2)  # bilinear, align_corners=False, scale 1/2: the mean of each 2x2 block
    fmap = x.transpose(1, 2).reshape(2, 3, 4, 4)
    blocks = fmap.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)).reshape(2, 3, 4).transpose(1, 2)
    torch.testing.assert_close(down, blocks)
    one = data(2, 1, 5)
    torch.testing.assert_close(resize_to_grid(one, 3), one.expand(2, 9, 5))  # a 1x1 map spreads evenly
    with pytest.raises(ValueError):
        resize_to_grid(data(1, 6, 2), 2)


def test_channel_concatenation_is_a_projector_on_the_concatenated_resized_maps():
    torch.manual_seed(0)
    fusion = ChannelConcatFusion([C, 4, 6], 12, grid=GRID)
    feats = [data(3, 4, C), data(3, 16, 4, seed=2), data(3, 1, 6, seed=3)]
    out = fusion(feats)
    assert out.shape == (3, L, 12)
    cat = torch.cat([feats[0], resize_to_grid(feats[1], 2), feats[2].expand(3, 4, 6)], dim=-1)
    linear1, linear2 = fusion.projector[0], fusion.projector[2]
    torch.testing.assert_close(out, linear2(F.gelu(linear1(cat))))
    # no routing: every encoder contributes to every sample, whatever the question
    changed = [f.clone() for f in feats]
    changed[2] += 1.0
    assert not torch.allclose(fusion(changed), out)


# ------------------------------------------------------------------------------------------------
# Coarse routing and annotations
# ------------------------------------------------------------------------------------------------


def test_coarse_selection_is_top_k_with_an_optional_none():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, -2.0, -4.0], [0.1, 0.2, 0.3]])
    rho = CoarseRouter.select(logits, 2)
    assert rho.tolist() == [[True, False, True], [True, True, False], [False, True, True]]
    rho = CoarseRouter.select(logits, 2, threshold=0.5)  # sigmoid >= 0.5 <=> logit >= 0
    assert rho.tolist() == [[True, False, True], [False, False, False], [False, True, True]]


def test_coarse_router_reads_context_and_pooled_base_tokens():
    torch.manual_seed(0)
    router = CoarseRouter(D_T, C, N, hidden=5)
    context, base = data(4, D_T), data(4, L, C, seed=2)
    logits = router(context, base)
    torch.testing.assert_close(logits, router.mlp(torch.cat([context, base.mean(1)], -1)))
    assert logits.dtype == torch.float32 and logits.shape == (4, N)


def test_routing_targets_from_losses_and_the_margin():
    losses = torch.tensor([[0.2, 1.0, 1.5], [0.9, 0.8, 0.1], [0.50, 0.45, 2.0]])
    assert routing_targets_from_losses(losses).tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    clear = routing_targets_from_losses(losses, margin=0.3)
    assert clear.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]  # 0.45 vs 0.50: ambiguous, no label
    assert routing_targets_from_losses(losses, top_k=2).sum(-1).tolist() == [2, 2, 2]
    assert routing_targets_from_losses(losses, top_k=2, margin=0.4).tolist() == [[1, 1, 0], [0, 0, 0], [1, 1, 0]]


def test_routing_loss_is_multilabel_bce():
    logits, targets = data(4, N), torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    expected = -(targets * F.logsigmoid(logits) + (~targets) * F.logsigmoid(-logits)).mean()
    torch.testing.assert_close(routing_loss(logits, targets), expected)


# ------------------------------------------------------------------------------------------------
# The MoV-Adapter block
# ------------------------------------------------------------------------------------------------


def test_fresh_block_is_the_identity():
    b = block(random=False)
    x, feats, context, rho = inputs()
    out, routing = b(x, feats, context, rho)
    assert torch.equal(out, x)  # zero-initialised cross-attention, self-attention and SwiGLU outputs
    assert torch.equal(routing.gate_logits, torch.zeros(5, N))  # zero-initialised last gate layer
    # uniform weights over the selected experts (sample 3 selects all three: top-2 of three ties)
    assert torch.allclose(routing.routing.gates[0], torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("top_k", [2, 3])
def test_block_matches_the_per_sample_equations_values_and_gradients(top_k):
    b = block(top_k=top_k)
    x, feats, context, rho = inputs()
    x.requires_grad_(True)
    context.requires_grad_(True)
    out, routing = b(x, feats, context, rho)
    expected = naive_block(b, x, feats, context, rho)
    torch.testing.assert_close(out, expected)
    w = data(*out.shape, seed=9)
    params = [x, context, b.gate[0].weight, b.gate[2].weight, *b.cross_attention[1].parameters()]
    grads = torch.autograd.grad((out * w).sum(), params)
    naive_grads = torch.autograd.grad((expected * w).sum(), params)
    for g, n in zip(grads, naive_grads):
        torch.testing.assert_close(g, n)
    assert grads[3].abs().sum() > 0  # the fine gate learns from the task loss


def test_top_one_with_a_single_selected_expert_has_weight_one():
    b = block(top_k=1)
    x, feats, context, _ = inputs()
    rho = F.one_hot(torch.tensor([0, 2, 1, 1, 0]), N).bool()
    out, routing = b(x, feats, context, rho)
    assert torch.equal(routing.routing.gates, torch.ones(5, 1))  # every other probability is exactly 0
    assert torch.equal(routing.routing.expert_index[:, 0], rho.float().argmax(-1))
    torch.testing.assert_close(out, naive_block(b, x, feats, context, rho))


def test_top_one_among_several_selected_keeps_the_raw_probability():
    # The documented difference: the core's route keeps p_1 for k = 1, where MoVA's renormalisation gives 1.
    b = block(top_k=1)
    x, feats, context, rho = inputs()
    routing = b.route(x, context, rho).routing
    several = rho.sum(-1) > 1
    torch.testing.assert_close(routing.gates[:, 0], routing.router_probs.max(-1).values)
    assert (routing.gates[several, 0] < 1).all() and (routing.gates[~several, 0] == 1).all()


def test_masked_experts_get_exactly_zero_weight_in_fp32():
    b = block(top_k=3)
    x, feats, context, rho = inputs()
    routing = b.route(x, context, rho).routing
    probs = routing.router_probs
    assert (probs[~rho] == 0).all()  # exp(-1e6) underflows to exactly 0 in fp32
    assert MASK_VALUE == -1e6
    torch.testing.assert_close(routing.gates.sum(-1), torch.ones(5))


def test_unselected_experts_never_run_and_their_features_are_never_read():
    b = block(top_k=2)
    x, feats, context, rho = inputs()
    reference, routing = b(x, feats, context, rho)
    poisoned = [f.clone() for f in feats]
    for j in range(N):
        poisoned[j][~rho[:, j]] = float("nan")  # a sample that did not select expert j has no such features
    out, _ = b(x, poisoned, context, rho)
    assert torch.equal(out, reference)
    # each cross-attention runs once, on exactly the samples that kept it
    seen = {}
    hooks = [attn.register_forward_hook(lambda m, args, out, j=j: seen.__setitem__(j, args[0].shape[0]))
             for j, attn in enumerate(b.cross_attention)]
    b(x, feats, context, rho)
    for h in hooks:
        h.remove()
    kept = routing.keep
    for j in range(N):
        assert seen.get(j, 0) == int(((routing.routing.expert_index == j) & kept).sum())
    assert sum(seen.values()) == int(kept.sum()) == 8  # 10 top-2 choices, 2 of them on masked experts


def test_an_empty_selection_adds_no_expert_knowledge():
    b = block(top_k=2)
    x, feats, context, _ = inputs()
    nothing = torch.zeros(5, N, dtype=torch.bool)
    out, routing = b(x, feats, context, nothing)
    assert not routing.keep.any()
    h = b.self_norm(x)
    y = x + b.self_attention(h, h, h, need_weights=False)[0]
    torch.testing.assert_close(out, y + b.ffn(b.ffn_norm(y)))


# ------------------------------------------------------------------------------------------------
# The whole model
# ------------------------------------------------------------------------------------------------


class CountingEncoder(nn.Module):
    """A frozen random token map ``[B, 16, 5] -> [B, grid^2, channels]`` that counts the samples it sees."""

    def __init__(self, channels, grid, seed):
        super().__init__()
        self.grid, self.calls = grid, 0
        self.register_buffer("W", torch.randn(5, channels, generator=torch.Generator().manual_seed(seed)))

    def forward(self, images):
        self.calls += images.shape[0]
        h = torch.tanh(images @ self.W)
        fmap = F.adaptive_avg_pool2d(h.transpose(1, 2).reshape(len(h), -1, 4, 4), self.grid)
        return fmap.flatten(2).transpose(1, 2)


def model(top_k=1):
    torch.manual_seed(0)
    base = CountingEncoder(C, GRID, 0)
    experts = [CountingEncoder(c, g, j + 1) for j, (c, g) in enumerate(zip(EXPERT_CHANNELS, [4, 2, 1]))]
    mova = MoVA(base, experts, base_channels=C, expert_channels=EXPERT_CHANNELS, context_dim=D_T, grid=GRID,
                num_layers=2, top_k=top_k, num_heads=2).eval()
    randomise(mova.router, 3)
    for blk in mova.blocks:
        randomise(blk, 4)
    return mova, experts


def test_expert_encoders_run_only_on_the_samples_that_selected_them():
    mova, experts = model(top_k=1)
    images, context = data(6, 16, 5), data(6, D_T, seed=2)
    out = mova(images, context)
    assert out.rho.sum(-1).eq(1).all()  # top-1: one expert per sample
    assert [e.calls for e in experts] == out.rho.sum(0).tolist() == out.encoder_calls.tolist()
    assert sum(e.calls for e in experts) == 6  # Eagle would run all three on all six: 18
    expected_rho = CoarseRouter.select(mova.router(context, resize_to_grid(mova.base_encoder(images), GRID)), 1)
    assert torch.equal(out.rho, expected_rho)
    assert out.features.shape == (6, L, C) and len(out.blocks) == 2


def test_a_given_selection_overrides_the_router_and_none_runs_no_expert():
    mova, experts = model(top_k=2)
    images, context = data(4, 16, 5), data(4, D_T, seed=2)
    rho = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.bool)
    out = mova(images, context, rho=rho)
    assert torch.equal(out.rho, rho) and [e.calls for e in experts] == [2, 0, 2]
    for e in experts:
        e.calls = 0
    nothing = mova(images, context, threshold=1.01)  # no sigmoid score reaches 1.01: MoVA's "none"
    assert not nothing.rho.any() and [e.calls for e in experts] == [0, 0, 0]
    x = resize_to_grid(mova.base_encoder(images), GRID)
    for blk in mova.blocks:  # the adapter then runs without any expert knowledge
        h = blk.self_norm(x)
        x = x + blk.self_attention(h, h, h, need_weights=False)[0]
        x = x + blk.ffn(blk.ffn_norm(x))
    torch.testing.assert_close(nothing.features, x)


def test_the_task_loss_reaches_the_adapter_but_not_the_coarse_router():
    # The coarse selection is a hard top-k: MoVA trains its router on routing annotations instead.
    mova, _ = model(top_k=1)
    mova.train()
    out = mova(data(4, 16, 5), data(4, D_T, seed=2))
    out.features.square().mean().backward()
    assert all(p.grad is None for p in mova.router.parameters())
    assert mova.blocks[0].cross_attention[0].out_proj.weight.grad is not None
    loss = routing_loss(out.coarse_logits, out.rho)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mova.router.parameters())
