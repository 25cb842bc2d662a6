"""Tests for reference_impls/test_time_rerouting.py (R2-T2, arXiv 2502.20395).

Oracles: a per-expert loop for the routed model, brute-force cosine neighbours, a per-sample loop for
batched NGD, a grid search for kernel regression's alpha. Properties: NGD lowers the neighbourhood
loss and never touches the model; the official learning rate barely moves logits; top-k routing
blocks NGD from promoting an unselected expert while kernel regression can; and on a task where the
router is corrupted, re-routing from correct neighbours restores accuracy that a no-reference
baseline does not.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from reference_impls.test_time_rerouting import (
    ReferenceSet,
    RoutedClassifier,
    build_reference_set,
    entropy_rerouting,
    kernel_regression_rerouting,
    kernel_regression_weights,
    knn_label_vote,
    nearest_neighbours,
    neighbourhood_gradient_descent,
    neighbourhood_loss,
    random_neighbours,
)

D_C, D_Q, C, E = 6, 5, 3, 4


def tiny_model(seed: int = 0, **kwargs) -> RoutedClassifier:
    torch.manual_seed(seed)
    return RoutedClassifier(D_C, D_Q, C, num_experts=E, d_hidden=8, **kwargs)


def tiny_data(n: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_C, generator=g), torch.randn(n, D_Q, generator=g), torch.randint(0, C, (n,), generator=g)


def tiny_reference(model, n: int = 40, seed: int = 2) -> ReferenceSet:
    content, question, _ = tiny_data(n, seed)
    with torch.no_grad():
        labels = model(content, question).logits.argmax(-1)  # all "correct" by construction
    embeddings = torch.randn(n, 7, generator=torch.Generator().manual_seed(seed))
    return build_reference_set(model, content, question, labels, embeddings)


def naive_forward(model: RoutedClassifier, content, router_logits):
    """Per-expert loop: head(sum_{e in topk} g_e FFN_e(x)) with renormalised top-k gates (the raw p for
    k = 1, as the core does: Switch's gate)."""
    probs = torch.softmax(router_logits, -1)
    top = probs.topk(model.top_k, -1)
    gates = top.values / top.values.sum(-1, keepdim=True) if model.top_k > 1 else top.values
    ex = model.experts
    mixed = torch.zeros_like(content)
    for b in range(content.shape[0]):
        for j in range(model.top_k):
            e = int(top.indices[b, j])
            h = F.gelu(content[b] @ ex.w1[e] + ex.b1[e])
            mixed[b] = mixed[b] + gates[b, j] * (h @ ex.w2[e] + ex.b2[e])
    return model.head(mixed)


# ------------------------------------------------------------------------------------------------
# The routed model
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [None, 2, 1])
def test_routed_classifier_matches_a_per_expert_loop_values_and_gradients(top_k):
    model = tiny_model(top_k=top_k)
    content, question, _ = tiny_data()
    z = model.router_logits(content, question).detach().requires_grad_(True)
    z_naive = z.detach().clone().requires_grad_(True)
    out = model(content, router_logits=z).logits
    ref = naive_forward(model, content, z_naive)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(z.grad, z_naive.grad, atol=1e-5, rtol=1e-5)


def test_dense_default_gates_are_the_softmax():
    model = tiny_model()
    content, question, _ = tiny_data()
    out = model(content, question)
    assert model.top_k == E
    probs = torch.softmax(out.router_logits, -1)
    torch.testing.assert_close(out.routing.gates, probs.gather(-1, out.routing.expert_index))


def test_supplied_logits_equal_the_routers_own():
    model = tiny_model()
    content, question, _ = tiny_data()
    a = model(content, question)
    b = model(content, router_logits=model.router_logits(content, question))
    torch.testing.assert_close(a.logits, b.logits)
    with pytest.raises(ValueError):
        model(content)


def test_task_loss_reaches_the_router_in_training():
    model = tiny_model()
    content, question, labels = tiny_data()
    F.cross_entropy(model(content, question).logits, labels).backward()
    assert model.router.weight.grad.abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------
# Neighbours and the reference set
# ------------------------------------------------------------------------------------------------


