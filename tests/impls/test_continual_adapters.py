"""Tests for reference_impls/continual_adapters.py (MoE-Adapters, Yu et al. CVPR 2024).

Checked against naive per-sample computations from the stacked weights (values and gradients), and the
properties the method is about: routing by each sample's first token with its own task's router, the
top-k softmax gates, zero-initialised adapters that leave the backbone unchanged, frozen experts that no
later training can move, old routers that stay untouched, and DDAS sending each input to the task whose
autoencoder reconstructs it best, or to the adapter-free path above the threshold.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from reference_impls.continual_adapters import (
    ZERO_SHOT,
    AdapterMoE,
    ContinualAdapterModel,
    ContinualConfig,
    DistributionSelector,
)
from reference_impls.moe import load_balancing_loss

D, E, K, TASKS = 8, 5, 2, 3


def layer(seed=0, **kw):
    """An AdapterMoE with random routers and non-zero up-projections, so that every part is exercised."""
    torch.manual_seed(seed)
    kw = dict(num_experts=E, top_k=K, num_tasks=TASKS, adapter_dim=4) | kw
    moe = AdapterMoE(D, **kw).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in [*moe.w_gate, *moe.w_noise]:
            p.copy_(torch.randn(p.shape, generator=g))
        moe.experts.w2.copy_(0.5 * torch.randn(moe.experts.w2.shape, generator=g))
        moe.experts.b2.copy_(0.5 * torch.randn(moe.experts.b2.shape, generator=g))
    return moe


def data(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def naive(moe, x, task):
    """Sample by sample: y_b = 0.1 * sum_{i in topk(h_b)} softmax(topk h_b)_i * A_i(x_b) for all its tokens."""
    outs = []
    for b in range(x.shape[0]):
        if task[b] < 0:
            outs.append(torch.zeros_like(x[b]))
            continue
        h = x[b, 0] @ moe.w_gate[int(task[b])]
        top = h.topk(moe.top_k)
        w = torch.softmax(top.values, dim=-1)
        y = 0
        for j, e in enumerate(top.indices.tolist()):
            hidden = F.relu(x[b] @ moe.experts.w1[e] + moe.experts.b1[e])
            y = y + w[j] * (hidden @ moe.experts.w2[e] + moe.experts.b2[e])
        outs.append(moe.adapter_scale * y)
    return torch.stack(outs)


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "loop"])
def test_layer_matches_a_per_sample_loop_values_and_gradients(backend):
    moe = layer(expert_backend=backend)
    x = data(6, 3, D).requires_grad_(True)
    task = torch.tensor([0, 2, 1, ZERO_SHOT, 2, 0])
    out = moe(x, task)
    expected = naive(moe, x, task)
    torch.testing.assert_close(out.output, expected)
    w = data(6, 3, D, seed=2)
    params = [x, moe.experts.w1, moe.experts.b1, moe.experts.w2, moe.experts.b2, *moe.w_gate]
    grads = torch.autograd.grad((out.output * w).sum(), params)
    naive_grads = torch.autograd.grad((expected * w).sum(), params)
    for g, n in zip(grads, naive_grads):
        torch.testing.assert_close(g, n)
    assert grads[-1].abs().sum() > 0 and grads[-2].abs().sum() > 0  # routers of tasks 2 and 1 learn


def test_routing_is_per_sample_by_the_first_token_with_the_samples_task_router():
    moe = layer()
    x = data(4, 5, D)
    task = torch.tensor([0, 1, 2, 1])
    out = moe(x, task)
    later = x.clone()
    later[:, 1:] = data(4, 4, D, seed=9)  # change every token but the first
    assert torch.equal(moe(later, task).routing.expert_index, out.routing.expert_index)
    for b in range(4):
        torch.testing.assert_close(out.router_logits[b], x[b, 0] @ moe.w_gate[int(task[b])])
    other = moe(x, torch.tensor([2, 2, 2, 2]))
    assert not torch.equal(other.router_logits, out.router_logits)


def test_gates_are_a_softmax_over_the_top_k_logits():
    moe = layer()
    out = moe(data(7, 2, D), torch.zeros(7, dtype=torch.long))
    top = out.router_logits.topk(K, dim=-1)
    torch.testing.assert_close(out.routing.gates, torch.softmax(top.values, dim=-1))
    assert torch.equal(out.routing.expert_index, top.indices)


def test_zero_initialised_adapters_and_routers():
    torch.manual_seed(0)
    moe = AdapterMoE(D, num_experts=E, top_k=K, num_tasks=TASKS, adapter_dim=4).eval()
    x = data(3, 2, D)
    out = moe(x, torch.tensor([0, 1, 2]))
    assert torch.equal(out.output, torch.zeros_like(x))  # up = 0: the backbone is unchanged at the start
    assert torch.equal(out.router_logits, torch.zeros(3, E))  # zero routers tie every logit (eval: no noise)
    # ties: every sample gets the same experts whatever its input (torch.topk's tie order, not the data)
    assert (out.routing.expert_index == out.routing.expert_index[0]).all()


def test_noise_only_in_training_and_with_the_noisy_top_k_scale():
    moe = layer()
    c, task = data(5, D), torch.tensor([0, 1, 2, 0, 1])
    clean = moe.router_logits(c, task)
    assert torch.equal(clean, moe.router_logits(c, task))
    moe.train()
    torch.manual_seed(3)
    noisy = moe.router_logits(c, task)
    torch.manual_seed(3)
    eps = torch.randn(5, E)
    std = torch.stack([F.softplus(c[b] @ moe.w_noise[int(task[b])]) + 0.01 for b in range(5)])
    torch.testing.assert_close(noisy, clean + eps * std)
    moe_quiet = layer(noisy_gating=False).train()
    assert torch.equal(moe_quiet.router_logits(c, task), clean)


def test_zero_shot_samples_get_no_adapter_and_are_not_counted():
    moe = layer().train()
    x = data(4, 3, D)
    task = torch.tensor([ZERO_SHOT, 1, ZERO_SHOT, 0])
    out = moe(x, task)
    assert torch.equal(out.output[task == ZERO_SHOT], torch.zeros(2, 3, D))
    assert out.output[task >= 0].abs().sum() > 0
    assert int(moe.activation_counts.sum()) == 2 * K  # two active samples, k experts each


def test_activation_counts_accumulate_only_in_training():
    moe = layer()
    x, task = data(9, 2, D), torch.tensor([0, 1, 2] * 3)
    moe(x, task)
    assert moe.activation_counts.sum() == 0  # evaluation does not count
    moe.train()
    first = moe(x, task).routing.expert_index
    second = moe(x, task).routing.expert_index  # noise: possibly different choices
    expected = torch.bincount(torch.cat([first, second]).flatten(), minlength=E)
    assert torch.equal(moe.activation_counts, expected)


def test_freeze_most_used_freezes_the_top_counts_and_resets_them():
    moe = layer()
    with torch.no_grad():
        moe.activation_counts.copy_(torch.tensor([3, 9, 0, 7, 1]))
    chosen = moe.freeze_most_used(2)
    assert sorted(chosen.tolist()) == [1, 3]
    assert moe.frozen.tolist() == [False, True, False, True, False]
    assert moe.activation_counts.sum() == 0
    # An already frozen expert can be chosen again; it keeps its first copy.
    with torch.no_grad():
        moe.activation_counts.copy_(torch.tensor([5, 9, 0, 0, 0]))
        copy_of_1 = moe.frozen_w1[1].clone()
        moe.experts.w1[1].add_(1.0)  # parameter drifts (as optimiser state might move it); the copy must not
    assert sorted(moe.freeze_most_used(2).tolist()) == [0, 1]
    assert torch.equal(moe.frozen_w1[1], copy_of_1)
    assert moe.frozen.tolist() == [True, True, False, True, False]
    assert moe.freeze_most_used(2).numel() == 0  # nothing counted since: nothing frozen


def test_frozen_experts_get_no_gradient_and_no_optimiser_can_move_them():
    moe = layer().train()
    with torch.no_grad():
        moe.activation_counts.copy_(torch.tensor([0, 6, 0, 4, 1]))
    moe.freeze_most_used(2)  # experts 1 and 3
    before = {k: v.clone() for k, v in moe.expert_parameters().items()}
    optimiser = torch.optim.AdamW(moe.parameters(), lr=0.1, weight_decay=0.5)  # decay and momentum everywhere
    for step in range(5):
        task = torch.randint(0, TASKS, (8,), generator=torch.Generator().manual_seed(step))
        out = moe(data(8, 2, D, seed=step), task)
        loss = out.output.square().sum()
        optimiser.zero_grad()
        loss.backward()
        for p in (moe.experts.w1, moe.experts.w2):
            assert p.grad[[1, 3]].abs().sum() == 0  # frozen rows: zero gradient
        optimiser.step()
    after = moe.expert_parameters()
    for name in before:
        assert torch.equal(after[name][[1, 3]], before[name][[1, 3]]), name  # frozen: bit for bit
        assert not torch.equal(after[name][[0, 2, 4]], before[name][[0, 2, 4]]), name  # the others trained


def test_load_balance_aux_loss_is_the_cores_over_active_samples():
    moe = layer()
    task = torch.tensor([0, ZERO_SHOT, 1, 2, 1])
    out = moe(data(5, 2, D), task)
    active = task >= 0
    expected = load_balancing_loss(out.routing.router_probs[active], out.routing.expert_index[active], E)
    torch.testing.assert_close(out.aux_losses["load_balance"], expected)


def test_one_expert_is_a_single_adapter_with_gate_one():
    moe = layer(num_experts=1, top_k=1)
    out = moe(data(4, 2, D), torch.tensor([0, 1, 2, 0]))
    assert torch.equal(out.routing.gates, torch.ones(4, 1))


# ------------------------------------------------------------------------------------------------
# The model: continual training keeps frozen experts and old routers, zero-shot path is the backbone
# ------------------------------------------------------------------------------------------------

CONFIG = ContinualConfig(d_in=6, d_model=8, d_hidden=16, num_blocks=2, num_tasks=3, classes_per_task=3,
                         num_experts=4, top_k=2, adapter_dim=4, freeze_per_task=2)


def train_task(model, task, steps=15, seed=0):
    g = torch.Generator().manual_seed(seed + task)
    optimiser = torch.optim.AdamW(model.trainable_parameters(task), lr=0.05, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, CONFIG.d_in, generator=g) + task
        y = torch.randint(0, CONFIG.classes_per_task, (16,), generator=g)
        ids = torch.full((16,), task)
        loss = F.cross_entropy(model(x, ids, ids), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return model.end_task()


def test_trainable_parameters_are_the_experts_and_the_current_router_only():
    torch.manual_seed(0)
    model = ContinualAdapterModel(CONFIG)
    params = {id(p) for p in model.trainable_parameters(1)}
    for adapter in model.adapters:
        assert id(adapter.w_gate[1]) in params and id(adapter.w_gate[0]) not in params
        assert id(adapter.experts.w1) in params
    backbone = [*model.embed.parameters(), *model.mlps.parameters(), *model.norms.parameters()]
    assert not any(p.requires_grad for p in backbone)
    assert not any(id(p) in params for p in backbone)


def test_later_tasks_leave_old_routers_frozen_experts_and_fully_frozen_samples_unchanged():
    torch.manual_seed(0)
    model = ContinualAdapterModel(CONFIG)
    frozen_after_0 = train_task(model, 0)
    assert all(len(ids) == 2 for ids in frozen_after_0)
    routers_0 = [adapter.w_gate[0].detach().clone() for adapter in model.adapters]
    weights_0 = [{k: v[ids].clone() for k, v in adapter.expert_parameters().items()}
                 for adapter, ids in zip(model.adapters, frozen_after_0)]
    x = torch.randn(64, CONFIG.d_in, generator=torch.Generator().manual_seed(7))
    ids0 = torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        logits_0 = model(x, ids0, ids0)
        _, outs = model.features(x, ids0)
    # samples whose chosen experts in *every* layer are among the frozen ones
    fully_frozen = torch.ones(64, dtype=torch.bool)
    for out, adapter in zip(outs, model.adapters):
        fully_frozen &= adapter.frozen[out.routing.expert_index].all(-1)
    train_task(model, 1)
    train_task(model, 2)
    for adapter, router, ids, weights in zip(model.adapters, routers_0, frozen_after_0, weights_0):
        assert torch.equal(adapter.w_gate[0], router)
        for name, value in adapter.expert_parameters().items():
            assert torch.equal(value[ids], weights[name])
    with torch.no_grad():
        logits_after = model(x, ids0, ids0)
    assert fully_frozen.sum() > 0  # the check below is not vacuous
    torch.testing.assert_close(logits_after[fully_frozen], logits_0[fully_frozen], rtol=0, atol=1e-6)
    assert not torch.allclose(logits_after[~fully_frozen], logits_0[~fully_frozen])


def test_zero_shot_path_is_exactly_the_backbone_after_training():
    torch.manual_seed(0)
    model = ContinualAdapterModel(CONFIG)
    torch.manual_seed(0)
    backbone = ContinualAdapterModel(CONFIG).eval()  # same backbone and class vectors, untrained adapters
    train_task(model, 0)
    x = torch.randn(10, CONFIG.d_in)
    zs, head = torch.full((10,), ZERO_SHOT), torch.full((10,), 2)
    with torch.no_grad():
        assert torch.equal(model(x, zs, head), backbone(x, zs, head))
        assert torch.equal(backbone(x, zs, head), backbone(x, torch.zeros(10, dtype=torch.long), head))
        assert not torch.allclose(model(x, torch.zeros(10, dtype=torch.long), head), backbone(x, zs, head))


def test_sequence_input_and_vector_input_agree():
    torch.manual_seed(0)
    model = ContinualAdapterModel(dataclasses.replace(CONFIG, num_tasks=2)).eval()
    for adapter in model.adapters:
        with torch.no_grad():
            adapter.experts.w2.normal_()
    x, ids = torch.randn(5, CONFIG.d_in), torch.tensor([0, 1, 0, 1, 0])
    torch.testing.assert_close(model(x, ids, ids), model(x.unsqueeze(1), ids, ids))


# ------------------------------------------------------------------------------------------------
# DDAS
# ------------------------------------------------------------------------------------------------


def three_distributions(seed=0):
    g = torch.Generator().manual_seed(seed)
    bases = [torch.linalg.qr(torch.randn(12, 12, generator=g))[0][:, :3] for _ in range(4)]
    offsets = [torch.randn(12, generator=g) for _ in range(4)]
    return [lambda n, b=b, o=o: torch.randn(n, 3, generator=g) @ b.T + o for b, o in zip(bases, offsets)]


@pytest.fixture(scope="module")
def fitted():
    """Three fitted autoencoders (tasks 0-2) and the samplers of four distributions (3 is never fitted)."""
    samplers = three_distributions(0)
    torch.manual_seed(0)
    selector = DistributionSelector(12, hidden=100)
    for t in range(3):
        selector.add_task(samplers[t](1000), steps=300, lr=3e-3, generator=torch.Generator().manual_seed(t))
    return selector, samplers


def test_selector_picks_the_task_whose_autoencoder_reconstructs_best(fitted):
    selector, samplers = fitted
    selector.threshold = float("inf")
    for t in range(3):
        x = samplers[t](200)
        errors = selector.errors(x)
        assert errors.shape == (200, 3)
        chosen = selector.select(x)
        assert torch.equal(chosen, errors.argmin(-1))
        assert (chosen == t).float().mean() > 0.98


def test_selector_threshold_sends_unseen_inputs_to_zero_shot(fitted):
    selector, samplers = fitted
    own = torch.cat([selector.errors(samplers[t](500))[:, t] for t in range(3)])
    selector.threshold = own.quantile(0.99).item()
    unseen = selector.select(samplers[3](500))
    assert (unseen == ZERO_SHOT).float().mean() > 0.9
    assert (selector.select(samplers[0](500)) == 0).float().mean() > 0.95
    assert (selector.select(samplers[0](10), threshold=0.0) == ZERO_SHOT).all()


def test_batch_level_selection_gives_one_answer_per_batch(fitted):
    selector, samplers = fitted
    selector.threshold = float("inf")
    mixed = torch.cat([samplers[0](30), samplers[1](10)])
    per_sample = selector.select(mixed)
    assert set(per_sample.tolist()) == {0, 1}
    per_batch = selector.select(mixed, per="batch")
    assert per_batch.eq(per_batch[0]).all()  # the official code's per-batch decision: one id for everyone
    assert per_batch[0] == selector.errors(mixed).mean(0).argmin()
