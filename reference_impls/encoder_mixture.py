"""A mixture of vision encoders: MoVA's context-aware coarse-to-fine routing, and Eagle's plain
channel concatenation as the no-routing baseline.

Zong et al., "MoVA: Adapting Mixture of Vision Experts to Multimodal Context", arXiv 2404.13046
(official code ``TempleX98/MoVA``). Shi et al., "Eagle: Exploring The Design Space for Multimodal LLMs
with Mixture of Encoders", arXiv 2408.15998 (official code ``NVlabs/EAGLE``).

What the papers do, and why
---------------------------
A multimodal LLM usually sees images through one encoder (CLIP), which is weak at what it was not
trained for: documents and charts, fine localisation, medical images. Other pre-trained encoders are
strong exactly there (Pix2Struct, a detector's backbone, SAM, BiomedCLIP...). Both papers combine
several encoders with the base one:

* **Eagle** runs *every* encoder on every image, resizes each feature map to one grid and
  **concatenates them along channels** ("CLIP+X"), then projects with a 2-layer MLP. Nothing depends on
  the question. Simple and strong, but the cost grows with every encoder added.
* **MoVA** picks encoders **per sample from the context** (image and question), coarse to fine:

  1. *Coarse routing.* The LLM, prompted with a description of each expert encoder and the question,
     answers with the names of the (at most 3) most suitable experts, or "none": a binary selection
     ``rho in {0,1}^N``. An expert-routing LoRA trained on routing annotations teaches it this.
     Only the selected encoders need to run.
  2. *Fine fusion* (the MoV-Adapter, 3 blocks). Each block weighs the selected experts with a gate that
     sees the text and the image, extracts knowledge from each by cross-attention and adds it to the
     base encoder's tokens::

         g = MLP([t; mean_L(x)])                       Linear(d_t + C -> C), GELU, Linear(C -> N), last zero-init
         w = softmax(g + (1 - rho) * (-1e6))           in fp32; keep the top k (= 3), renormalise
         E_j = CrossAttn_j(LN(x), LN(v_j))             query: base tokens; keys/values: expert j's tokens
         x <- x + sum_j w_j E_j                        0 when no expert is selected
         x <- x + SelfAttn(LN x);  x <- x + SwiGLU(LN x)

     with the output projections of the cross-attentions, the self-attention and the SwiGLU zero-
     initialised, so that a fresh adapter is the identity on the base features.

Which sources this follows (``shared/research/methods_subcategories.md`` section 8)
----------------------------------------------------------------------------------
MoVA: ``TempleX98/MoVA: mova/model/multimodal_projector/builder.py`` (``AdapterBlock``, ``MoVAdapter``),
``mova/model/arch.py``, ``mova/constants.py``, and the README (the routing LoRA "is trained with expert
routing annotations"). Defaults: ``num_projector_layers = 3``, ``topk_experts = 3``, 7 experts with
channels ``[1536, 512, 256, 1536, 768, 768, 256]``; the text feature ``t`` is a BERT [CLS] (1024 wide)
of the question. Eagle: ``NVlabs/EAGLE: eagle/model/multimodal_encoder/
multi_backbone_channel_concatenation_encoder.py`` and the README: feature maps resized to a 32 x 32
grid, concatenated along channels, ``mlp2x_gelu`` projector.

Where this simplifies
---------------------
* **The coarse router is a small network, not an LLM.** ``CoarseRouter`` maps ``[t; mean_L(base)]``
  to one logit per expert, and the top ``k`` become ``rho`` (through the core's ``route``). MoVA's LLM
  may also answer "none"; ``CoarseRouter.select(threshold=...)`` drops experts whose sigmoid score is
  below the threshold, which allows an empty selection. It is trained on routing annotations with a
  multi-label BCE loss (``routing_loss``), in the spirit of the routing LoRA. How MoVA builds its
  annotations is not in the sources read; ``routing_targets_from_losses`` makes them from the model's
  own loss with each single expert (the expert with the lowest loss is the target), which is this
  implementation's choice.
* **Experts run only where selected.** ``MoVA.forward`` calls expert encoder ``j`` on the samples
  with ``rho[:, j]`` only, and the adapter runs cross-attention ``j`` only for (sample, expert) pairs
  that the fine gate kept. (MoVA's code skips unselected experts only at batch size 1.)
* **Masked experts are dropped, not weighted by exp(-1e6).** In fp32 ``exp(-1e6)`` is exactly 0, so a
  masked expert that top-k still picks (when fewer than k are selected) has weight 0 in MoVA too; here
  it is not computed at all, and a sample with nothing selected gets 0, as MoVA's multiplication by 0.
* **Gates for k = 1.** The gates come from the core's ``route``: softmax over the masked logits, top-k,
  renormalised over the k kept experts for ``k >= 2`` (MoVA). For ``k = 1`` the core keeps the raw
  probability, where MoVA's renormalisation gives exactly 1; with a single selected expert both are 1
  (all other probabilities are exactly 0).
* **Resizing.** Token maps are square; ``resize_to_grid`` reshapes them to ``[C, h, h]`` and resizes
  bilinearly (``align_corners=False``) to the base grid. Eagle resizes to 32 x 32; MoVA aligns the
  expert features to the base encoder's grid. Which interpolation each uses was not checked.
* The pretrained encoders, the LLM, the BERT text encoder and the training stages are not here; the
  notebook uses frozen random "encoders" and a task-id embedding as the context.

Routing uses the shared core ``reference_impls/moe.py``: ``route`` for the top-k choices and gates,
``sort_by_expert`` to group the kept (sample, expert) pairs and ``combine_by_token`` for the weighted
sum. The expert cross-attentions run in a loop over the ``N`` experts, each on its contiguous block of
samples: every expert has its own key/value width ``C_j``, so their weights cannot be stacked, and
``N`` is a handful (7 in MoVA).

Shapes: ``B`` samples, ``L`` tokens on the base grid (``grid x grid``), ``C`` base channels, ``C_j``
expert j's channels, ``N`` expert encoders, ``k`` experts kept per sample, ``d_t`` context width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impls.moe import Routing, combine_by_token, route, sort_by_expert

MASK_VALUE = -1e6  # MoVA's additive mask for unselected experts (safe in fp32 only)


# ---------------------------------------------------------------------------------------------------
# Feature alignment and Eagle's channel concatenation
# ---------------------------------------------------------------------------------------------------


def resize_to_grid(features: Tensor, grid: int) -> Tensor:
    """``[B, h*h, C] -> [B, grid*grid, C]``: a square token map resized bilinearly (identity if ``h == grid``)."""
    Bsz, L, C = features.shape
    h = math.isqrt(L)
    if h * h != L:
        raise ValueError(f"{L} tokens do not form a square map")
    if h == grid:
        return features
    fmap = features.transpose(1, 2).reshape(Bsz, C, h, h)
    fmap = F.interpolate(fmap, size=(grid, grid), mode="bilinear", align_corners=False)
    return fmap.reshape(Bsz, C, grid * grid).transpose(1, 2)


class ChannelConcatFusion(nn.Module):
    """Eagle: resize every encoder's tokens to one grid, concatenate along channels, project with
    ``mlp2x_gelu`` (``Linear(sum C -> d_out), GELU, Linear(d_out -> d_out)``).

    Args:
        channels: ``C`` of each encoder, in the order ``forward`` receives them.
        d_out: projector width.
        grid: side of the common token grid (Eagle: 32).
    """

    def __init__(self, channels: Sequence[int], d_out: int, *, grid: int):
        super().__init__()
        self.grid = grid
        self.projector = nn.Sequential(nn.Linear(sum(channels), d_out), nn.GELU(), nn.Linear(d_out, d_out))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """``[B, L_i, C_i]`` per encoder -> ``[B, grid*grid, d_out]``."""
        return self.projector(torch.cat([resize_to_grid(f, self.grid) for f in features], dim=-1))


# ---------------------------------------------------------------------------------------------------
# MoVA stage 1: coarse, context-aware selection of the expert encoders
# ---------------------------------------------------------------------------------------------------


class CoarseRouter(nn.Module):
    """Scores each expert encoder from the context: ``logits = MLP([t; mean_L(x_base)])`` (``[B, N]``).

    Stands in for MoVA's LLM with its expert-routing LoRA; trained with ``routing_loss`` on routing
    annotations.

    Args:
        context_dim: ``d_t``.
        base_channels: ``C``.
        num_experts: ``N``.
        hidden: the MLP's hidden width.
    """

    def __init__(self, context_dim: int, base_channels: int, num_experts: int, *, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(context_dim + base_channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_experts))

    def forward(self, context: Tensor, base: Tensor) -> Tensor:
        """``context [B, d_t]``, ``base [B, L, C]`` -> ``[B, N]`` logits."""
        return self.mlp(torch.cat([context, base.mean(dim=1)], dim=-1)).float()

    @staticmethod
    def select(logits: Tensor, top_k: int, *, threshold: float | None = None) -> Tensor:
        """``[B, N]`` logits -> ``rho [B, N]`` bool: the top ``top_k`` experts (the core's ``route``), minus
        those whose ``sigmoid(logit)`` is below ``threshold`` (so "none" is possible), if given."""
        chosen = route(logits, top_k).expert_index  # [B, k]
        rho = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, chosen, True)
        if threshold is not None:
            rho &= torch.sigmoid(logits) >= threshold
        return rho


def routing_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Multi-label BCE between the coarse router's ``[B, N]`` logits and ``[B, N]`` 0/1 annotations."""
    return F.binary_cross_entropy_with_logits(logits, targets.float())


def routing_targets_from_losses(losses: Tensor, *, top_k: int = 1, margin: float = 0.0) -> Tensor:
    """Annotations from per-expert losses: ``losses [B, N]`` (the task loss of each sample when only
    expert j is selected) -> ``[B, N]`` bool marking each sample's ``top_k`` lowest-loss experts.

    With ``margin > 0`` a sample is annotated only if its ``top_k``-th best loss is at least ``margin``
    below the next one; otherwise its row is all False (ambiguous: no expert is clearly better; drop
    it, or read it as MoVA's "none"). This annotation rule is this implementation's choice (see the
    module docstring)."""
    ranked = losses.sort(dim=-1)
    targets = torch.zeros_like(losses, dtype=torch.bool).scatter_(1, ranked.indices[:, :top_k], True)
    if margin > 0 and top_k < losses.shape[-1]:
        clear = ranked.values[:, top_k] - ranked.values[:, top_k - 1] >= margin
        targets &= clear.unsqueeze(1)
    return targets


# ---------------------------------------------------------------------------------------------------
# MoVA stage 2: the MoV-Adapter
# ---------------------------------------------------------------------------------------------------


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``; ``down`` zero-initialised (MoVA's adapter FFN)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(hidden, d)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def _zero_out_proj(attention: nn.MultiheadAttention) -> nn.MultiheadAttention:
    nn.init.zeros_(attention.out_proj.weight)
    nn.init.zeros_(attention.out_proj.bias)
    return attention


@dataclass
class BlockRouting:
    routing: Routing  # the fine gate's top-k over the masked logits; expert_index [B, k], gates [B, k]
    keep: Tensor  # [B, k] bool: the choice is a selected expert (rho); only these run
    gate_logits: Tensor  # [B, N] fp32 g, before masking


class MoVAdapterBlock(nn.Module):
    """One MoV-Adapter block (see the module docstring for the equations).

    Args:
        base_channels: ``C``.
        expert_channels: ``C_j`` of each expert encoder.
        context_dim: ``d_t``.
        top_k: experts kept by the fine gate (MoVA: 3).
        num_heads: attention heads; ``C`` must be divisible by it (the ``C_j`` need not be: keys and
            values are projected to ``C``).
        ffn_hidden: SwiGLU hidden width (default ``4 C``).
    """

    def __init__(self, base_channels: int, expert_channels: Sequence[int], context_dim: int, *, top_k: int = 3,
                 num_heads: int = 4, ffn_hidden: int | None = None):
        super().__init__()
        C, N = base_channels, len(expert_channels)
        self.top_k, self.num_experts = top_k, N
        self.gate = nn.Sequential(nn.Linear(context_dim + C, C), nn.GELU(), nn.Linear(C, N))
        nn.init.zeros_(self.gate[2].weight)  # last gate layer zero-initialised (MoVA)
        nn.init.zeros_(self.gate[2].bias)
        self.query_norm = nn.LayerNorm(C)
        self.expert_norms = nn.ModuleList(nn.LayerNorm(c) for c in expert_channels)
        self.cross_attention = nn.ModuleList(
            _zero_out_proj(nn.MultiheadAttention(C, num_heads, kdim=c, vdim=c, batch_first=True))
            for c in expert_channels
        )
        self.self_norm = nn.LayerNorm(C)
        self.self_attention = _zero_out_proj(nn.MultiheadAttention(C, num_heads, batch_first=True))
        self.ffn_norm = nn.LayerNorm(C)
        self.ffn = SwiGLU(C, ffn_hidden or 4 * C)

    def route(self, x: Tensor, context: Tensor, rho: Tensor) -> BlockRouting:
        """Fine gate: ``w = softmax(g + (1 - rho) * -1e6)``, top-k, renormalised (``x [B, L, C]``)."""
        g = self.gate(torch.cat([context, x.mean(dim=1)], dim=-1)).float()  # [B, N]
        masked = g + (~rho).float() * MASK_VALUE  # fp32: -1e6 would overflow in fp16
        routing = route(masked, self.top_k)
        keep = rho.gather(1, routing.expert_index)  # masked experts have weight exactly 0: skip them
        return BlockRouting(routing, keep, g)

    def forward(self, x: Tensor, expert_features: Sequence[Tensor], context: Tensor, rho: Tensor
                ) -> tuple[Tensor, BlockRouting]:
        """``x [B, L, C]`` base tokens; ``expert_features[j] [B, L, C_j]`` on the base grid (rows of samples
        that did not select expert j are never read); ``context [B, d_t]``; ``rho [B, N]`` bool."""
        Bsz, L, C = x.shape
        block = self.route(x, context, rho)
        dispatch = sort_by_expert(block.routing.expert_index, block.keep, self.num_experts)
        query = self.query_norm(x)
        outs = []
        for j, samples in enumerate(dispatch.token_index.split(dispatch.counts.tolist())):
            if samples.numel():  # E_j = CrossAttn_j(LN(x), LN(v_j)) for the samples routed to j
                v = self.expert_norms[j](expert_features[j].index_select(0, samples))
                outs.append(self.cross_attention[j](query.index_select(0, samples), v, v, need_weights=False)[0])
        out = torch.cat(outs).reshape(-1, L * C) if outs else x.new_zeros(0, L * C)
        x = x + combine_by_token(out, dispatch, block.routing.gates, Bsz).view(Bsz, L, C)  # x + sum_j w_j E_j
        h = self.self_norm(x)
        x = x + self.self_attention(h, h, h, need_weights=False)[0]
        x = x + self.ffn(self.ffn_norm(x))
        return x, block


# ---------------------------------------------------------------------------------------------------
# The whole mixture: encoders, coarse router, adapter
# ---------------------------------------------------------------------------------------------------


@dataclass
class MoVAOutput:
    features: Tensor  # [B, L, C] fused tokens on the base grid
    rho: Tensor  # [B, N] bool: the coarse selection used
    coarse_logits: Tensor  # [B, N] fp32 coarse router scores
    blocks: list[BlockRouting]  # the fine gate of each adapter block
    encoder_calls: Tensor  # [N] long: samples each expert encoder actually ran on


class MoVA(nn.Module):
    """Base encoder + expert encoders + coarse router + MoV-Adapter.

    The encoders are any modules mapping an image batch to token maps (``[B, L_j, C_j]``, square maps);
    the base encoder's grid sets ``L``. They are called as given (freeze them beforehand if they are
    pre-trained, as in MoVA).

    Args:
        base_encoder: the base (CLIP) encoder.
        expert_encoders: the ``N`` expert encoders.
        base_channels: ``C``; expert_channels: ``C_j`` of each expert.
        context_dim: ``d_t``.
        grid: side of the base token grid (``L = grid^2``).
        num_layers: adapter blocks (MoVA: 3).
        top_k: experts kept by the coarse router and by each fine gate (MoVA: 3).
        num_heads: attention heads in the adapter.
        router_hidden: hidden width of the coarse router.
    """

    def __init__(self, base_encoder: nn.Module, expert_encoders: Sequence[nn.Module], *, base_channels: int,
                 expert_channels: Sequence[int], context_dim: int, grid: int, num_layers: int = 3, top_k: int = 3,
                 num_heads: int = 4, router_hidden: int = 64):
        super().__init__()
        if len(expert_encoders) != len(expert_channels):
            raise ValueError("one channel count per expert encoder")
        self.base_encoder, self.expert_encoders = base_encoder, nn.ModuleList(expert_encoders)
        self.expert_channels, self.grid, self.top_k = list(expert_channels), grid, top_k
        self.router = CoarseRouter(context_dim, base_channels, len(expert_channels), hidden=router_hidden)
        self.blocks = nn.ModuleList(
            MoVAdapterBlock(base_channels, expert_channels, context_dim, top_k=top_k, num_heads=num_heads)
            for _ in range(num_layers)
        )

    def encode_experts(self, images: Tensor, rho: Tensor) -> tuple[list[Tensor], Tensor]:
        """Run expert encoder j only on the samples with ``rho[:, j]``; rows of the others stay 0.
        Returns ``[B, L, C_j]`` per expert and the ``[N]`` samples each encoder ran on."""
        Bsz, L = images.shape[0], self.grid * self.grid
        features, calls = [], []
        for j, encoder in enumerate(self.expert_encoders):  # one call per expert: N distinct networks
            samples = rho[:, j].nonzero().squeeze(1)
            bank = images.new_zeros(Bsz, L, self.expert_channels[j])
            if samples.numel():
                bank = bank.index_copy(0, samples, resize_to_grid(encoder(images[samples]), self.grid))
            features.append(bank)
            calls.append(samples.numel())
        return features, torch.tensor(calls)

    def forward(self, images: Tensor, context: Tensor, *, rho: Tensor | None = None,
                threshold: float | None = None) -> MoVAOutput:
        """``images [B, ...]``, ``context [B, d_t]``. ``rho [B, N]`` bool overrides the coarse router (oracle,
        random or annotation-driven selection in training); otherwise its top-k (and ``threshold``)."""
        x = resize_to_grid(self.base_encoder(images), self.grid)  # [B, L, C]
        coarse_logits = self.router(context, x)
        if rho is None:
            rho = self.router.select(coarse_logits.detach(), self.top_k, threshold=threshold)
        features, calls = self.encode_experts(images, rho)
        blocks = []
        for block in self.blocks:
            x, routing = block(x, features, context, rho)
            blocks.append(routing)
        return MoVAOutput(x, rho, coarse_logits, blocks, calls)


__all__ = [
    "BlockRouting",
    "ChannelConcatFusion",
    "CoarseRouter",
    "MASK_VALUE",
    "MoVA",
    "MoVAOutput",
    "MoVAdapterBlock",
    "SwiGLU",
    "resize_to_grid",
    "routing_loss",
    "routing_targets_from_losses",
]