def test_nearest_neighbours_match_brute_force_cosine():
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(5, 7, generator=g), torch.randn(30, 7, generator=g)
    index, kernel = nearest_neighbours(queries, keys, k=5)
    for b in range(5):
        cos = torch.tensor([F.cosine_similarity(queries[b], keys[n], dim=0).item() for n in range(30)])
        order = cos.argsort(descending=True)[:5]
        assert index[b].tolist() == order.tolist()
        torch.testing.assert_close(kernel[b], cos[order], atol=1e-6, rtol=1e-6)  # K = 1 - cosine distance
    assert (kernel[:, :-1] >= kernel[:, 1:]).all()


def test_a_query_equal_to_a_key_finds_it_with_kernel_one():
    keys = torch.randn(20, 4, generator=torch.Generator().manual_seed(3))
    index, kernel = nearest_neighbours(keys[[4, 11]] * 3.0, keys, k=1)  # cosine ignores scale
    assert index[:, 0].tolist() == [4, 11]
    torch.testing.assert_close(kernel[:, 0], torch.ones(2))
    with pytest.raises(ValueError):
        nearest_neighbours(keys, keys, k=21)


def test_random_neighbours_are_distinct_with_unit_kernel():
    index, kernel = random_neighbours(50, 9, k=5, generator=torch.Generator().manual_seed(0))
    assert all(len(set(row)) == 5 for row in index.tolist())
    assert index.max() < 9 and (kernel == 1).all()


def test_reference_set_keeps_exactly_the_correct_predictions():
    model = tiny_model()
    content, question, labels = tiny_data(60)
    with torch.no_grad():
        out = model(content, question)
    correct = out.logits.argmax(-1) == labels
    ref = build_reference_set(model, content, question, labels, torch.arange(60.0).unsqueeze(-1))
    assert len(ref) == int(correct.sum()) and 0 < len(ref) < 60
    assert ref.embeddings.squeeze(-1).tolist() == torch.arange(60.0)[correct].tolist()
    with torch.no_grad():
        assert (model(ref.content, router_logits=ref.router_logits).logits.argmax(-1) == ref.labels).all()
    torch.testing.assert_close(ref.routing_weights.sum(-1), torch.ones(len(ref)))


def test_knn_label_vote_is_kernel_weighted():
    ref = ReferenceSet(torch.zeros(4, 1), torch.zeros(4, D_C), torch.tensor([0, 1, 1, 2]), torch.zeros(4, E))
    index = torch.tensor([[0, 1, 2], [0, 1, 3]])
    kernel = torch.tensor([[0.9, 0.5, 0.5], [0.9, 0.5, 0.3]])
    assert knn_label_vote(ref, index, kernel, 3).tolist() == [1, 0]  # 1.0 > 0.9; then 0.9 > 0.5 > 0.3


# ------------------------------------------------------------------------------------------------
# The neighbourhood objective and NGD
# ------------------------------------------------------------------------------------------------


def test_neighbourhood_loss_matches_a_loop():
    model = tiny_model()
    ref = tiny_reference(model)
    z = torch.randn(3, E, generator=torch.Generator().manual_seed(4))
    index = torch.tensor([[0, 5, 9], [1, 2, 3], [7, 7, 30]])
    kernel = torch.tensor([[0.9, 0.2, 0.4], [0.5, 0.5, 0.5], [1.0, 0.1, 0.3]])
    loss = neighbourhood_loss(model, z, ref, index, kernel)
    for b in range(3):
        terms = [kernel[b, j] * F.cross_entropy(naive_forward(model, ref.content[index[b, j]][None], z[b][None]),
                                                ref.labels[index[b, j]][None]) for j in range(3)]
        assert loss[b].item() == pytest.approx((sum(terms) / kernel[b].sum()).item(), abs=1e-5)


def ngd_problem(n: int):
    """A tiny model, its reference set, n test samples' router logits and their 5 nearest neighbours."""
    model = tiny_model()
    ref = tiny_reference(model)
    content, question, _ = tiny_data(n, seed=5)
    z0 = model.router_logits(content, question).detach()
    index, kernel = nearest_neighbours(torch.randn(n, 7, generator=torch.Generator().manual_seed(6)), ref.embeddings, 5)
    return model, ref, z0, index, kernel


