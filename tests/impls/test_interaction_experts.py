"""Tests for reference_impls/interaction_experts.py (I2MoE).

A naive per-expert oracle checks the prediction (values and gradients); closed-form cases check each
interaction loss; property tests check what the losses measure (an expert that ignores a modality is
invisible to its perturbation) and that inference uses only the clean pass."""

from __future__ import annotations

import typing

import pytest
import torch
import torch.nn.functional as F

from reference_impls.interaction_experts import (
    InteractionMoE,
    LateFusion,
    expert_names,
    interaction_losses,
    perturbation_sensitivity,
    redundancy_loss,
    synergy_loss,
    training_loss,
    uniqueness_loss,
)
from reference_impls.moe import ExpertBackend

DIMS, C, H = (5, 7), 3, 4


def make_model(seed=0, **kwargs) -> InteractionMoE:
    torch.manual_seed(seed)
    return InteractionMoE(DIMS, C, embed_dim=H, expert_hidden=8, reweight_hidden=8, **kwargs)


def inputs(B=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, d, generator=g) for d in DIMS]


# ------------------------------------------------------------------------------------------------
# Losses: closed forms
# ------------------------------------------------------------------------------------------------


def test_uniqueness_is_a_triplet_margin_over_perturbations():
    anchor = torch.tensor([[0.0, 0.0]])
    far, near = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0]])
    # removing modality 0 moves the output by 5, removing modality 1 by 1: margin met, loss 0
    ok = torch.stack([anchor, far, near])  # [V = clean, perturb 0, perturb 1]
    assert uniqueness_loss(ok, 0).item() == pytest.approx(0.0, abs=1e-5)
    # the other way round: 5 - 1 + 1 = 5 (torch's pairwise distance adds eps = 1e-6 per coordinate)
    assert uniqueness_loss(ok, 1).item() == pytest.approx(5.0, abs=1e-4)
    assert uniqueness_loss(ok, 1, margin=0.5).item() == pytest.approx(4.5, abs=1e-4)


def test_uniqueness_averages_over_the_other_modalities():
    # M = 3: anchor 0; perturbing modality 0 moves by 2; modalities 1 and 2 by 1 and 3.
    outs = torch.tensor([[[0.0]], [[2.0]], [[1.0]], [[3.0]]])
    expected = (max(1 - 2 + 1, 0) + max(3 - 2 + 1, 0)) / 2  # (0 + 2) / 2
    assert uniqueness_loss(outs, 0).item() == pytest.approx(expected, abs=1e-4)


def test_synergy_and_redundancy_cosines():
    outs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[-1.0, 0.0]]])  # cos 0 and cos -1
    assert synergy_loss(outs).item() == pytest.approx(-0.5, abs=1e-6)
    assert redundancy_loss(outs).item() == pytest.approx(1.5, abs=1e-6)
    same = torch.tensor([[[2.0, 1.0]], [[4.0, 2.0]], [[0.2, 0.1]]])  # same direction, any length
    assert synergy_loss(same).item() == pytest.approx(1.0, abs=1e-6)
    assert redundancy_loss(same).item() == pytest.approx(0.0, abs=1e-6)


def test_interaction_loss_is_the_normalised_sum():
    g = torch.Generator().manual_seed(0)
    outs = torch.randn(4, 3, 5, 2, generator=g)  # [M+2, 1+M, B, D] with M = 2
    losses = interaction_losses(outs)
    assert list(losses) == ["uniqueness_0", "uniqueness_1", "synergy", "redundancy", "interaction"]
    assert losses["uniqueness_1"].item() == pytest.approx(uniqueness_loss(outs[1], 1).item())
    assert losses["synergy"].item() == pytest.approx(synergy_loss(outs[2]).item())
    assert losses["redundancy"].item() == pytest.approx(redundancy_loss(outs[3]).item())
    total = sum(losses[k] for k in ("uniqueness_0", "uniqueness_1", "synergy", "redundancy")) / 4
    assert losses["interaction"].item() == pytest.approx(total.item(), abs=1e-6)
    assert expert_names(2) == ["uniqueness_0", "uniqueness_1", "synergy", "redundancy"]


# ------------------------------------------------------------------------------------------------
# The model against a naive oracle
# ------------------------------------------------------------------------------------------------


def oracle(model: InteractionMoE, xs):
    """Loop over experts with their own weight slices; the reweighting MLP in eval mode."""
    pooled = [enc(x) for enc, x in zip(model.encoders, xs)]
    z = torch.cat(pooled, -1)
    w = torch.softmax(model.reweight(z) / model.temperature, -1)
    ex = model.experts
    logits = torch.zeros(z.shape[0], C)
    for i in range(model.num_experts):
        hidden = F.gelu(z @ ex.w1[i] + ex.b1[i]) @ ex.w2[i] + ex.b2[i]
        o = hidden @ model.head_weight[i] + model.head_bias[i]
        logits = logits + w[:, i : i + 1] * o
    return logits, w


@pytest.mark.parametrize("backend", typing.get_args(ExpertBackend))  # every backend the core offers
def test_prediction_matches_the_per_expert_oracle(backend):
    model = make_model(expert_backend=backend, temperature=0.7).eval()
    xs = inputs()
    out = model(xs)
    ref, w = oracle(model, xs)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.weights, w, atol=1e-6, rtol=1e-6)
    weight = torch.randn_like(ref)
    params = list(model.parameters())
    grads = torch.autograd.grad((out.logits * weight).sum(), params)
    grads_ref = torch.autograd.grad((ref * weight).sum(), params)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sequence_inputs_are_mean_pooled():
    model = make_model().eval()
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randn(4, 3, d, generator=g) for d in DIMS]
    out = model(seqs)
    # pooling happens after the (token-wise) encoder
    z = torch.cat([enc(x).mean(1) for enc, x in zip(model.encoders, seqs)], -1)
    torch.testing.assert_close(out.weights, torch.softmax(model.reweight(z), -1))


