"""Tests for reference_impls/limoe.py: the per-modality entropy losses, the contrastive loss, routing
through the core (Batch Priority Routing) and the one-tower model's invariants.

The numbers follow the research notes (reference_impls.md section 11, items 18-21): local entropy in
[0, ln E], thresholded global entropy in [0, ln S], per-modality independence, contrastive loss ln B.
"""

import dataclasses
import math

import pytest
import torch

from reference_impls.limoe import (
    LIMoE,
    LIMoEConfig,
    contrastive_loss,
    entropy_losses,
    expert_modality_counts,
    global_entropy_loss,
    local_entropy_loss,
    retrieval_accuracy,
    training_loss,
)

TINY = LIMoEConfig(
    image_size=8,
    patch_size=4,
    vocab_size=11,
    max_text_len=3,
    d_model=16,
    n_heads=2,
    n_layers=4,
    d_hidden=32,
    embed_dim=8,
    num_experts=4,
)


def tiny_model(seed: int = 0, **overrides) -> LIMoE:
    torch.manual_seed(seed)
    return LIMoE(dataclasses.replace(TINY, **overrides)).eval()


def tiny_batch(batch_size: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, TINY.image_size, TINY.image_size, generator=g)
    text = torch.randint(0, TINY.vocab_size, (batch_size, TINY.max_text_len), generator=g)
    return images, text


def one_hot_rows(experts: list[int], num_experts: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(experts), num_experts).float()


# ------------------------------------------------------------------------------------------------
# Local entropy
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_experts", [2, 8, 64])
def test_local_entropy_of_uniform_router_is_log_num_experts(num_experts):
    probs = torch.full((10, num_experts), 1.0 / num_experts)
    assert local_entropy_loss(probs).item() == pytest.approx(math.log(num_experts), abs=1e-6)


def test_local_entropy_value_for_eight_experts():
    assert local_entropy_loss(torch.full((3, 8), 0.125)).item() == pytest.approx(2.0794415, abs=1e-6)


def test_local_entropy_of_one_hot_router_is_zero():
    assert local_entropy_loss(one_hot_rows([0, 3, 3, 7], 8)).item() == 0.0


def test_local_entropy_is_the_mean_over_tokens():
    # One uniform token (ln 4) and one one-hot token (0): mean ln 4 / 2.
    probs = torch.cat([torch.full((1, 4), 0.25), one_hot_rows([2], 4)])
    assert local_entropy_loss(probs).item() == pytest.approx(math.log(4) / 2, abs=1e-6)


def test_local_entropy_lies_between_zero_and_log_e():
    probs = torch.softmax(3 * torch.randn(200, 8, generator=torch.Generator().manual_seed(0)), -1)
    value = local_entropy_loss(probs).item()
    assert 0.0 < value < math.log(8)


# ------------------------------------------------------------------------------------------------
# Thresholded global entropy
# ------------------------------------------------------------------------------------------------


def test_global_entropy_is_zero_when_usage_spreads_over_at_least_s_experts():
    # Uniform over all 8 experts, and uniform over exactly S=4 experts (entropy ln 4 = ln S).
    assert global_entropy_loss(torch.full((5, 8), 0.125), soft_min_experts=4).item() == 0.0
    spread_over_four = one_hot_rows([0, 1, 2, 3] * 3, 8)
    assert global_entropy_loss(spread_over_four, soft_min_experts=4).item() == pytest.approx(0.0, abs=1e-6)


def test_global_entropy_is_log_s_when_collapsed():
    collapsed = one_hot_rows([5] * 6, 8)
    assert global_entropy_loss(collapsed, soft_min_experts=4).item() == pytest.approx(1.3862944, abs=1e-6)


def test_global_entropy_over_two_experts_is_log_s_minus_log_two():
    two = one_hot_rows([1, 6] * 4, 8)
    expected = math.log(4) - math.log(2)
    assert global_entropy_loss(two, soft_min_experts=4).item() == pytest.approx(expected, abs=1e-6)


def test_global_entropy_depends_on_the_marginal_not_on_each_token():
    # Every token is decisive (local 0) but the modality uses all experts equally (global 0), while
    # uniform-per-token routing has the same marginal (global 0) and maximal local entropy.
    decisive = one_hot_rows(list(range(8)), 8)
    undecided = torch.full((8, 8), 0.125)
    assert global_entropy_loss(decisive, 8).item() == pytest.approx(0.0, abs=1e-6)
    assert global_entropy_loss(undecided, 8).item() == pytest.approx(0.0, abs=1e-6)
    assert local_entropy_loss(decisive).item() == 0.0
    assert local_entropy_loss(undecided).item() == pytest.approx(math.log(8), abs=1e-6)


def test_global_entropy_with_s_equal_e_is_the_unthresholded_form_shifted():
    probs = torch.softmax(torch.randn(50, 8, generator=torch.Generator().manual_seed(3)), -1)
    mean = probs.mean(0)
    entropy = -(mean * mean.log()).sum()
    assert global_entropy_loss(probs, 8).item() == pytest.approx(math.log(8) - entropy.item(), abs=1e-6)


