"""The tiny MoE-LLaVA engine: layer placement, upcycling, MoE-tuning's freezing schedule, the loss."""

import pytest
import torch
import torch.nn.functional as F

from reference_impls.moe import SparseMoE
from reference_impls.moe_llava import (
    IGNORE_INDEX,
    MoELLaVAConfig,
    TinyMoELLaVA,
    cosine_with_warmup,
    moe_layer_indices,
    train_stage,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CFG = MoELLaVAConfig(vocab_size=20, max_text_len=6, d_model=32, d_hidden=64, vision_width=32)


def batch(B=4, L=5, seed=0, device="cpu", images=True):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(B, 3, 16, 16, generator=g) if images else None
    ids = torch.randint(0, CFG.vocab_size, (B, L), generator=g)
    labels = ids.clone()
    labels[:, :2] = IGNORE_INDEX  # a prompt without loss
    to = (lambda t: t.to(device) if t is not None else None)
    return to(imgs), to(ids), to(labels)


def model(seed=0, device="cpu", **kw):
    torch.manual_seed(seed)
    cfg = MoELLaVAConfig(**{**CFG.__dict__, **kw})
    return TinyMoELLaVA(cfg).to(device)


def test_moe_layer_placement_follows_moe_mode():
    assert moe_layer_indices("sparse", 32) == list(range(0, 32, 2))  # Phi-2: 16 MoE layers
    assert len(moe_layer_indices("sparse", 32)) == 16
    assert moe_layer_indices("dense", 4) == [0, 1, 2, 3]
    assert moe_layer_indices("first_half", 4) == [0, 1]
    assert moe_layer_indices("second_half", 4) == [2, 3]
    m = model().upcycle()
    assert m.moe_layers == [0, 2]
    moe = m.blocks[0].mlp
    assert isinstance(moe, SparseMoE) and moe.num_experts == 4 and moe.top_k == 2
    assert moe.capacity_factor == 1.5 and moe.eval_capacity_factor == 2.0 and moe.min_capacity == 0
    with pytest.raises(RuntimeError):
        m.upcycle()


@pytest.mark.parametrize("device", DEVICES)
def test_upcycling_preserves_the_dense_model_at_eval(device):
    m = model(device=device).eval()
    imgs, ids, labels = batch(device=device)
    with torch.no_grad():
        dense = m(imgs, ids, labels)
        dense_ffn = m.blocks[2].mlp
        m.upcycle()
        moe = m(imgs, ids, labels)
    for e in range(4):  # every expert is the dense FFN (DeepSpeed/MoE-LLaVA assert this too)
        assert torch.equal(m.blocks[2].mlp.experts.w1[e], dense_ffn.fc1.weight.T)
        assert torch.equal(m.blocks[2].mlp.experts.b2[e], dense_ffn.fc2.bias)
    assert all(o.dropped == 0 for o in moe.moe_outputs.values())  # eval capacity = S: dropless
    torch.testing.assert_close(moe.logits, dense.logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(moe.lm_loss, dense.lm_loss, atol=2e-6, rtol=1e-6)
    assert dense.aux_loss.item() == 0.0


def test_loss_is_cross_entropy_plus_coef_times_summed_balance_losses():
    m = model().upcycle().train()
    imgs, ids, labels = batch()
    out = m(imgs, ids, labels)
    P = CFG.num_patches
    # next-token CE over labelled text positions only; visual tokens carry no label
    expected_ce = F.cross_entropy(out.logits[:, P:-1].reshape(-1, CFG.vocab_size), labels[:, 1:].reshape(-1),
                                  ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.lm_loss, expected_ce)
    balance = [o.aux_losses["load_balance"] for o in out.moe_outputs.values()]
    assert len(balance) == 2 and all(0.9 < b.item() < 4.0 for b in balance)
    torch.testing.assert_close(out.aux_loss, 0.01 * (balance[0] + balance[1]))  # sum, not mean
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)
    assert out.image_mask[:, :P].all() and not out.image_mask[:, P:].any()
    # every token (visual and text, B * (P + L) of them) is routed in one group
    assert out.moe_outputs[0].router_logits.shape == (4 * (P + 5), 4)


def test_stage_freezing_schedule():
    m = model()
    names = dict(m.named_parameters())
    s1 = set(m.set_stage(1))
    assert s1 == {n for n in names if n.startswith("projector.")}
    s2 = set(m.set_stage(2))
    assert s2 == {n for n in names if not n.startswith("vision.")}
    dense_s3 = set(m.set_stage(3))  # the dense control of stage 3: FFNs only
    assert dense_s3 == {n for n in names if ".mlp.fc" in n and not n.startswith("vision.")}
    m.upcycle()
    s3 = set(m.set_stage(3))
    assert "blocks.0.mlp.router.weight" in s3 and "blocks.0.mlp.experts.w1" in s3
    assert "blocks.1.mlp.fc1.weight" in s3  # dense layers' FFNs train too (fc1 fc2 wg)
    assert all(".mlp." in n and not n.startswith("vision.") for n in s3)
    assert not any(k in n for n in s3 for k in ("qkv", "proj", "embed", "lm_head", "ln_"))
    assert not any(p.requires_grad for p in m.vision.parameters())


def test_stage3_updates_only_ffns_and_routers():
    m = model().upcycle()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    hist = train_stage(m, 3, (batch(seed=s) for s in range(100)), steps=3, lr=1e-2)
    assert len(hist) == 3 and all(h["aux_loss"] > 0 for h in hist)
    for n, p in m.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (".mlp." in n and not n.startswith("vision.")), n


def test_training_reduces_the_loss_on_a_fixed_batch():
    m = model().upcycle()
    fixed = batch(B=8, seed=1)
    hist = train_stage(m, 2, (fixed for _ in range(40)), steps=40, lr=3e-3)
    assert hist[-1]["lm_loss"] < 0.5 * hist[0]["lm_loss"]


def test_text_only_batches_and_causality():
    m = model().upcycle().eval()
    _, ids, labels = batch(images=False)
    out = m(None, ids, labels)
    assert out.logits.shape == (4, 5, CFG.vocab_size) and not out.image_mask.any()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % CFG.vocab_size
    # causal attention + dropless eval routing: a later token cannot change earlier logits
    torch.testing.assert_close(m(None, changed).logits[:, :-1], out.logits[:, :-1])


def test_cosine_schedule():
    assert cosine_with_warmup(0, 100) == pytest.approx(1 / 3)  # ceil(3% of 100) = 3 warmup steps
    assert cosine_with_warmup(2, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(3, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100) == pytest.approx(0.0, abs=1e-12)
