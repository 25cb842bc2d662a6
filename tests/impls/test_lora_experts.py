"""Tests for reference_impls/lora_experts.py: LoRA experts routed per instruction cluster (MoCLE) and per
token (LLaVA-MoLE), against naive per-token computations from the stacked weights (values and gradients),
plus the properties the methods rest on: zero-initialised B leaves the frozen layer unchanged, MoCLE
routes whole samples and weights the universal expert by 1 - w, and LLaVA-MoLE's sparse code path gives
the router no task gradient.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from reference_impls.lora_experts import (
    LoRAExperts,
    MoCLELinear,
    MoLEFeedForward,
    MoLELinear,
    assign_clusters,
    kmeans,
    mole_balance_loss,
)
from reference_impls.moe import FeedForward, load_balancing_loss

D_IN, D_OUT, D, H = 12, 8, 12, 20



def assert_same_gradients(output, naive, params, w):
    """d(sum w*output)/dparams equals the naive oracle's; a parameter the oracle never uses gets none."""
    grads = torch.autograd.grad((output * w).sum(), params, allow_unused=True)
    naive_grads = torch.autograd.grad((naive * w).sum(), params, allow_unused=True)
    for g, n in zip(grads, naive_grads):
        if n is None:
            assert g is None or g.abs().sum() == 0
        else:
            torch.testing.assert_close(g, n)

