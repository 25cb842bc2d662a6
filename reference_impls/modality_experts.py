"""Modality-aware experts: MoMa-style routed expert groups per modality, and VLMo-style hard modality experts.

Lin et al., "MoMa: Efficient Early-Fusion Pre-training with Mixture of Modality-Aware Experts",
arXiv 2407.21770. Bao et al., "VLMo: Unified Vision-Language Pre-Training with
Mixture-of-Modality-Experts", arXiv 2111.02358 (official code ``microsoft/unilm: vlmo/``).

What the papers do, and why
---------------------------
An early-fusion model feeds image and text tokens through one transformer. The two modalities have
very different statistics, so a single FFN must serve both. Both papers split the FFN by modality:

* **VLMo** ("Mixture-of-Modality-Experts", MoME) keeps self-attention *shared* and gives each modality
  its own FFN (V-FFN for image tokens, L-FFN for text tokens), each with its own pre-norm. The expert
  is chosen by the token's modality, **with no router**: routing is an argument, not a learned
  decision. The top layers of the fused encoder use a third, vision-language FFN (VL-FFN) for every
  token (``vlmo/vlmo/modules/multiway_transformer.py``, class ``Block``).
* **MoMa** partitions the experts into modality-specific *groups* (MoMa-1.4B "4t4i": 4 text experts
  and 4 image experts). Each token goes deterministically to its modality's group, and **inside the
  group a learned router** picks the expert. The paper reports 3.7x overall pre-training FLOPs
  savings against a compute-equivalent dense model (2.6x text, 5.2x image), against 3x for an
  8-expert modality-agnostic MoE (abstract). The point: the modality split is free structure,
  and the router only has to discover the sub-structure *within* a modality.

With one expert per modality, a MoMa layer *is* VLMo's MoME FFN: the softmax over a one-expert group
is 1, so the learned routing disappears (the "1t1i" framing of the reviewers, notes section 5.3).
This module implements both as one class: ``ModalityAwareMoE(experts_per_modality=(4, 4))`` is
MoMa-style and ``ModalityAwareMoE.vlmo(...)`` (``experts_per_modality=(1, 1)``, no router
parameters at all) is VLMo-style.

Equations (``x_t`` a token, ``m_t`` its modality, ``G_m`` the experts of group m, ``E_m = |G_m|``)::

    z_t = x_t W_r^{m_t}                        W_r^m in R^{d x E_m}, one router per group (fp32)
    p_t = softmax(z_t)                         over the E_m experts of the token's own group only
    y_t = sum_{e in topk(p_t)} g_te FFN_e(x_t) g = p (raw, default) or p renormalised over the top-k
    E_m = 1:  y_t = FFN_{m_t}(x_t)             VLMo: hard routing, no router

Capacity (when set) is computed from **each group's own token count** ``n_m``:
``C_m = ceil(k * cf * n_m / E_m)`` (the core's ``expert_capacity``), so a modality with many tokens
(images) cannot take buffer slots from one with few (text), unlike a modality-agnostic MoE whose
experts and capacity are shared (LIMoE). The load-balancing loss is computed per group as well.

Which sources and defaults this follows
---------------------------------------
* Experts split into modality groups, deterministic group assignment, learned routing inside the
  group, 4 text + 4 image experts: MoMa abstract and reviewer summaries (notes section 5.1).
* VLMo: shared attention, one FFN and one pre-FFN LayerNorm per modality, layer scale
  ``gamma = 0.1`` at initialisation on both residual branches (``multiway_transformer.py``, ``Block``;
  notes section 6.1). ``MultiwayBlock`` below follows that block.
* Routing, dispatch and combine are the shared core's: ``route``, ``sort_by_expert``, ``Experts``,
  ``combine_by_token`` and ``load_balancing_loss`` from ``reference_impls/moe.py``. Each group is
  routed by its own ``route`` call (a loop over the 2-3 modality groups), the group-local expert ids
  are shifted into one global numbering, and **one** ``sort_by_expert`` + ``Experts`` call runs every
  expert of every group on its rows.

Where this simplifies or differs
--------------------------------
* **Token choice, not expert choice.** MoMa trains with *expert-choice* routing inside each group
  (each expert takes its top tokens up to a bucket size) and, because that is non-causal, trains an
  auxiliary router whose thresholded score routes tokens at inference (notes section 5.1; architecture,
  loss and threshold not found). This module uses the core's *token-choice* top-k routing inside each
  group instead: it is causal as it stands (dropless, or with capacity, ``top_k=1`` and position
  priority), so no auxiliary router is needed. The group partition, the per-group router and the
  per-group capacity, which are what make the layer *modality-aware*, are the same.
* Defaults: ``top_k=1`` and raw softmax gates (``renormalize=False``, as Switch), so that the task
  loss reaches the router even with one expert per token; dropless (``capacity_factor=None``). The
  MoMa capacity factor and loss weights were not found in the stored sources.
* VLMo's position-based split (the first ``max_text_len`` tokens are text) is replaced by an explicit
  ``modality_ids`` tensor, the safer form the notes recommend. VL-FFN layers are a separate expert
  group that every token uses: pass ``modality_ids`` all equal to that group's id.
* ``routing="random"`` is a control, not a method: each token gets a uniformly random expert of its
  own group with gate 1 (same parameters and active compute, no learned routing).

Shapes: ``T`` tokens (any leading axes are flattened), ``d`` model width, ``h`` expert hidden width,
``M`` modalities, ``E = sum_m E_m`` experts in all, ``k`` experts per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impls.moe import (
    Experts,
    ExpertBackend,
    Priority,
    Routing,
    combine_by_token,
    load_balancing_loss,
    route,
    router_z_loss,
    sort_by_expert,
)

GroupRouting = Literal["learned", "random"]


@dataclass
class ModalityMoEOutput:
    output: Tensor  # same shape as the input
    expert_index: Tensor  # [T, k] long: *global* expert ids (group offset added); -1 where unused
    gates: Tensor  # [T, k] fp32 combine weights (0 where dropped or unused)
    keep: Tensor  # [T, k] bool
    expert_counts: Tensor  # [E] long: kept assignments per expert (global numbering)
    group_routing: dict[int, Routing]  # per routed, non-empty group: the core's Routing (local expert ids)
    aux_losses: dict[str, Tensor]  # "load_balance" and "z_loss": mean over routed groups; 0 if none
    per_modality_losses: dict[int, dict[str, Tensor]]  # the same two losses for each routed group


class ModalityAwareMoE(nn.Module):
    """FFN experts partitioned by modality; learned top-k routing inside each modality's group.

    Args:
        d_model, d_hidden: every expert is ``fc2(act(fc1(x)))``, ``d -> h -> d``.
        experts_per_modality: ``(E_0, E_1, ...)``, the group size of each modality id. MoMa-1.4B is
            ``(4, 4)`` (4 text + 4 image experts); ``(1, 1)`` is VLMo's MoME FFN (see ``vlmo``).
        top_k: experts per token *within its group*, ``k``; a group with ``E_m < k`` uses all of its
            ``E_m`` experts (columns beyond ``E_m`` stay unused).
        capacity_factor: ``cf`` in the per-group capacity ``C_m = ceil(k * cf * n_m / E_m)``; None
            (default) is dropless.
        renormalize: combine with ``p / sum_kept p`` (True) or the raw softmax ``p`` (False, default:
            with ``top_k=1`` renormalising would make every gate 1 and cut the router off the task loss).
        priority: buffer priority when capacity binds, as in ``route`` (``"position"``: earlier tokens
            first, which keeps ``top_k=1`` causal; ``"batch"``: V-MoE BPR).
        routing: ``"learned"`` (default) or ``"random"`` (control: a uniformly random expert of the
            token's group, gate 1, redrawn at every call; uses ``generator`` if given).
        activation, bias, expert_backend: the experts' (see ``reference_impls.moe.Experts``).
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        experts_per_modality: Sequence[int] = (4, 4),
        *,
        top_k: int = 1,
        capacity_factor: float | None = None,
        renormalize: bool = False,
        priority: Priority = "position",
        routing: GroupRouting = "learned",
        activation: str = "gelu",
        bias: bool = True,
        expert_backend: ExpertBackend = "auto",
    ):
        super().__init__()
        sizes = [int(e) for e in experts_per_modality]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"every modality needs at least one expert, got {experts_per_modality}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if routing not in ("learned", "random"):
            raise ValueError(f"unknown routing {routing!r}")
        self.experts_per_modality = tuple(sizes)
        self.num_modalities, self.num_experts = len(sizes), sum(sizes)
        self.top_k, self.capacity_factor = top_k, capacity_factor
        self.renormalize, self.priority, self.routing = renormalize, priority, routing
        # offsets[m]: global id of group m's first expert (experts are numbered group by group).
        self.offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()[:-1]]
        # One router per group that has a choice to make (E_m > 1); VLMo groups have none.
        self.routers = nn.ModuleDict(
            {str(m): nn.Linear(d_model, e, bias=False) for m, e in enumerate(sizes) if e > 1}
        )
        self.experts = Experts(
            self.num_experts, d_model, d_hidden, activation=activation, bias=bias, backend=expert_backend
        )

    @classmethod
    def vlmo(cls, d_model: int, d_hidden: int, num_modalities: int = 2, **kwargs) -> "ModalityAwareMoE":
        """VLMo's MoME FFN: one expert per modality, hard routing by ``modality_ids``, no router."""
        return cls(d_model, d_hidden, (1,) * num_modalities, **kwargs)

    def group_experts(self, modality: int) -> range:
        """Global ids of modality ``modality``'s experts."""
        start = self.offsets[modality]
        return range(start, start + self.experts_per_modality[modality])

    def _route_group(
        self, x: Tensor, modality: int, generator: torch.Generator | None
    ) -> tuple[Routing | None, Tensor | None, Tensor, Tensor, Tensor]:
        """Route ``x [n_m, d]`` (the tokens of one modality) inside its group.

        Returns (the core's Routing, or None for a one-expert group; router logits ``[n_m, E_m]`` or
        None; group-local expert index ``[n_m, k_m]``; gates ``[n_m, k_m]``; keep ``[n_m, k_m]``).
        """
        n, num = x.shape[0], self.experts_per_modality[modality]
        k = min(self.top_k, num)
        if num == 1:  # VLMo: the modality decides; p = softmax over one expert = 1
            ones = torch.ones(n, 1, device=x.device)
            return None, None, torch.zeros(n, 1, dtype=torch.long, device=x.device), ones, ones.bool()
        if self.routing == "random":
            # Control: random logits give a uniformly random top-k of the group; gates set to 1.
            noise = torch.rand(n, num, generator=generator, device=x.device)
            r = route(noise, k, self.capacity_factor, priority=self.priority)
            return r, None, r.expert_index, r.keep.float(), r.keep
        router = self.routers[str(modality)]
        logits = F.linear(x.float(), router.weight.float())  # z = x W_r^m, fp32 [n_m, E_m]
        r = route(logits, k, self.capacity_factor, renormalize=self.renormalize, priority=self.priority)
        return r, logits, r.expert_index, r.gates, r.keep

    def forward(
        self, x: Tensor, modality_ids: Tensor, *, generator: torch.Generator | None = None
    ) -> ModalityMoEOutput:
        """``x [..., d]``, ``modality_ids [...]`` long in ``[0, M)`` -> ``ModalityMoEOutput`` (output ``[..., d]``).

        ``generator`` only feeds ``routing="random"``.
        """
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        ids = modality_ids.reshape(-1).to(x.device)
        if ids.shape[0] != x.shape[0]:
            raise ValueError(f"modality_ids has {ids.shape[0]} entries for {x.shape[0]} tokens")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_modalities):
            raise ValueError(f"modality ids must lie in [0, {self.num_modalities})")
        T, k = x.shape[0], self.top_k
        # Global [T, k] routing tables, filled group by group; unused columns stay (-1, 0, False).
        expert_index = torch.full((T, k), -1, dtype=torch.long, device=x.device)
        gates = torch.zeros(T, k, device=x.device)
        keep = torch.zeros(T, k, dtype=torch.bool, device=x.device)
        group_routing: dict[int, Routing] = {}
        per_modality: dict[int, dict[str, Tensor]] = {}
        for m in range(self.num_modalities):  # fixed loop over the 2-3 modality groups
            rows = (ids == m).nonzero().squeeze(1)  # the group's tokens, in order
            if rows.numel() == 0:
                continue  # an absent modality: no routing, no loss
            r, logits, local_index, g, kp = self._route_group(x.index_select(0, rows), m, generator)
            cols = local_index.shape[1]
            pad = k - cols  # groups smaller than k fill only their first E_m columns
            global_index = local_index + self.offsets[m]  # group-local -> global expert id
            expert_index = expert_index.index_copy(0, rows, F.pad(global_index, (0, pad), value=-1))
            gates = gates.index_copy(0, rows, F.pad(g, (0, pad)))
            keep = keep.index_copy(0, rows, F.pad(kp, (0, pad)))
            if r is not None:
                group_routing[m] = r
            if logits is not None:  # learned router: its losses over this group's tokens only
                per_modality[m] = {
                    "load_balance": load_balancing_loss(r.router_probs, r.expert_index, r.num_experts),
                    "z_loss": router_z_loss(logits),  # mean_t logsumexp(z_t)^2
                }
        safe_index = expert_index.clamp_min(0)  # unused columns are masked out by keep
        dispatch = sort_by_expert(safe_index, keep, self.num_experts)  # one dispatch for all groups
        rows_out = self.experts(x.index_select(0, dispatch.token_index), dispatch.counts, dispatch.expert_of_row)
        y = combine_by_token(rows_out, dispatch, gates, T)  # y_t = sum_j g_tj FFN_{e_tj}(x_t)
        aux = {  # mean over the routed groups present; 0 when none (VLMo, random, absent modalities)
            name: torch.stack([v[name] for v in per_modality.values()]).mean() if per_modality else x.new_zeros(())
            for name in ("load_balance", "z_loss")
        }
        return ModalityMoEOutput(
            y.reshape(shape), expert_index, gates, keep, dispatch.counts, group_routing, aux, per_modality
        )