def test_batched_ngd_equals_optimising_each_sample_alone():
    model, ref, z0, index, kernel = ngd_problem(6)
    batched = neighbourhood_gradient_descent(model, z0, ref, index, kernel, lr=0.5)
    for b in range(6):
        alone = neighbourhood_gradient_descent(model, z0[b : b + 1], ref, index[b : b + 1], kernel[b : b + 1], lr=0.5)
        torch.testing.assert_close(batched[b], alone[0], atol=1e-5, rtol=1e-5)


def test_ngd_lowers_the_neighbourhood_loss_and_leaves_the_model_alone():
    model, ref, z0, index, kernel = ngd_problem(8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    z = neighbourhood_gradient_descent(model, z0, ref, index, kernel, lr=1.0, steps=20)
    with torch.no_grad():
        after, before_loss = (neighbourhood_loss(model, r, ref, index, kernel) for r in (z, z0))
        assert (after < before_loss).all()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad and p.grad is None


def test_zero_steps_returns_the_routers_logits():
    model = tiny_model()
    ref = tiny_reference(model)
    z0 = torch.randn(3, E)
    index, kernel = nearest_neighbours(torch.randn(3, 7), ref.embeddings, 5)
    torch.testing.assert_close(neighbourhood_gradient_descent(model, z0, ref, index, kernel, steps=0), z0)


def test_official_learning_rate_barely_moves_the_logits():
    # Adam's step is at most lr * (1 - beta1) / sqrt(1 - beta2) = 3.16 lr (Kingma & Ba, section 2.1); with
    # the cosine schedule from 1e-2 over 10 steps the logits move by a few hundredths at most.
    model = tiny_model()
    ref = tiny_reference(model)
    z0 = torch.randn(16, E, generator=torch.Generator().manual_seed(7))
    index, kernel = nearest_neighbours(torch.randn(16, 7), ref.embeddings, 5)
    z = neighbourhood_gradient_descent(model, z0, ref, index, kernel)  # official defaults
    lrs = [1e-5 + (1e-2 - 1e-5) * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(10)]
    assert (z - z0).abs().max().item() <= 3.17 * sum(lrs)
    assert sum(lrs) < 0.06


def test_top_k_routing_gives_no_gradient_to_unselected_experts():
    # Renormalised top-k gates do not depend on the logits of experts outside the top k, so NGD can
    # only reweight the router's own choices, not promote an expert it left out.
    model = tiny_model(top_k=2)
    ref = tiny_reference(model)
    z = torch.tensor([[3.0, 2.0, 0.0, -1.0]], requires_grad=True)
    index, kernel = nearest_neighbours(torch.randn(1, 7), ref.embeddings, 5)
    neighbourhood_loss(model, z, ref, index, kernel).sum().backward()
    assert z.grad[0, 2:].abs().max() < 1e-8 < 1e-3 < z.grad[0, :2].abs().max()  # zero up to rounding in p / sum p


# ------------------------------------------------------------------------------------------------
# Kernel regression
# ------------------------------------------------------------------------------------------------


def test_kernel_regression_weights_are_the_weighted_mean_of_neighbour_routing():
    z = torch.randn(5, E, generator=torch.Generator().manual_seed(0))
    ref = ReferenceSet(torch.zeros(5, 1), torch.zeros(5, D_C), torch.zeros(5, dtype=torch.long), z)
    index = torch.tensor([[0, 2, 4], [1, 1, 3]])
    kernel = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    r_hat = kernel_regression_weights(ref, index, kernel)
    p = torch.softmax(z, -1)
    torch.testing.assert_close(r_hat[0], 0.5 * p[0] + 0.25 * p[2] + 0.25 * p[4])
    torch.testing.assert_close(r_hat[1], 0.4 * p[1] + 0.6 * p[3])
    torch.testing.assert_close(r_hat.sum(-1), torch.ones(2))


def test_kernel_regression_alpha_minimises_the_loss_along_the_segment():
    model = tiny_model()
    ref = tiny_reference(model)
    z0 = torch.randn(6, E, generator=torch.Generator().manual_seed(8)) * 2
    index, kernel = nearest_neighbours(torch.randn(6, 7, generator=torch.Generator().manual_seed(9)), ref.embeddings, 5)
    logits, alpha = kernel_regression_rerouting(model, z0, ref, index, kernel, search_steps=14)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    r, r_hat = torch.softmax(z0, -1), kernel_regression_weights(ref, index, kernel)
    grid = torch.linspace(0, 1, 401)
    with torch.no_grad():
        found = neighbourhood_loss(model, logits, ref, index, kernel)
        for b in range(6):
            mixes = (1 - grid[:, None]) * r[b] + grid[:, None] * r_hat[b]
            losses = neighbourhood_loss(model, mixes.log(), ref, index[b].expand(401, -1), kernel[b].expand(401, -1))
            assert found[b].item() <= losses.min().item() + 1e-3
    torch.testing.assert_close(torch.softmax(logits, -1), (1 - alpha[:, None]) * r + alpha[:, None] * r_hat)


def test_kernel_regression_can_promote_an_expert_top_k_left_out():
    model = tiny_model(top_k=2)
    content = torch.randn(6, D_C, generator=torch.Generator().manual_seed(3))
    # every neighbour routes all its weight to expert 3; the test sample's router prefers experts 0 and 1
    ref = ReferenceSet(torch.randn(6, 2), content, torch.zeros(6, dtype=torch.long),
                       torch.tensor([[-9.0, -9.0, -9.0, 9.0]]).expand(6, -1))
    with torch.no_grad():
        ref.labels = model(content, router_logits=ref.router_logits).logits.argmax(-1)
    z0 = torch.tensor([[3.0, 2.0, 0.0, -1.0]])
    index, kernel = torch.arange(6)[None], torch.ones(1, 6)
    logits, alpha = kernel_regression_rerouting(model, z0, ref, index, kernel)
    assert alpha.item() > 0.5 and logits.argmax().item() == 3


# ------------------------------------------------------------------------------------------------
# End to end: re-routing repairs a corrupted router, a no-reference baseline does not
# ------------------------------------------------------------------------------------------------


def test_rerouting_from_correct_neighbours_repairs_a_broken_router():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tasks, d = 2, 4
    W = torch.randn(tasks, 2, d, generator=g)  # task t labels x by argmax(W_t x)
    prototypes = 2.0 * torch.eye(tasks, d)

    def make(n):
        task = torch.randint(0, tasks, (n,), generator=g)
        x = torch.randn(n, d, generator=g)
        question = prototypes[task] + 0.2 * torch.randn(n, d, generator=g)
        return task, x, question, torch.einsum("ncd,nd->nc", W[task], x).argmax(-1)

    task, x, q, y = make(2000)
    model = RoutedClassifier(d, d, 2, num_experts=2, d_hidden=16)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(model(x, q).logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    ref_task, ref_x, ref_q, ref_y = make(500)
    reference = build_reference_set(model, ref_x, ref_q, ref_y, F.one_hot(ref_task, tasks).float())
    test_task, test_x, test_q, test_y = make(400)
    accuracy = lambda z: (model(test_x, router_logits=z).logits.argmax(-1) == test_y).float().mean().item()
    with torch.no_grad():
        clean = accuracy(model.router_logits(test_x, test_q))
        broken = -model.router_logits(test_x, test_q)  # the router now prefers the wrong expert
        assert accuracy(broken) < clean - 0.2
    index, kernel = nearest_neighbours(F.one_hot(test_task, tasks).float() + 0.1 * torch.randn(400, tasks, generator=g),
                                       reference.embeddings, 5)
    ngd = neighbourhood_gradient_descent(model, broken, reference, index, kernel, lr=1.0)
    kernel_logits, _ = kernel_regression_rerouting(model, broken, reference, index, kernel)
    no_reference = entropy_rerouting(model, test_x, broken)
    with torch.no_grad():
        assert accuracy(ngd) > clean - 0.1
        assert accuracy(kernel_logits) > clean - 0.1
        assert accuracy(no_reference) < clean - 0.2