def randomise_B(module, seed=0):
    """B starts at zero; give every LoRA expert a nonzero B so that the experts differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, LoRAExperts):
                m.B.copy_(0.3 * torch.randn(m.B.shape, generator=g))


def mocle(seed=0, **kw):
    torch.manual_seed(seed)
    kw = dict(num_experts=4, num_clusters=6, rank=4, alpha=8.0, dropout=0.0, embed_dim=10, temperature=0.5) | kw
    layer = MoCLELinear(torch.nn.Linear(D_IN, D_OUT), **kw).eval()
    randomise_B(layer)
    return layer


def mole(seed=0, **kw):
    torch.manual_seed(seed)
    kw = dict(num_experts=3, rank=4, alpha=8.0, dropout=0.0) | kw
    layer = MoLEFeedForward(FeedForward(D, H), **kw).eval()
    randomise_B(layer)
    return layer


def data(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# LoRA experts: init and the dispatch against a per-token loop
# ------------------------------------------------------------------------------------------------


def test_zero_initialised_B_gives_exactly_the_frozen_layers():
    torch.manual_seed(0)
    base = torch.nn.Linear(D_IN, D_OUT)
    layer = MoCLELinear(base, num_experts=4, num_clusters=6, embed_dim=10).train()
    x = data((5, 3, D_IN))
    out = layer(x, torch.tensor([0, 1, 2, 3, 5]))
    assert torch.equal(out.output, base(x))
    ffn = FeedForward(D, H)
    for mode in ("gate", "none", "straight_through", "dense"):
        m = MoLEFeedForward(ffn, num_experts=3, mode=mode).train()
        x = data((4, 5, D))
        assert torch.equal(m(x).output, ffn(x))
    # A: nn.Linear's default bound 1/sqrt(d_in); B: exactly zero
    assert m.fc1_experts.A.abs().max() <= 1 / math.sqrt(D) and m.fc1_experts.A.std() > 0.1 / math.sqrt(D)
    assert m.fc1_experts.B.abs().sum() == 0 and m.fc1_experts.scaling == 64 / 32


def test_base_layer_is_frozen_and_lora_is_trainable():
    layer = mocle()
    assert not any(p.requires_grad for p in layer.base.parameters())
    names = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert names == {"cluster_embedding.weight", "gate.weight", "experts.A", "experts.B", "universal.A", "universal.B"}


def test_lora_experts_match_a_per_token_loop_values_and_gradients():
    torch.manual_seed(0)
    experts = LoRAExperts(4, D_IN, D_OUT, rank=3, alpha=6.0)
    with torch.no_grad():
        experts.B.normal_()
    x = data((9, D_IN)).requires_grad_(True)
    index = torch.tensor([[0, 2], [1, 1], [3, 0], [2, 3], [0, 1], [3, 3], [1, 0], [2, 2], [0, 3]])
    gates = torch.rand(9, 2, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    keep = torch.ones(9, 2, dtype=torch.bool)
    keep[4, 1] = False  # a skipped assignment contributes nothing
    out = experts(x, index, gates, keep)
    naive = torch.stack([
        sum(gates[t, j] * 2.0 * experts.B[index[t, j]] @ (experts.A[index[t, j]] @ x[t])
            for j in range(2) if keep[t, j])
        for t in range(9)
    ])
    torch.testing.assert_close(out, naive)
    w = torch.randn(9, D_OUT, generator=torch.Generator().manual_seed(5))
    grads = torch.autograd.grad((out * w).sum(), (x, gates, experts.A, experts.B))
    naive_grads = torch.autograd.grad((naive * w).sum(), (x, gates, experts.A, experts.B))
    for g, n in zip(grads, naive_grads):
        torch.testing.assert_close(g, n)


def test_lora_dropout_only_in_training():
    torch.manual_seed(0)
    experts = LoRAExperts(1, D_IN, D_OUT, rank=2, dropout=0.5)
    with torch.no_grad():
        experts.B.normal_()
    x, idx, g = data((16, D_IN)), torch.zeros(16, 1, dtype=torch.long), torch.ones(16, 1)
    clean = experts.eval().expert_delta(x, 0)
    torch.testing.assert_close(experts(x, idx, g), clean)
    assert not torch.allclose(experts.train()(x, idx, g), clean)


# ------------------------------------------------------------------------------------------------
# MoCLE
# ------------------------------------------------------------------------------------------------


def test_mocle_matches_its_equation_sample_by_sample():
    layer = mocle()
    x = data((6, 3, D_IN))
    cluster = torch.tensor([0, 1, 2, 3, 4, 5])
    out = layer(x, cluster)
    logits = layer.gate(layer.cluster_embedding(cluster))
    p = torch.softmax(logits / 0.5, dim=-1)
    for b in range(6):
        i = int(p[b].argmax())
        w = p[b, i]
        expected = (layer.base(x[b]) + w * layer.experts.expert_delta(x[b], i)
                    + (1 - w) * layer.universal.expert_delta(x[b], 0))
        torch.testing.assert_close(out.output[b], expected)
        assert out.expert_index[b] == i
        assert out.gate[b].item() == pytest.approx(w.item(), abs=1e-6)
    torch.testing.assert_close(out.router_probs, p)


def test_mocle_routes_the_whole_sample_by_its_cluster_not_by_its_tokens():
    layer = mocle()
    x1, x2 = data((4, 5, D_IN), seed=1), data((4, 5, D_IN), seed=2)
    cluster = torch.tensor([1, 1, 4, 4])
    out1, out2 = layer(x1, cluster), layer(x2, cluster)
    assert torch.equal(out1.expert_index, out2.expert_index)  # same clusters, same experts, any tokens
    assert torch.equal(out1.gate, out2.gate)
    # A 2-D input is one token per sample and gives the same result as [B, 1, d].
    torch.testing.assert_close(layer(x1[:, 0], cluster).output, out1.output[:, 0])


def test_mocle_gradients_match_the_sample_loop():
    layer = mocle()
    x = data((5, 2, D_IN))
    cluster = torch.tensor([5, 0, 2, 2, 3])
    w = torch.randn(5, 2, D_OUT, generator=torch.Generator().manual_seed(3))
    params = [layer.cluster_embedding.weight, layer.gate.weight, layer.experts.A, layer.experts.B,
              layer.universal.A, layer.universal.B]
    grads = torch.autograd.grad((layer(x, cluster).output * w).sum(), params)
    p = torch.softmax(layer.gate(layer.cluster_embedding(cluster)) / 0.5, dim=-1)
    naive = torch.stack([
        layer.base(x[b]) + p[b, p[b].argmax()] * layer.experts.expert_delta(x[b], int(p[b].argmax()))
        + (1 - p[b, p[b].argmax()]) * layer.universal.expert_delta(x[b], 0)
        for b in range(5)
    ])
    naive_grads = torch.autograd.grad((naive * w).sum(), params)
    for g, n in zip(grads, naive_grads):
        torch.testing.assert_close(g, n)
    assert grads[1].abs().sum() > 0  # the gate learns from the task loss through w and 1 - w


def test_mocle_universal_expert_takes_one_minus_w_and_can_be_disabled():
    layer = mocle()
    no_universal = mocle(universal=False)
    no_universal.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("universal")})
    x, cluster = data((3, 2, D_IN)), torch.tensor([0, 3, 5])
    full, without = layer(x, cluster), no_universal(x, cluster)
    rest = full.output - without.output  # exactly the universal expert's share
    expected = (1 - full.gate).view(3, 1, 1) * layer.universal.expert_delta(x, 0)
    torch.testing.assert_close(rest, expected)


def test_mocle_temperature_saturates_the_gate_and_noise_only_in_training():
    sharp, soft = mocle(temperature=0.01), mocle(temperature=5.0)
    cluster = torch.arange(6)
    assert sharp(data((6, D_IN)), cluster).gate.min() > 0.99  # universal expert nearly off
    assert soft(data((6, D_IN)), cluster).gate.max() < 0.5  # 4 experts, nearly uniform
    layer = mocle(noise_std=0.1)
    assert torch.equal(layer.router_logits(cluster), layer.router_logits(cluster))
    layer.train()
    assert not torch.equal(layer.router_logits(cluster), layer.router_logits(cluster))


def test_kmeans_recovers_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(5, 16, generator=g)
    labels = torch.arange(5).repeat(40)
    points = centres[labels] + 0.3 * torch.randn(200, 16, generator=g)
    centroids = kmeans(points, 5, generator=torch.Generator().manual_seed(1))
    assign = assign_clusters(points, centroids)
    # every true cluster maps to exactly one k-means cluster
    pairs = set(zip(labels.tolist(), assign.tolist()))
    assert len(pairs) == 5 and len({a for _, a in pairs}) == 5
    torch.testing.assert_close(centroids[assign_clusters(centres, centroids)], centres, atol=0.3, rtol=0)


# ------------------------------------------------------------------------------------------------
# LLaVA-MoLE
# ------------------------------------------------------------------------------------------------


def naive_mole(layer, x, mode):
    """Token by token from the stacked weights: the MLP with expert i*'s LoRA on fc1 and fc2."""
    outs = []
    for token in x.reshape(-1, x.shape[-1]):
        p = torch.softmax(layer.router.weight @ token, dim=-1)
        i = int(p.argmax())
        if mode == "dense":
            weights = {e: p[e] for e in range(layer.num_experts)}
        else:
            g = {"gate": p[i], "none": torch.ones(()), "straight_through": 1 + p[i] - p[i].detach()}[mode]
            weights = {i: g}
        h = layer.base.fc1(token) + sum(w * layer.fc1_experts.expert_delta(token, e) for e, w in weights.items())
        h = F.gelu(h)
        outs.append(layer.base.fc2(h) + sum(w * layer.fc2_experts.expert_delta(h, e) for e, w in weights.items()))
    return torch.stack(outs).view_as(x)


