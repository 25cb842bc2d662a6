"""Mixture-of-Depths: a router lets only its top-C tokens through a transformer block; the rest skip it.

Raposo, Ritter, Richards, Lillicrap, Humphreys, Santoro. "Mixture-of-Depths: Dynamically allocating
compute in transformer-based language models", arXiv 2404.02258. Applied to visual tokens only, as
gamma-MoD (Luo et al., arXiv 2410.13859; official code ``Yaxin9Luo/Gamma-MOD``) and VideoLLM-MoD
(Wu et al., arXiv 2408.16730) do.

What the papers do, and why
---------------------------
A transformer spends the same compute on every token in every layer. MoD gives a block a fixed
**capacity** ``C`` smaller than the sequence length ``S``: a scalar router scores every token, the
``C`` highest-scoring tokens go through the block (self-attention among themselves, then the MLP),
and the other ``S - C`` tokens skip it along the residual stream, unchanged. Because ``C`` is fixed
in advance, the compute graph has static shapes and the FLOPs per forward pass are known. The paper
found a capacity of 12.5% of the sequence best (87.5% of tokens skip a block), with MoD blocks
alternating with ordinary blocks, and learned routing much better than random selection.

Equations (notes section 4.1; ``x_i`` token i at the block input, ``w`` the router)::

    r_i = w^T x_i                                  scalar router weight per token
    P_beta(R) = the beta-percentile of {r_i},      beta = 1 - C/S: exactly C tokens lie above it
    x_i' = r_i * f_i(X~) + x_i   if r_i > P_beta   f = the whole block's residual function
    x_i' = x_i                   otherwise         (attention + MLP), X~ = the selected tokens only

Multiplying ``f`` by ``r_i`` is what puts the router on the gradient path: top-C selection itself has
no gradient. For a pre-LN block, ``f(X~) = a + m`` with ``a = Attn(LN_1(X~))`` and
``m = MLP(LN_2(X~ + a))``.

**Vision-language variants.** gamma-MoD and VideoLLM-MoD skip **visual tokens only**. Text tokens
(the question, the instruction) are always processed, because the answer is read from them and there
are few of them. gamma-MoD's code hard-codes this: question tokens get +1 added to their routing
probability, so they are always selected. VideoLLM-MoD's "LayerExpert" picks which vision tokens are
computed, skipping a "high proportion (e.g., 80%)". Here a ``skippable`` mask marks the tokens the
router may skip (the visual tokens). The top-C is taken among them only, with
``C = ceil(capacity * n_skippable)`` per sequence, and every other token is always processed with
weight 1.

**Top-C is non-causal.** Whether token i is in the top-C of its sequence depends on the router
scores of *later* tokens, which a decoder does not have at sampling time. The paper gives two fixes,
both implemented and selectable at inference with ``routing=``:

* ``"router"``: a binary cross-entropy loss on the router logits, with target 1 for tokens in the
  top-C, so that ``r_i > 0`` alone predicts membership (aux loss ``"router_bce"``);
* ``"predictor"``: a small auxiliary MLP that sees the router's input (stop-gradient) and predicts
  top-C membership (aux loss ``"predictor_bce"``); the token is processed when its logit is > 0.

Both rules decide from token i alone, so the number of processed tokens then varies per sequence
(the gather below pads to the largest count).

Which sources and defaults this follows
---------------------------------------
* Routing equation, scaling by ``r`` of the whole block output, capacity 12.5%, the two causal fixes
  (BCE on the router; auxiliary predictor): the paper as restated in the notes (section 4.1).
* ``scale="mlp"`` is gamma-MoD's variant, where the router weight multiplies only the MLP output
  (``gamma_mod/model/language_model/llava_llama_mod.py``); the default ``"block"`` is MoD's.
* ``router_weight="raw"`` (default) multiplies by ``r`` itself, as MoD does; it can be negative, which
  flips the block's output. ``"sigmoid"`` multiplies by ``sigmoid(r)`` instead, in ``(0, 1)``
  (gamma-MoD uses a softmax probability, ``softmax(logits)[..., 1]`` of a 2-way router, which is the
  sigmoid of the logit difference).
* Selected tokens keep their **original order** (indices sorted before attention) and a causal mask
  among them. There are no rotary positions in this block, so gamma-MoD's renumbering of position
  ids 0..C-1 does not arise; positions, if any, are added before the first block.

Where this simplifies
---------------------
* One block, with learned absolute positions left to the caller; no KV cache. At inference, with the
  causal rules, a skipped token has no keys or values at this layer, exactly as in training.
* Every sequence of a batch must have the same number of skippable tokens, so that ``C`` is the same
  for every row (padding tokens are not modelled; mark them non-skippable and mask them in the loss,
  or use equal-length batches).
* Tokens that are always processed (``skippable=False``) are scaled by 1, not by their router weight:
  our choice. The sources do not say how VideoLLM-MoD weights text tokens, and gamma-MoD's +1 trick is
  not reproduced.
* The predictor's input is detached (stop-gradient): the notes could not verify this for the paper.
* The BCE targets are the top-C memberships of the same forward pass (detached).
* ``selection="random"`` is a control, not a method: C skippable tokens chosen uniformly at random per
  sequence (router weights still scale their outputs).
* ``selection_noise`` (default 0) is not in the paper: Gaussian noise added to the router scores for
  the top-C ranking, in training only, as exploration. A token that is never selected gets no gradient,
  so a router that starts by ranking the informative tokens last may never learn otherwise; in
  ``notebooks/engine_mixture_of_depths.ipynb`` this happened to 1 seed of 3 without the noise (and
  with noise of std 1, 8 of 9 seeds tried in development learned fully).

Shapes: ``B`` sequences, ``S`` tokens each, ``d`` model width, ``h`` MLP hidden width, ``n`` skippable
tokens per sequence, ``C = ceil(capacity * n)``, ``K`` processed tokens per sequence (always-processed
ones included; padded to the largest count in the batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impls.moe import FeedForward

InferenceRouting = Literal["topk", "router", "predictor"]
Selection = Literal["learned", "random"]


@dataclass
class MoDOutput:
    output: Tensor  # [B, S, d]
    router_logits: Tensor  # [B, S] fp32: r_i = w^T x_i
    processed: Tensor  # [B, S] bool: went through the block (routed ones and always-processed ones)
    topk: Tensor  # [B, S] bool: in the top-C of the skippable tokens (the training selection / BCE target)
    predictor_logits: Tensor  # [B, S] fp32: the auxiliary predictor's logits (input detached)
    capacity: int  # C, routed tokens per sequence under top-C
    aux_losses: dict[str, Tensor]  # "router_bce", "predictor_bce" (over skippable tokens; 0 if none)


class MoDBlock(nn.Module):
    """A pre-LN transformer block that only its top-C tokens go through (Mixture-of-Depths).

    Args:
        d_model, n_heads, d_hidden: block sizes (MLP ``d -> h -> d``).
        capacity: fraction of the skippable tokens that the block processes per sequence,
            ``C = ceil(capacity * n)`` (MoD: 0.125; VideoLLM-MoD: about 0.2 of the vision tokens).
        causal: causal self-attention among the processed tokens (decoder); False for an encoder.
        scale: ``"block"`` (MoD: ``r * (a + m)``) or ``"mlp"`` (gamma-MoD: ``a + r * m``).
        router_weight: ``"raw"`` (MoD: ``r``) or ``"sigmoid"`` (``sigmoid(r)``).
        scale_by_router: False drops the router weight from the output (ablation: the router then gets
            no gradient from the task).
        selection: ``"learned"`` (top-C by ``r``) or ``"random"`` (control: C random skippable tokens).
        predictor_hidden: hidden width of the causal predictor MLP ``d -> p -> 1`` (default ``d``).
        selection_noise: std of Gaussian noise added to the router scores *for the top-C ranking only*,
            in training only (default 0: MoD has none). The output is still scaled by the clean ``r``.
        activation: the MLP's activation.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_hidden: int,
        *,
        capacity: float = 0.125,
        causal: bool = True,
        scale: Literal["block", "mlp"] = "block",
        router_weight: Literal["raw", "sigmoid"] = "raw",
        scale_by_router: bool = True,
        selection: Selection = "learned",
        predictor_hidden: int | None = None,
        selection_noise: float = 0.0,
        activation: str = "gelu",
    ):
        super().__init__()
        if not 0.0 <= capacity <= 1.0:
            raise ValueError(f"capacity must lie in [0, 1], got {capacity}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if scale not in ("block", "mlp") or router_weight not in ("raw", "sigmoid"):
            raise ValueError(f"unknown scale {scale!r} or router_weight {router_weight!r}")
        if selection not in ("learned", "random"):
            raise ValueError(f"unknown selection {selection!r}")
        self.d_model, self.n_heads, self.d_hidden = d_model, n_heads, d_hidden
        self.capacity, self.causal, self.scale = capacity, causal, scale
        self.router_weight, self.scale_by_router, self.selection = router_weight, scale_by_router, selection
        self.selection_noise = selection_noise
        self.ln_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, d_hidden, activation=activation)
        self.router = nn.Linear(d_model, 1, bias=False)  # w: r_i = w^T x_i
        p = predictor_hidden or d_model
        self.predictor = nn.Sequential(nn.Linear(d_model, p), nn.SiLU(), nn.Linear(p, 1))

    # -----------------------------------------------------------------------------------------------
    def num_routed(self, num_skippable: int) -> int:
        """``C = ceil(capacity * n)``: skippable tokens the block processes per sequence under top-C."""
        return min(num_skippable, math.ceil(self.capacity * num_skippable - 1e-9))

    def attention(self, h: Tensor, valid: Tensor) -> Tensor:
        """Multi-head self-attention ``[B, K, d] -> [B, K, d]`` among gathered tokens in original order.

        ``valid [B, K]`` marks real rows; padded rows (at the end) are never attended to by real rows:
        with a causal mask they come later, and without one they are masked out as keys. A query may
        always attend to itself, so no row is fully masked."""
        B, K, d = h.shape
        q, k, v = self.qkv(h).view(B, K, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        eye = torch.eye(K, dtype=torch.bool, device=h.device)
        allowed = valid[:, None, :] | eye  # [B, K(query), K(key)]
        if self.causal:
            allowed = allowed & torch.ones(K, K, dtype=torch.bool, device=h.device).tril()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # softmax(qk^T/sqrt(d_h)) v
        return self.proj(out.transpose(1, 2).reshape(B, K, d))

    def residual(self, x_sel: Tensor, weight: Tensor, valid: Tensor) -> Tensor:
        """The block's update for the gathered tokens, ``[B, K, d]``; ``weight [B, K]`` is the router
        weight (1 for always-processed tokens)."""
        a = self.attention(self.ln_attn(x_sel), valid)  # a = Attn(LN_1(X~))
        m = self.mlp(self.ln_mlp(x_sel + a))  # m = MLP(LN_2(X~ + a))
        w = weight.unsqueeze(-1).to(x_sel.dtype)
        if self.scale == "block":
            return w * (a + m)  # MoD: x' = x + r * f(X~), f = a + m
        return a + w * m  # gamma-MoD: only the MLP output is scaled

    # -----------------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        skippable: Tensor | None = None,
        *,
        routing: InferenceRouting = "topk",
        generator: torch.Generator | None = None,
    ) -> MoDOutput:
        """``x [B, S, d]``; ``skippable [B, S]`` bool (default: every token, as in MoD) -> ``MoDOutput``.

        ``routing="topk"`` is the training rule (non-causal). ``"router"`` (``r_i > 0``) and
        ``"predictor"`` (predictor logit > 0) are the causal inference rules. ``generator`` only feeds
        ``selection="random"``.
        """
        B, S, d = x.shape
        if skippable is None:
            skippable = torch.ones(B, S, dtype=torch.bool, device=x.device)
        skippable = skippable.to(device=x.device, dtype=torch.bool)
        counts = skippable.sum(1)
        if B and not bool((counts == counts[0]).all()):
            raise ValueError("every sequence must have the same number of skippable tokens")
        n = int(counts[0]) if B else 0
        C = self.num_routed(n)

        r = F.linear(x.float(), self.router.weight.float()).squeeze(-1)  # r_i = w^T x_i, fp32 [B, S]
        pred = self.predictor(x.detach()).squeeze(-1).float()  # causal predictor, stop-gradient input

        # Top-C among the skippable tokens: "r_i > P_beta(R)" with beta = 1 - C/n. Non-skippable
        # tokens get -inf, so they never take a routed slot.
        if self.selection == "random":
            score = torch.rand(B, S, generator=generator, device=x.device)
        else:
            score = r.detach()
            if self.training and self.selection_noise > 0:  # exploration noise on the ranking only
                score = score + self.selection_noise * torch.randn(B, S, generator=generator, device=x.device)
        score = score.masked_fill(~skippable, float("-inf"))
        topk = torch.zeros(B, S, dtype=torch.bool, device=x.device)
        if C > 0:
            topk = topk.scatter(1, score.topk(C, dim=1).indices, True)

        if routing == "topk":
            routed = topk
        elif routing == "router":
            routed = skippable & (r > 0)  # sigmoid(r) > 0.5, trained by the router BCE loss
        elif routing == "predictor":
            routed = skippable & (pred > 0)  # sigmoid(pred) > 0.5, trained by the predictor BCE loss
        else:
            raise ValueError(f"unknown routing {routing!r}")
        processed = routed | ~skippable  # text (non-skippable) tokens are always processed

        # Gather the processed tokens in their original order (stable sort puts them first), padded to
        # the largest count K in the batch; `valid` marks real rows.
        order = torch.argsort((~processed).int(), dim=1, stable=True)  # [B, S]
        num = processed.sum(1)
        K = int(num.max()) if B else 0
        index = order[:, :K]  # [B, K] positions of the processed tokens, ascending
        valid = torch.arange(K, device=x.device) < num[:, None]
        x_sel = x.gather(1, index.unsqueeze(-1).expand(-1, -1, d))
        if self.scale_by_router:
            gate = torch.sigmoid(r) if self.router_weight == "sigmoid" else r
        else:
            gate = torch.ones_like(r)
        gate = torch.where(skippable, gate, torch.ones_like(gate))  # always-processed tokens: weight 1
        weight = gate.gather(1, index)
        update = self.residual(x_sel, weight, valid) * valid.unsqueeze(-1)  # padded rows add nothing
        # x_i' = x_i + w_i f_i(X~) for processed tokens, x_i' = x_i for skipped ones.
        out = x + torch.zeros_like(x).scatter(1, index.unsqueeze(-1).expand(-1, -1, d), update)

        # Causal-inference losses over the skippable tokens: BCE against top-C membership.
        target = topk.float()
        if n > 0:
            router_bce = F.binary_cross_entropy_with_logits(r[skippable], target[skippable])
            predictor_bce = F.binary_cross_entropy_with_logits(pred[skippable], target[skippable])
        else:
            router_bce = r.sum() * 0.0
            predictor_bce = pred.sum() * 0.0
        aux = {"router_bce": router_bce, "predictor_bce": predictor_bce}
        return MoDOutput(out, r, processed, topk, pred, C, aux)