def test_global_entropy_gradient_vanishes_above_the_threshold():
    logits = torch.zeros(6, 8, requires_grad=True)  # marginal entropy ln 8 > ln 4
    global_entropy_loss(torch.softmax(logits, -1), 4).backward()
    assert torch.count_nonzero(logits.grad) == 0
    logits = torch.tensor([[4.0, 0, 0, 0]] * 6, requires_grad=True)  # collapsed: gradient spreads it
    global_entropy_loss(torch.softmax(logits, -1), 4).backward()
    assert logits.grad[:, 0].gt(0).all() and logits.grad[:, 1:].lt(0).all()


def test_global_entropy_rejects_s_below_one():
    with pytest.raises(ValueError):
        global_entropy_loss(torch.full((2, 4), 0.25), soft_min_experts=0.5)


def test_empty_modality_gives_zero_losses():
    empty = torch.zeros(0, 8)
    assert local_entropy_loss(empty).item() == 0.0
    assert global_entropy_loss(empty, 4).item() == 0.0


# ------------------------------------------------------------------------------------------------
# Contrastive loss and retrieval
# ------------------------------------------------------------------------------------------------


def test_contrastive_loss_with_equal_logits_is_log_batch_size():
    same = torch.ones(32, 5)  # every pair has cosine 1, so all logits are equal
    loss = contrastive_loss(same, same.clone(), torch.tensor(math.log(10.0)))
    assert loss.item() == pytest.approx(3.4657359, abs=1e-5)


def test_contrastive_loss_for_orthonormal_pairs_matches_closed_form():
    B, scale = 6, 5.0
    eye = torch.eye(B)
    # Each row: logit `scale` for the partner, 0 for the other B-1.
    expected = -scale + math.log(math.exp(scale) + B - 1)
    loss = contrastive_loss(eye, eye, torch.tensor(math.log(scale)))
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_contrastive_loss_is_symmetric_in_image_and_text():
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    log_scale = torch.tensor(2.0)
    a = contrastive_loss(images, texts, log_scale)
    b = contrastive_loss(texts, images, log_scale)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    perm = torch.randperm(16, generator=g)  # relabelling the pairs changes nothing
    assert contrastive_loss(images[perm], texts[perm], log_scale).item() == pytest.approx(a.item(), abs=1e-5)


def test_retrieval_accuracy():
    eye = torch.eye(5)
    assert retrieval_accuracy(eye, eye) == (1.0, 1.0)
    assert retrieval_accuracy(eye, eye.flip(0)) == (pytest.approx(0.2), pytest.approx(0.2))  # middle row


# ------------------------------------------------------------------------------------------------
# Routing through the core: capacity and Batch Priority Routing
# ------------------------------------------------------------------------------------------------


def test_batch_priority_routing_keeps_the_top_c_tokens_by_max_gate():
    model = tiny_model(capacity_factor=0.5, priority="batch")
    out = model(*tiny_batch(batch_size=8))
    binding = 0
    for moe_out in out.moe_outputs:
        routing = moe_out.routing
        max_gate = routing.router_probs.max(-1).values
        expert, kept = routing.expert_index[:, 0], routing.keep[:, 0]
        for e in range(TINY.num_experts):
            mine = (expert == e).nonzero().squeeze(1)
            if len(mine) <= routing.capacity:
                assert kept[mine].all()
                continue
            binding += 1
            top_c = mine[max_gate[mine].argsort(descending=True)[: routing.capacity]]
            assert set(mine[kept[mine]].tolist()) == set(top_c.tolist())
    assert binding > 0  # capacity did bind, so the assertion above was exercised


def test_position_priority_keeps_the_first_c_tokens_instead():
    model = tiny_model(capacity_factor=0.5, priority="position")
    routing = model(*tiny_batch(batch_size=8)).moe_outputs[0].routing
    expert, kept = routing.expert_index[:, 0], routing.keep[:, 0]
    for e in range(TINY.num_experts):
        mine = (expert == e).nonzero().squeeze(1)  # ascending token order
        assert kept[mine].tolist() == [i < routing.capacity for i in range(len(mine))]


def test_capacity_follows_the_vmoe_formula():
    model = tiny_model(capacity_factor=1.0, top_k=1)
    images, text = tiny_batch(batch_size=6)
    routing = model(images, text).moe_outputs[0].routing
    tokens = 6 * (TINY.num_patches + TINY.max_text_len)  # both modalities share one routing group
    assert routing.router_probs.shape == (tokens, TINY.num_experts)
    assert routing.capacity == math.ceil(1 * tokens * 1.0 / TINY.num_experts)


# ------------------------------------------------------------------------------------------------
# The model: per-modality losses, equivariance, gradients
# ------------------------------------------------------------------------------------------------