@pytest.mark.parametrize("mode", ["gate", "none", "straight_through", "dense"])
def test_mole_matches_a_per_token_loop_values_and_gradients(mode):
    layer = mole(mode=mode)
    x = data((3, 5, D)).requires_grad_(True)
    out = layer(x)
    naive = naive_mole(layer, x, mode)
    torch.testing.assert_close(out.output, naive)
    w = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(7))
    params = [x, layer.router.weight, layer.fc1_experts.A, layer.fc1_experts.B, layer.fc2_experts.A,
              layer.fc2_experts.B]
    assert_same_gradients(out.output, naive, params, w)


@pytest.mark.parametrize("mode", ["gate", "none", "straight_through", "dense"])
def test_mole_linear_matches_a_per_token_loop_values_and_gradients(mode):
    torch.manual_seed(0)
    layer = MoLELinear(torch.nn.Linear(D_IN, D_OUT), num_experts=3, rank=4, alpha=8.0, dropout=0.0, mode=mode)
    randomise_B(layer)
    x = data((3, 5, D_IN)).requires_grad_(True)
    out = layer(x)
    rows = []
    for token in x.reshape(-1, D_IN):
        p = torch.softmax(layer.router.weight @ token, dim=-1)
        i = int(p.argmax())
        if mode == "dense":
            delta = sum(p[e] * layer.experts.expert_delta(token, e) for e in range(3))
        else:
            g = {"gate": p[i], "none": torch.ones(()), "straight_through": 1 + p[i] - p[i].detach()}[mode]
            delta = g * layer.experts.expert_delta(token, i)
        rows.append(layer.base(token) + delta)
    naive = torch.stack(rows).view(3, 5, D_OUT)
    torch.testing.assert_close(out.output, naive)
    w = torch.randn(3, 5, D_OUT, generator=torch.Generator().manual_seed(2))
    params = [x, layer.router.weight, layer.experts.A, layer.experts.B]
    assert_same_gradients(out.output, naive, params, w)


def test_one_expert_mole_linear_is_plain_lora_and_cannot_flip_a_sign_by_instruction():
    # The property the notebook rests on: a shared LoRA on a linear layer adds Delta(x + c) = Delta x + Delta c,
    # so the instruction c only shifts the output; the content-dependent part is the same for every task.
    torch.manual_seed(0)
    layer = MoLELinear(torch.nn.Linear(D_IN, D_OUT), num_experts=1, rank=3, alpha=3.0, dropout=0.0)
    randomise_B(layer)
    content = data((2, 4, D_IN))
    c1, c2 = torch.randn(D_IN), torch.randn(D_IN)
    diff = layer(content + c1).output - layer(content + c2).output
    torch.testing.assert_close(diff, diff[:1, :1].expand_as(diff))  # a constant offset, whatever the content