# ---------------------------------------------------------------------------------------------------
# Analytical FLOPs (2 per multiply-add; LayerNorm, softmax, activations and biases ignored)
# ---------------------------------------------------------------------------------------------------


def block_flops(num_tokens: int | float, d_model: int, d_hidden: int) -> float:
    """FLOPs of one pre-LN block over ``n`` tokens of one sequence:

    ``8 n d^2`` (Q, K, V and output projections) + ``4 n^2 d`` (scores ``QK^T`` and ``AV``, full
    square: a causal kernel may skip half, this count does not) + ``4 n d h`` (the MLP's two matmuls).
    """
    n = num_tokens
    return 8 * n * d_model**2 + 4 * n**2 * d_model + 4 * n * d_model * d_hidden


def mod_block_flops(
    num_always: int,
    num_skippable: int,
    capacity: float,
    d_model: int,
    d_hidden: int,
    *,
    predictor_hidden: int = 0,
) -> float:
    """FLOPs of a ``MoDBlock`` per sequence under top-C: the block over ``num_always + C`` tokens, plus
    the router ``2 d`` per skippable token, plus the predictor ``2 (d p + p)`` per skippable token when
    it is used (``predictor_hidden = p > 0``, causal inference)."""
    C = min(num_skippable, math.ceil(capacity * num_skippable - 1e-9))
    router = 2 * d_model * num_skippable
    predictor = 2 * (d_model * predictor_hidden + predictor_hidden) * num_skippable if predictor_hidden else 0
    return block_flops(num_always + C, d_model, d_hidden) + router + predictor


__all__ = ["MoDBlock", "MoDOutput", "block_flops", "mod_block_flops"]