def test_weights_are_a_distribution_and_temperature_flattens_them():
    xs = inputs(B=20)
    sharp = make_model(temperature=0.1).eval()(xs).weights
    flat = make_model(temperature=1e6).eval()(xs).weights
    torch.testing.assert_close(sharp.sum(-1), torch.ones(20))
    torch.testing.assert_close(flat, torch.full_like(flat, 0.25), atol=1e-5, rtol=0)
    assert sharp.max(-1).values.mean() > flat.max(-1).values.mean()


def test_inference_uses_the_clean_pass_only():
    model = make_model().eval()
    xs = inputs()
    plain = model(xs)
    assert plain.losses is None
    a = model(xs, with_interaction_losses=True, generator=torch.Generator().manual_seed(0))
    b = model(xs, with_interaction_losses=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.logits, plain.logits)
    torch.testing.assert_close(b.logits, plain.logits)
    assert a.losses["interaction"].item() != b.losses["interaction"].item()  # noise only enters the losses
    model.train()
    assert model(xs).losses is not None  # training computes them by default


def test_variants_replace_exactly_one_modality():
    model = make_model()
    xs = inputs()
    emb = model.encode(xs)
    v = model.variants(emb, torch.Generator().manual_seed(0))
    assert v.shape == (3, 6, 2 * H)
    torch.testing.assert_close(v[1, :, H:], v[0, :, H:])  # modality 0 perturbed: modality 1 untouched
    torch.testing.assert_close(v[2, :, :H], v[0, :, :H])
    assert not torch.allclose(v[1, :, :H], v[0, :, :H])
    noise = torch.randn(emb[0].shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(v[1, :, :H], noise)  # randn_like(e_0), drawn first


def test_an_expert_that_ignores_a_modality_is_invisible_to_its_perturbation():
    model = make_model()
    with torch.no_grad():
        model.experts.w1[:, H:, :] = 0.0  # every expert ignores modality 1's embedding
    out = model(inputs(), with_interaction_losses=True, generator=torch.Generator().manual_seed(0))
    _, logits = model.run_experts(model.variants(model.encode(inputs()), torch.Generator().manual_seed(0)))
    torch.testing.assert_close(logits[:, 2], logits[:, 0])  # o^(1) == o^0 for every expert
    losses = out.losses
    # the modality-1 terms are cos = 1: synergy = (cos_0 + 1) / 2, redundancy = ((1 - cos_0) + 0) / 2
    cos = lambda i: F.cosine_similarity(logits[i, 0], logits[i, 1], dim=-1).mean()
    assert losses["synergy"].item() == pytest.approx(((cos(2) + 1) / 2).item(), abs=1e-6)
    assert losses["redundancy"].item() == pytest.approx(((1 - cos(3)) / 2).item(), abs=1e-6)
    # uniqueness for modality 1: anchor == negative, so the loss is d(anchor, positive) + margin >= 1
    d = (logits[1, 0] - logits[1, 1] + 1e-6).norm(dim=-1).mean()
    assert losses["uniqueness_1"].item() == pytest.approx(d.item() + 1.0, abs=1e-4)
    sensitivity = perturbation_sensitivity(model, inputs(), generator=torch.Generator().manual_seed(0))
    assert sensitivity[:, 1].eq(0).all()


def test_embedding_space_losses_use_the_fused_embedding():
    model = make_model(interaction_space="embedding")
    xs = inputs()
    g = lambda: torch.Generator().manual_seed(3)
    out = model(xs, with_interaction_losses=True, generator=g())
    z, _ = model.run_experts(model.variants(model.encode(xs), g()))
    assert out.losses["synergy"].item() == pytest.approx(synergy_loss(z[2]).item(), abs=1e-6)


def test_gradient_paths():
    model = make_model()
    xs, y = inputs(), torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(xs, with_interaction_losses=True, generator=torch.Generator().manual_seed(0))
    out.losses["interaction"].backward(retain_graph=True)
    assert torch.count_nonzero(model.experts.w1.grad) > 0
    assert torch.count_nonzero(model.encoders[0][0].weight.grad) > 0
    assert all(p.grad is None for p in model.reweight.parameters())  # losses act on the experts only
    model.zero_grad()
    loss, parts = training_loss(out, y, interaction_weight=0.5)
    assert parts["task"] == pytest.approx(F.cross_entropy(out.logits, y).item())
    assert loss.item() == pytest.approx(parts["task"] + 0.5 * parts["interaction"], abs=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.reweight.parameters())


def test_late_fusion_is_additive_across_modalities():
    torch.manual_seed(0)
    model = LateFusion(DIMS, C)
    x1a, x2a = inputs(seed=1)
    x1b, x2b = inputs(seed=2)
    # f(x1, x2) = g1(x1) + g2(x2): the effect of changing x1 does not depend on x2 (no interaction)
    d_a = model([x1b, x2a]) - model([x1a, x2a])
    d_b = model([x1b, x2b]) - model([x1a, x2b])
    torch.testing.assert_close(d_a, d_b, atol=1e-6, rtol=1e-5)


def test_input_validation():
    with pytest.raises(ValueError):
        InteractionMoE((4,), 2)
    with pytest.raises(ValueError):
        InteractionMoE(DIMS, 2, interaction_space="hidden")
    with pytest.raises(ValueError):
        make_model()(inputs()[:1])
