"""Invariants of reference_impls/conf_gate.py (Conf-SMoE confidence gate, imputation, baselines).

Numbers come from the formulas in the module docstring (shared/research/reference_impls.md section 11,
items 22-26) or are recomputed here by hand from the parameters.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from reference_impls.conf_gate import (
    GATES,
    GaussianGatedMoE,
    cv_squared,
    fusemoe_balance_loss,
    prob_in_top_k,
    ConfGateConfig,
    ConfidenceGatedMoE,
    LaplaceGatedMoE,
    MultimodalMoEClassifier,
    SoftmaxGatedMoE,
    auxiliary_loss,
    confidence_loss,
    expert_load_entropy,
    num_kept_sources,
    pre_impute,
    sample_present_mask,
    sparse_cross_attention,
)
from reference_impls.moe import load_balancing_loss

D = 16  # multiple of 4 so that F.grouped_mm runs on CPU


def small_cfg(**kw):
    base = dict(d_model=D, num_heads=2, num_labels=3, num_experts=4, top_k=2, tokens_per_modality=4,
                input_dims=(5, 6, 7), dropout=0.0)
    base.update(kw)
    return ConfGateConfig(**base)


def make_batch(cfg, B=12, rate=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(B, cfg.tokens_per_modality, Dm, generator=g) for Dm in cfg.input_dims]
    present = sample_present_mask(B, cfg.num_modalities, rate, generator=g)
    labels = torch.randint(0, cfg.num_labels, (B,), generator=g)
    return inputs, present, labels


def expert_ffn(experts, e, x):
    """Expert e of a moe.Experts evaluated directly from its stacked weights (the naive reference)."""
    return F.gelu(x @ experts.w1[e] + experts.b1[e]) @ experts.w2[e] + experts.b2[e]


# ----------------------------------------------------------------------------------------------------
# The confidence gate
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_level", [True, False])
def test_confidences_in_unit_interval_and_sum_below_k(token_level):
    torch.manual_seed(0)
    cfg = small_cfg(token_level_confidence=token_level)
    gate = ConfidenceGatedMoE(cfg)
    x = torch.randn(200, D) * 3
    out = gate(x, labels=torch.randint(0, 3, (200,)))
    assert out.weights.shape == (200, 2)
    assert (out.weights > 0).all() and (out.weights < 1).all()
    s = out.weights.sum(-1)
    assert (s > 0).all() and (s < cfg.top_k).all()
    # not normalised: the sums are spread, not all 1
    assert not torch.allclose(s, torch.ones_like(s))
    # the output is the confidence-weighted sum of the per-slot expert outputs
    assert torch.allclose(out.output, (out.weights.unsqueeze(-1) * out.expert_outputs).sum(1), atol=1e-6)


def test_expert_outputs_and_confidence_match_a_hand_computation():
    torch.manual_seed(1)
    gate = ConfidenceGatedMoE(small_cfg())
    with torch.no_grad():  # make the per-expert ConfNets differ
        gate.conf_ln_weight.normal_()
        gate.conf_ln_bias.normal_()
    x, y = torch.randn(30, D), torch.randint(0, 3, (30,))
    out = gate(x, labels=y)
    for t in range(30):
        for j in range(2):
            e = int(out.expert_index[t, j])
            h = expert_ffn(gate.experts, e, x[t])
            assert torch.allclose(out.expert_outputs[t, j], h, atol=1e-5)
            ln = F.layer_norm(h, (D,), gate.conf_ln_weight[e], gate.conf_ln_bias[e])
            c = torch.sigmoid(ln @ gate.conf_weight[e] + gate.conf_bias[e])
            assert torch.allclose(out.weights[t, j], c, atol=1e-5)
            p = torch.softmax(gate.prob_layer(h), -1)[y[t]]
            assert torch.allclose(out.target[t, j], p, atol=1e-6)


def test_target_in_unit_interval_and_loss_is_mse():
    torch.manual_seed(2)
    gate = ConfidenceGatedMoE(small_cfg())
    out = gate(torch.randn(64, D) * 5, labels=torch.randint(0, 3, (64,)))
    assert (out.target >= 0).all() and (out.target <= 1).all()
    loss = confidence_loss(out, faithful_to="code")
    assert loss >= 0
    assert torch.allclose(loss, ((out.weights - out.target) ** 2).mean())
    ce = F.cross_entropy(out.target_logits.reshape(-1, 3), out.labels.repeat_interleave(2))
    assert torch.allclose(confidence_loss(out, faithful_to="paper"), loss + ce)


def test_batch_level_confidence_is_the_per_expert_mean():
    torch.manual_seed(3)
    token = ConfidenceGatedMoE(small_cfg(token_level_confidence=True)).eval()
    batch = ConfidenceGatedMoE(small_cfg(token_level_confidence=False)).eval()
    batch.load_state_dict(token.state_dict())
    x = torch.randn(100, D)
    c_tok, c_batch = token(x).weights, batch(x).weights
    idx = token(x).expert_index
    for e in range(4):
        sel = idx == e
        if sel.any():
            assert torch.allclose(c_batch[sel], c_tok[sel].mean().expand(int(sel.sum())), atol=1e-6)


def test_identical_experts_give_sum_of_confidences_times_the_ffn():
    torch.manual_seed(4)
    gate = ConfidenceGatedMoE(small_cfg()).eval()
    with torch.no_grad():
        for p in (gate.experts.w1, gate.experts.w2, gate.experts.b1, gate.experts.b2):
            p.copy_(p[0].expand_as(p))
    x = torch.randn(40, D)
    out = gate(x)
    ffn = expert_ffn(gate.experts, 0, x)
    assert torch.allclose(out.output, out.weights.sum(-1, keepdim=True) * ffn, atol=1e-5)
    assert not torch.allclose(out.output, ffn, atol=1e-3)  # unnormalised, so not the dense FFN


def test_router_noise_only_in_training():
    torch.manual_seed(5)
    gate = ConfidenceGatedMoE(small_cfg())
    x = torch.randn(50, D)
    gate.eval()
    assert torch.equal(gate.router_logits(x), x @ gate.w_gate)
    gate.train()
    assert not torch.allclose(gate.router_logits(x), x @ gate.w_gate)


# ----------------------------------------------------------------------------------------------------
# Gradients: what the docstring says about the router in each mode
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("faithful_to", ["code", "paper"])
def test_confidence_router_never_receives_a_gradient(faithful_to):
    torch.manual_seed(6)
    cfg = small_cfg(faithful_to=faithful_to)
    model = MultimodalMoEClassifier(cfg).train()
    inputs, present, labels = make_batch(cfg)
    out = model(inputs, present, labels)
    (F.cross_entropy(out.logits, labels) + auxiliary_loss(out, cfg)).backward()
    assert model.moe.w_gate.grad is None and model.moe.w_noise.grad is None
    for p in (model.moe.experts.w1, model.moe.conf_weight, model.moe.prob_layer.weight, model.q_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_confidence_target_gradient_differs_between_modes():
    torch.manual_seed(7)
    gate = ConfidenceGatedMoE(small_cfg())
    x, y = torch.randn(32, D), torch.randint(0, 3, (32,))
    out = gate(x, labels=y)
    mse_code = F.mse_loss(out.weights, out.target)  # code: target not detached
    mse_paper = F.mse_loss(out.weights, out.target.detach())
    g_code = torch.autograd.grad(mse_code, gate.prob_layer.weight, retain_graph=True)[0]
    g_paper = torch.autograd.grad(mse_paper, gate.prob_layer.weight, allow_unused=True, retain_graph=True)[0]
    assert g_code.abs().sum() > 0
    assert g_paper is None or g_paper.abs().sum() == 0
    # in paper mode W_p learns from the labels instead
    g_ce = torch.autograd.grad(confidence_loss(out, faithful_to="paper"), gate.prob_layer.weight)[0]
    assert g_ce.abs().sum() > 0


@pytest.mark.parametrize("gate_cls, param", [(SoftmaxGatedMoE, "router.weight"),
                                            (LaplaceGatedMoE, "expert_embeddings")])
def test_baseline_routers_get_task_and_balance_gradients(gate_cls, param):
    torch.manual_seed(8)
    gate = gate_cls(small_cfg())
    x = torch.randn(64, D)
    w = gate.get_parameter(param)
    out = gate(x)
    g_task = torch.autograd.grad(out.output.pow(2).mean(), w, retain_graph=True)[0]
    g_bal = torch.autograd.grad(load_balancing_loss(out.router_probs, out.expert_index, 4), w)[0]
    assert g_task.abs().sum() > 0 and g_bal.abs().sum() > 0
    # gates are the renormalised top-k probabilities
    assert torch.allclose(out.weights.sum(-1), torch.ones(64), atol=1e-6)


def test_auxiliary_loss_per_gate():
    torch.manual_seed(9)
    for gate in ("softmax", "laplace", "gaussian"):
        cfg = small_cfg(gate=gate, load_balance_coef=0.01, balance_loss="switch")
        model = MultimodalMoEClassifier(cfg).eval()
        out = model(*make_batch(cfg))
        lb = torch.stack([load_balancing_loss(g.router_probs, g.expert_index, 4) for g in out.gates]).mean().detach()
        assert torch.allclose(auxiliary_loss(out, cfg), 0.01 * lb)
        assert 1.0 - 1e-6 <= lb.item() <= 4.0  # Switch loss: 1 when f or P is uniform, E when collapsed
        assert auxiliary_loss(out, small_cfg(gate=gate, load_balance_coef=0.0)) == 0
        fuse = small_cfg(gate=gate)  # FuseMoE's loss is the default, coefficient 0.01 (loss_coef)
        assert fuse.load_balance_coef == 0.01 and fuse.balance_loss == "fusemoe"
        expected = torch.stack([fusemoe_balance_loss(g, 4) for g in out.gates]).mean()
        assert torch.allclose(auxiliary_loss(out, fuse), 0.01 * expected)
    # the confidence gate adds no balance loss, whatever the coefficient
    cfg = small_cfg(load_balance_coef=0.5)
    model = MultimodalMoEClassifier(cfg).eval()
    inputs, present, labels = make_batch(cfg)
    out = model(inputs, present, labels)
    mse = F.mse_loss(torch.cat([g.weights for g in out.gates]), torch.cat([g.target for g in out.gates]))
    assert torch.allclose(auxiliary_loss(out, cfg), mse)


# ----------------------------------------------------------------------------------------------------
# Missing modalities
# ----------------------------------------------------------------------------------------------------


def test_present_mask_rate_and_reserved_modality():
    g = torch.Generator().manual_seed(0)
    for rate in (0.0, 0.3, 0.6):
        present = sample_present_mask(30000, 3, rate, generator=g)
        assert present.any(dim=1).all()  # every sample keeps one modality
        assert abs((~present).float().mean().item() - rate) < 0.01
    with pytest.raises(ValueError):
        sample_present_mask(10, 3, 0.7)  # > (M-1)/M


def test_pre_impute_uses_the_mean_of_observed_pool_instances():
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(6, 4, 3, generator=g), torch.randn(6, 4, 2, generator=g)]
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    pool0 = torch.randn(1, 4, 3, generator=g).expand(50, 4, 3)  # all pool rows identical -> mean is that row
    pool1 = torch.stack([torch.full((4, 2), float(v)) for v in (1.0, 3.0)])  # mean of draws lies in [1, 3]
    filled = pre_impute(inputs, present, [pool0, pool1], num_draws=10, generator=g)
    for m in range(2):
        assert torch.equal(filled[m][present[:, m]], inputs[m][present[:, m]])
    assert torch.allclose(filled[0][~present[:, 0]], pool0[0].expand(2, 4, 3))
    missing1 = filled[1][~present[:, 1]]
    assert ((missing1 >= 1) & (missing1 <= 3)).all()
    # 10 draws from {1, 3}: the mean is a multiple of 0.2, constant over the sample's tokens
    assert torch.allclose(missing1 * 5, (missing1 * 5).round(), atol=1e-5)
    assert (missing1 == missing1[:, :1, :1]).all()


@pytest.mark.parametrize("gate", ["confidence", "softmax", "laplace"])
def test_missing_tokens_never_reach_an_expert(gate):
    torch.manual_seed(10)
    cfg = small_cfg(gate=gate)
    model = MultimodalMoEClassifier(cfg).train()
    inputs, present, labels = make_batch(cfg, B=16, rate=0.5)
    seen_by_moe, seen_by_experts = [], []
    h1 = model.moe.register_forward_hook(lambda mod, args, out: seen_by_moe.append(args[0]))
    h2 = model.moe.experts.register_forward_hook(lambda mod, args, out: seen_by_experts.append(args[0].shape[0]))
    out = model(inputs, present, labels)
    h1.remove(), h2.remove()
    S, k = cfg.tokens_per_modality, cfg.top_k
    assert [x.shape[0] for x in seen_by_moe] == [S * int(present[:, m].sum()) for m in range(3)]
    assert sum(seen_by_experts) == k * S * int(present.sum())
    for m in range(3):
        assert torch.equal(out.observed_index[m], present[:, m].nonzero().squeeze(1))
        assert out.gates[m].expert_index.shape[0] == S * int(present[:, m].sum())


def test_complete_samples_never_take_the_imputation_path():
    torch.manual_seed(11)
    cfg = small_cfg()
    model = MultimodalMoEClassifier(cfg).eval()
    inputs, present, labels = make_batch(cfg, B=16, rate=0.3)
    complete = present.all(1)
    assert complete.any() and (~complete).any()
    out = model(inputs, present, labels)
    for m, imp in out.imputations.items():
        assert torch.equal(imp.sample_index, (~present[:, m]).nonzero().squeeze(1))
        assert not complete[imp.sample_index].any()
    # re-drawing the imputation's projections changes only the incomplete samples' logits
    with torch.no_grad():
        model.q_proj.weight.normal_()
        model.k_proj.weight.normal_()
    logits2 = model(inputs, present, labels).logits
    assert torch.equal(logits2[complete], out.logits[complete])
    assert not torch.allclose(logits2[~complete], out.logits[~complete])
    # a batch of complete samples leaves the imputation without gradient
    keep = complete.nonzero().squeeze(1)
    out_c = model(inputs=[x[keep] for x in inputs], present=present[keep], labels=labels[keep])
    assert out_c.imputations == {}
    F.cross_entropy(out_c.logits, labels[keep]).backward()
    assert model.q_proj.weight.grad is None and model.k_proj.weight.grad is None


def test_post_imputation_keeps_the_top_quarter_unrenormalised():
    torch.manual_seed(12)
    Bm, M, S, k, d = 5, 3, 8, 2, D
    q_proj, k_proj = torch.nn.Linear(d, d), torch.nn.Linear(d, d)
    query = torch.randn(Bm, S, d) * 3
    sources = torch.randn(Bm, M - 1, S, k, d) * 3
    sources[0, 1] = 0  # sample 0 also misses the second other modality: zeroed, as in the code
    update, attention, kept_w, kept_i = sparse_cross_attention(query, sources, q_proj, k_proj)
    n_keep = num_kept_sources(M, S, 0.25)
    assert n_keep == (M - 1) * S // 4 == 4
    assert attention.shape == (Bm, S, (M - 1) * S, k) and kept_w.shape == (Bm, S, n_keep, k)
    assert torch.allclose(attention.sum(2), torch.ones(Bm, S, k), atol=1e-5)
    # the kept weights are the n_keep largest, per (query token, slot)
    top = attention.sort(dim=2, descending=True).values
    assert torch.allclose(kept_w, top[:, :, :n_keep], atol=0)
    assert (kept_w.min(2).values >= top[:, :, n_keep]).all()
    # not renormalised: each slot's kept weights sum to at most 1, and here strictly less
    sums = kept_w.sum(2)
    assert (sums <= 1 + 1e-6).all() and (sums < 1 - 1e-3).any()
    # the update by hand for one query token: sum over kept sources and slots of w * k_linear(source)
    keys = k_proj(sources[2].reshape(-1, d)).view((M - 1) * S, k, d)
    manual = sum(kept_w[2, 3, n, j] * keys[kept_i[2, 3, n, j], j] for n in range(n_keep) for j in range(k))
    assert torch.allclose(update[2, 3], manual, atol=1e-5)


def test_model_imputation_records_are_consistent():
    torch.manual_seed(13)
    cfg = small_cfg()
    model = MultimodalMoEClassifier(cfg).eval()
    inputs, present, labels = make_batch(cfg, B=20, rate=0.6)
    out = model(inputs, present, labels)
    n_keep = num_kept_sources(3, cfg.tokens_per_modality, 0.25)
    for m, imp in out.imputations.items():
        assert imp.kept_weights.shape == (imp.sample_index.numel(), cfg.tokens_per_modality, n_keep, cfg.top_k)
        assert (imp.kept_weights.sum(2) <= 1 + 1e-6).all()


# ----------------------------------------------------------------------------------------------------
# Laplace gate, backbone switch, diagnostics
# ----------------------------------------------------------------------------------------------------


def test_laplace_scores_are_largest_for_the_nearest_expert_embedding():
    torch.manual_seed(14)
    gate = LaplaceGatedMoE(small_cfg())
    with torch.no_grad():
        gate.expert_embeddings.copy_(torch.randn(4, D) * 4)
    target = torch.randint(0, 4, (64,))
    x = gate.expert_embeddings.detach()[target] + 0.3 * torch.randn(64, D)
    logits = gate.clean_logits(x)
    assert torch.allclose(logits, -(x[:, None] - gate.expert_embeddings[None]).norm(dim=-1), atol=1e-4)
    assert torch.equal(logits.argmax(-1), target)
    out = gate(x)
    assert torch.equal(out.expert_index[:, 0], target)
    assert torch.equal(out.router_probs.argmax(-1), target)


def test_attention_residual_follows_the_switch():
    torch.manual_seed(15)
    for mode in ("code", "paper"):
        model = MultimodalMoEClassifier(small_cfg(faithful_to=mode)).eval()
        inputs, present, labels = make_batch(model.cfg)
        seen = {}
        hooks = [model.attn.register_forward_hook(lambda m, a, o: seen.__setitem__("a", o)),
                 model.norm_attn.register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0])),
                 model.norm_moe_in.register_forward_hook(lambda m, a, o: seen.__setitem__("h", a[0]))]
        model(inputs, present, labels)
        for h in hooks:
            h.remove()
        a, x0, h = seen["a"], seen["x"], seen["h"].reshape(seen["a"].shape)
        expected = 2 * a if mode == "code" else x0 + a
        assert torch.allclose(h, expected, atol=1e-6)


def test_expert_load_entropy_values():
    E = 4
    balanced = torch.arange(400).remainder(E).view(200, 2)
    assert math.isclose(expert_load_entropy(balanced, E).item(), math.log(E), rel_tol=1e-6)
    collapsed = torch.tensor([[0, 1]]).expand(100, 2)
    assert math.isclose(expert_load_entropy(collapsed, E).item(), math.log(2), rel_tol=1e-6)


def test_training_steps_reduce_the_loss_for_every_gate():
    """A few Adam steps on a fixed batch lower the training loss (the model can learn)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second OpenMP thread only waits on a busy machine
    try:
        _train_a_little()
    finally:
        torch.set_num_threads(threads)