def test_mole_routes_each_token_and_uses_several_experts():
    layer = mole()
    out = layer(data((4, 8, D)))
    assert out.router_probs.shape == (4, 8, 3) and out.expert_index.shape == (4, 8)
    assert len(out.expert_index.unique()) >= 2  # token level: a sample's tokens go to different experts
    assert len({tuple(row.tolist()) for row in out.expert_index}) > 1


def test_the_codes_sparse_path_gives_the_router_no_task_gradient():
    task_grad = {}
    for mode in ("none", "gate", "straight_through", "dense"):
        layer = mole(mode=mode)
        out = layer(data((3, 5, D)))
        (out.output.square().mean()).backward()
        task_grad[mode] = layer.router.weight.grad
    assert task_grad["none"] is None  # forwchen/LLaVA-MoLE sparse mode: nothing differentiable reaches W_r
    for mode in ("gate", "straight_through", "dense"):
        assert task_grad[mode].abs().sum() > 1e-6
    # ... the balance loss is then the router's only signal
    layer = mole(mode="none")
    layer(data((3, 5, D))).balance_loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0


def test_straight_through_has_the_forward_of_the_code_path():
    x = data((2, 6, D))
    torch.testing.assert_close(mole(mode="straight_through")(x).output, mole(mode="none")(x).output)
    assert not torch.allclose(mole(mode="gate")(x).output, mole(mode="none")(x).output)


def test_one_expert_is_plain_lora():
    layer = mole(num_experts=1)
    x = data((2, 4, D))
    out = layer(x)
    assert (out.router_probs == 1).all()
    h = F.gelu(layer.base.fc1(x) + layer.fc1_experts.expert_delta(x, 0))
    torch.testing.assert_close(out.output, layer.base.fc2(h) + layer.fc2_experts.expert_delta(h, 0))
    out.output.sum().backward()
    assert layer.router.weight.grad is None or layer.router.weight.grad.abs().sum() == 0


# ------------------------------------------------------------------------------------------------
# LLaVA-MoLE balance loss
# ------------------------------------------------------------------------------------------------


def test_balance_loss_values_uniform_collapsed_and_the_core():
    E = 4
    uniform = torch.full((2, 8, E), 0.25)
    spread = torch.arange(8).remainder(E).expand(2, 8)
    assert mole_balance_loss(uniform, spread).item() == pytest.approx(1 / E)
    collapsed = F.one_hot(torch.zeros(2, 8, dtype=torch.long), E).float()
    assert mole_balance_loss(collapsed, torch.zeros(2, 8, dtype=torch.long)).item() == pytest.approx(1.0)
    # per sample it is the core's Switch loss divided by E, then averaged over samples
    probs = torch.softmax(data((3, 7, E)), -1)
    top1 = probs.argmax(-1)
    per_sample = [load_balancing_loss(probs[b], top1[b, :, None], E) / E for b in range(3)]
    assert mole_balance_loss(probs, top1).item() == pytest.approx(torch.stack(per_sample).mean().item(), abs=1e-6)


def test_balance_loss_ignores_pad_tokens_and_has_a_straight_through_one_hot():
    E = 3
    probs = torch.softmax(data((2, 6, E)), -1).requires_grad_(True)
    top1 = probs.argmax(-1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    loss = mole_balance_loss(probs, top1, mask)
    garbage = probs.detach().clone()
    garbage[0, 4:] = torch.tensor([1.0, 0.0, 0.0])
    assert loss.item() == pytest.approx(mole_balance_loss(garbage, garbage.argmax(-1), mask).item(), abs=1e-6)
    # gradient: d/dp of mean(p) * mean(onehot_ST) is mean(onehot) + mean(p) per real token (over n, over B)
    (grad,) = torch.autograd.grad(loss, probs)
    n = mask.sum(1, keepdim=True).unsqueeze(-1).float()
    onehot = F.one_hot(top1, E).float()
    mean_p = (probs * mask[..., None]).sum(1, keepdim=True) / n
    mean_h = (onehot * mask[..., None]).sum(1, keepdim=True) / n
    expected = (mean_h + mean_p) / n / 2 * mask[..., None]
    torch.testing.assert_close(grad, expected)