class MultiwayBlock(nn.Module):
    """VLMo's multiway transformer block with a modality-aware FFN (pre-LN, layer scale)::

        h'    = h + gamma_1 * MSA(LN_1(h))                       attention shared by all modalities
        h_out = h' + gamma_2 * FFN_{m_t}(LN_2^{m_t}(h'))         per-modality norm, then the expert layer

    ``gamma_1, gamma_2`` are per-channel layer-scale vectors initialised to ``layer_scale_init``
    (0.1 in ``multiway_transformer.py``). ``LN_2^m`` is one LayerNorm per modality, as VLMo keeps
    one pre-norm per expert; the FFN is ``ModalityAwareMoE`` (VLMo: ``experts_per_modality=(1, 1)``;
    MoMa: routed groups).

    Args:
        d_model, n_heads: attention width and heads.
        ffn: the expert layer; its number of modalities sets the number of ``LN_2`` norms.
        layer_scale_init: initial value of ``gamma_1, gamma_2``; None disables layer scale.
        causal: causal self-attention (MoMa is a decoder; VLMo's encoder is bidirectional).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ffn: ModalityAwareMoE,
        *,
        layer_scale_init: float | None = 0.1,
        causal: bool = False,
    ):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.ln_ffn = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(ffn.num_modalities)])
        self.ffn, self.causal = ffn, causal
        if layer_scale_init is None:
            self.gamma_1 = self.gamma_2 = None
        else:
            self.gamma_1 = nn.Parameter(torch.full((d_model,), float(layer_scale_init)))
            self.gamma_2 = nn.Parameter(torch.full((d_model,), float(layer_scale_init)))

    def forward(self, h: Tensor, modality_ids: Tensor) -> tuple[Tensor, ModalityMoEOutput]:
        """``h [B, L, d]``, ``modality_ids [B, L]`` -> (``[B, L, d]``, the expert layer's output)."""
        L = h.shape[1]
        mask = torch.ones(L, L, dtype=torch.bool, device=h.device).triu(1) if self.causal else None
        a = self.ln_attn(h)
        a = self.attn(a, a, a, attn_mask=mask, need_weights=False)[0]
        h = h + (a * self.gamma_1 if self.gamma_1 is not None else a)
        # Per-modality pre-norm: each token is normalised with its own modality's LayerNorm.
        normed = torch.zeros_like(h)
        for m, norm in enumerate(self.ln_ffn):  # fixed loop over the modalities
            normed = torch.where((modality_ids == m).unsqueeze(-1), norm(h), normed)
        out = self.ffn(normed, modality_ids)
        f = out.output
        return h + (f * self.gamma_2 if self.gamma_2 is not None else f), out


def active_ffn_flops(d_model: int, d_hidden: int, *, top_k: int = 1, router_experts: int = 0) -> int:
    """Multiply-add FLOPs (2 per MAC) of one token through the layer: ``k`` expert FFNs
    ``2 * k * (2 d h)`` plus a router ``2 d E_m`` (0 for VLMo or a dense FFN). Biases and the
    activation are ignored."""
    return 2 * top_k * 2 * d_model * d_hidden + 2 * d_model * router_experts


__all__ = [
    "ModalityAwareMoE",
    "ModalityMoEOutput",
    "MultiwayBlock",
    "active_ffn_flops",
]