def test_model_shapes_and_router_probs_split_by_modality():
    model = tiny_model()
    out = model(*tiny_batch(batch_size=6))
    assert out.image_embeddings.shape == out.text_embeddings.shape == (6, TINY.embed_dim)
    assert len(out.router_probs) == 2  # blocks 1 and 3 of 4 are MoE
    for layer in out.router_probs:
        assert layer["image"].shape == (6 * TINY.num_patches, TINY.num_experts)
        assert layer["text"].shape == (6 * TINY.max_text_len, TINY.num_experts)
    counts = expert_modality_counts(out)
    assert counts.shape == (2, 2, TINY.num_experts)
    assert counts[:, 0].sum(-1).tolist() == [6 * TINY.num_patches] * 2


def test_each_modality_losses_unchanged_when_the_other_modality_is_added():
    # Dropless: a token's routing depends only on its own sequence, so the text losses and
    # embeddings are the same whether or not image tokens share the batch (and vice versa).
    model = tiny_model(capacity_factor=None)
    images, text = tiny_batch()
    both = model(images, text)
    text_only, image_only = model(text=text), model(images=images)
    assert image_only.text_embeddings is None and text_only.image_embeddings is None
    losses_both = entropy_losses(both, model.config)
    for alone, modality in ((text_only, "text"), (image_only, "image")):
        losses_alone = entropy_losses(alone, model.config)
        assert set(losses_alone) == {f"{modality}_local", f"{modality}_global"}
        for name, value in losses_alone.items():
            assert value.item() == pytest.approx(losses_both[name].item(), abs=1e-6)
    torch.testing.assert_close(text_only.text_embeddings, both.text_embeddings)
    torch.testing.assert_close(image_only.image_embeddings, both.image_embeddings)


def test_shared_capacity_couples_the_modalities():
    # With a binding capacity and position priority the image tokens (first in the batch) take the
    # buffer slots, so adding images changes what happens to the text: the experts really are shared.
    model = tiny_model(capacity_factor=0.5, priority="position")
    images, text = tiny_batch()
    assert not torch.allclose(model(text=text).text_embeddings, model(images, text).text_embeddings)


def test_entropy_losses_average_over_moe_layers():
    model = tiny_model()
    out = model(*tiny_batch())
    losses = entropy_losses(out, model.config)
    local_text = sum(local_entropy_loss(layer["text"]) for layer in out.router_probs) / 2
    global_image = sum(global_entropy_loss(layer["image"], 8.0) for layer in out.router_probs) / 2
    assert losses["text_local"].item() == pytest.approx(local_text.item(), abs=1e-6)
    assert losses["image_global"].item() == pytest.approx(global_image.item(), abs=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [dict(capacity_factor=None), dict(capacity_factor=0.5, priority="batch")],
    ids=["dropless", "bpr-binding"],
)
def test_permuting_the_pairs_permutes_the_embeddings(overrides):
    model = tiny_model(**overrides)
    images, text = tiny_batch(batch_size=8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    out, out_perm = model(images, text), model(images[perm], text[perm])
    assert sum(o.dropped for o in out.moe_outputs) == sum(o.dropped for o in out_perm.moe_outputs)
    torch.testing.assert_close(out_perm.image_embeddings, out.image_embeddings[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_perm.text_embeddings, out.text_embeddings[perm], atol=1e-5, rtol=1e-5)


def test_position_priority_is_not_permutation_equivariant_when_capacity_binds():
    model = tiny_model(capacity_factor=0.5, priority="position")
    images, text = tiny_batch(batch_size=8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    out, out_perm = model(images, text), model(images[perm], text[perm])
    assert not torch.allclose(out_perm.image_embeddings, out.image_embeddings[perm], atol=1e-4)


def test_contrastive_loss_trains_the_router_through_raw_gates():
    # k=1: the gate is the raw softmax probability whatever `renormalize` says (Switch eq. 2; V-MoE);
    # renormalising one choice would give p/p = 1 and cut the router off from the task loss.
    zero_aux = dict(local_weight={"image": 0.0, "text": 0.0}, global_weight={"image": 0.0, "text": 0.0})
    largest = {}
    for renormalize in (False, True):
        model = tiny_model(renormalize=renormalize, capacity_factor=None, **zero_aux).train()
        loss, parts = training_loss(model(*tiny_batch()), model.config)
        assert loss.item() == pytest.approx(parts["contrastive"], abs=1e-6)
        loss.backward()
        largest[renormalize] = model.blocks[1].mlp.router.weight.grad.abs().max().item()
    assert largest[False] > 1e-4
    assert largest[True] == pytest.approx(largest[False], rel=1e-5)


def test_logit_scale_is_clamped():
    model = tiny_model()
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert model(*tiny_batch()).log_scale.item() == pytest.approx(math.log(100.0), abs=1e-6)


def test_a_few_steps_fit_a_small_batch():
    torch.manual_seed(0)
    model = LIMoE(TINY).train()
    images, text = tiny_batch(batch_size=8)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss, parts = training_loss(model(images, text), model.config)
        first = parts["contrastive"] if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert first > 1.5  # near ln 8 = 2.08 at initialisation
    assert parts["contrastive"] < 0.1 * first
    out = model.eval()(images, text)
    assert retrieval_accuracy(out.image_embeddings, out.text_embeddings) == (1.0, 1.0)