def _train_a_little():
    for gate in ("confidence", "softmax", "laplace", "gaussian"):
        torch.manual_seed(16)
        cfg = small_cfg(gate=gate, load_balance_coef=0.01)
        model = MultimodalMoEClassifier(cfg).train()
        inputs, present, labels = make_batch(cfg, B=32, rate=0.3)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(25):
            out = model(inputs, present, labels)
            loss = F.cross_entropy(out.logits, labels) + auxiliary_loss(out, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], (gate, losses[0], losses[-1])


# ----------------------------------------------------------------------------------------------------
# Like-for-like baselines: FuseMoE's noise and balance loss, and its Gaussian gate
# ----------------------------------------------------------------------------------------------------


def test_cv_squared_hand_values():
    assert cv_squared(torch.tensor([1.0, 1.0, 1.0])).item() == pytest.approx(0.0)
    # mean 2, unbiased variance ((1)^2 + 0 + 1^2) / 2 = 1 -> 1 / 4
    assert cv_squared(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(0.25)
    assert cv_squared(torch.tensor([5.0])).item() == 0.0


def test_prob_in_top_k_matches_resampled_noise():
    torch.manual_seed(0)
    clean = torch.randn(6, 5)
    std = torch.rand(6, 5) + 0.5
    noisy = clean + torch.randn(6, 5) * std
    p = prob_in_top_k(clean, noisy, std, 2)
    # Monte Carlo: re-draw one expert's noise, the others fixed, and count how often it is in the top 2
    draws = 20_000
    for t in range(2):
        for e in range(5):
            z = noisy[t].repeat(draws, 1)
            z[:, e] = clean[t, e] + torch.randn(draws) * std[t, e]
            in_top = (z.topk(2, -1).indices == e).any(-1).float().mean()
            assert abs(in_top.item() - p[t, e].item()) < 0.02, (t, e)


def test_baselines_are_noisy_in_training_and_gaussian_squares_the_distance():
    torch.manual_seed(1)
    x = torch.randn(32, D)
    for gate in ("softmax", "laplace", "gaussian"):
        moe = GATES[gate](small_cfg(gate=gate)).train()
        out = moe(x)
        assert out.noise_std is not None and not torch.allclose(out.router_logits, out.clean_logits)
        moe.eval()
        out = moe(x)
        assert out.noise_std is None and torch.equal(out.router_logits, out.clean_logits)
    gauss = GaussianGatedMoE(small_cfg(gate="gaussian"))
    expected = -((x[:, None] - gauss.expert_embeddings[None]) ** 2).sum(-1)
    assert torch.allclose(gauss.clean_logits(x), expected, atol=1e-4)


def test_fusemoe_balance_loss_by_hand_and_its_gradient():
    torch.manual_seed(2)
    moe = SoftmaxGatedMoE(small_cfg(gate="softmax")).eval()
    x = torch.randn(16, D)
    out = moe(x)
    importance = torch.zeros(4).index_add(0, out.expert_index.reshape(-1), out.weights.reshape(-1))
    load = torch.bincount(out.expert_index.reshape(-1), minlength=4).float()
    expected = importance.var() / importance.mean() ** 2 + load.var() / load.mean() ** 2
    assert torch.allclose(fusemoe_balance_loss(out, 4), expected, atol=1e-5)
    moe.train()
    out = moe(x)
    loss = fusemoe_balance_loss(out, 4)
    grads = torch.autograd.grad(loss, [moe.router.weight, moe.w_noise])
    assert all(g.abs().sum() > 0 for g in grads)  # the smooth load reaches the noise weights too
