"""LoRA experts on a frozen layer, routed per instruction (MoCLE) or per token (LLaVA-MoLE).

Gou et al., "Mixture of Cluster-conditional LoRA Experts for Vision-language Instruction Tuning"
(MoCLE), arXiv 2312.12379. Chen et al., "LLaVA-MoLE: Sparse Mixture of LoRA Experts for Mitigating
Data Conflicts in Instruction Finetuning MLLMs", arXiv 2401.16160.

What the papers do, and why
---------------------------
Instruction tuning a multimodal LLM on a mixture of datasets runs into *data conflicts*: two datasets
may ask for different outputs on inputs that look alike (a short answer against a long one, a box
against a caption). One LoRA adapter shared by all data has to find a compromise between them. Both
papers replace the single LoRA of a frozen linear layer ``W`` by ``E`` LoRA *experts* ``(A_e, B_e)``
and a router that sends each input to one of them, so that conflicting data can use different experts
while the per-token cost stays that of one LoRA:

* **MoCLE** routes by the *instruction*. A frozen sentence encoder (SBERT ``all-MiniLM-L6-v2``, 384
  dimensions) embeds the instruction text and a k-means model fitted beforehand gives its cluster id
  ``c``. In every adapted linear layer, a learned cluster embedding ``e_c = Emb(c)`` goes through a gate
  ``logits = W_g e_c`` (plus ``N(0, 0.1^2)`` noise in training), ``p = softmax(logits / tau)`` and the
  top-1 expert ``i*``. Every token of the sample uses that expert. A **universal expert** ``u``, shared
  by all clusters, takes the rest of the weight, for generalisation to unseen instructions:

      y = W x + w * s * B_{i*} A_{i*} x + (1 - w) * s * B_u A_u x,     w = p_{i*},  s = alpha / r

* **LLaVA-MoLE** routes every *token* in the MLP of each decoder layer: ``p = softmax(W_r h)``, top-1
  ``i* = argmax p``, and the same ``i*`` selects the LoRA expert of each of the MLP's projections.
  A balance loss per sample, ``sum_e mean_tokens(p_e) * mean_tokens(onehot_e)``, keeps the router from
  collapsing. Cost is about that of plain LoRA.

Which sources this follows (``shared/research/methods_subcategories.md`` section 10)
----------------------------------------------------------------------------------
MoCLE, from ``gyhdog99/MoCLE: mocle.py``, ``mocle.yaml`` and its vendored
``peft-main/src/peft/tuners/lora/layer.py``: the output equation above; cluster embedding of width 384,
``nn.Embedding(K, 384)``; top-1; ``noise_std = 0.1`` added to the logits before the temperature; LoRA
``r = 8``, ``alpha = 32``, dropout 0.1; ``E = 4``; ``K = 64`` clusters with ``tau = 0.05`` (the yaml's
pair). The code computes the gate softmax in fp16; here it is fp32 (with ``tau = 0.05`` the logits are
multiplied by 20 and an fp16 softmax saturates to exactly 0 or 1, which switches the universal expert
off; the notes list this as a pitfall).

LLaVA-MoLE, from ``forwchen/LLaVA-MoLE: moe.py``, ``model.py`` and ``llava_mole_infer.py``: router
``p = softmax(W_r h)``, top-1, one decision shared by the MLP's LoRA experts; LoRA ``A``
Kaiming-uniform and ``B`` zero, ``s = alpha / r``, dropout 0.05; balance loss per sample over non-pad
tokens, with no factor ``E``, averaged over the batch, and a straight-through one-hot
``onehot - p.detach() + p`` in it. The released inference config uses ``dense_moe = True``, ``E = 3``,
``r = 32``, ``alpha = 64``. ``mode=`` (of ``MoLELinear`` and ``MoLEFeedForward``) chooses how the
expert output is weighted, because the paper and the code differ:

* ``"dense"``: ``sum_e p_e * s B_e A_e x`` over all experts (the released inference config);
* ``"none"``: the code's sparse path, ``s B_{i*} A_{i*} x`` with **no** gate: the router then learns only
  from the balance loss, never from the task loss (the notes' finding 5);
* ``"gate"`` (default): ``p_{i*} * s B_{i*} A_{i*} x``, Switch-style, so the task loss reaches the router;
* ``"straight_through"``: forward value of ``"none"``, gradient of ``"gate"``
  (``(1 + p_{i*} - p_{i*}.detach()) * ...``); this one is ours, not from either source.

Where this simplifies
---------------------
* The frozen base is one ``nn.Linear`` (``MoCLELinear``, ``MoLELinear``) or the core's two-matrix
  ``FeedForward`` (``MoLEFeedForward``: LoRA experts on ``fc1`` and ``fc2``). LLaVA-MoLE adapts LLaMA's three MLP
  projections ``gate_proj``, ``up_proj``, ``down_proj`` with one routing decision, and plain LoRA on the
  attention projections; neither transformer is built here.
* MoCLE's instruction encoder is not included: the caller gives cluster ids. ``kmeans`` and
  ``assign_clusters`` are a small Lloyd's k-means for fitting clusters to instruction embeddings once,
  outside the layers (calling ``kmeans.predict`` inside every layer, as the MoCLE code does, is a CPU
  round trip per layer).
* The MoLE balance loss is computed per layer call; LLaVA-MoLE pools the tokens of all layers of a
  sample before taking the means (concatenate the layers' ``router_probs`` along the token axis and
  call ``mole_balance_loss`` once to get that). Its weight ``moe_balance_w`` is not in the release.

Routing uses the shared core ``reference_impls/moe.py``: ``route`` (top-1 with the raw softmax
probability as the gate, or all ``E`` with raw probabilities for the dense mode), ``sort_by_expert``
and ``combine_by_token``. The LoRA products themselves run as a loop over the ``E`` experts on their
contiguous block of rows: ``E`` is 3 or 4 in both papers and a LoRA expert is two thin matrices with
no activation, which the core's ``Experts`` (an FFN ``d -> h -> d`` with an activation) does not
express; the loop is the readable form.

Shapes: ``B`` samples, ``S`` tokens per sample, ``T = B * S`` tokens, ``d_in``/``d_out`` the frozen
layer's widths, ``r`` LoRA rank, ``E`` experts, ``K`` instruction clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impls.moe import ACTIVATIONS, FeedForward, combine_by_token, route, sort_by_expert

GateMode = Literal["gate", "none", "straight_through", "dense"]


# ---------------------------------------------------------------------------------------------------
# E LoRA pairs and their dispatch
# ---------------------------------------------------------------------------------------------------


class LoRAExperts(nn.Module):
    """``E`` LoRA pairs ``A_e [r, d_in]``, ``B_e [d_out, r]``; expert e adds ``s * B_e A_e dropout(x)``.

    Init as PEFT's LoRA (which both MoCLE and LLaVA-MoLE vendor): ``A`` Kaiming-uniform with
    ``a = sqrt(5)``, i.e. ``U(-1/sqrt(d_in), 1/sqrt(d_in))`` as ``nn.Linear``; ``B = 0``, so every expert
    starts as a zero update and the adapted layer starts equal to the frozen one.

    Args:
        num_experts: ``E``.
        d_in, d_out: the adapted layer's input and output widths.
        rank: ``r``.
        alpha: LoRA ``alpha``; the update is scaled by ``s = alpha / r``.
        dropout: LoRA dropout on the expert's input, training only.
    """

    def __init__(self, num_experts: int, d_in: int, d_out: int, *, rank: int = 8, alpha: float = 32.0,
                 dropout: float = 0.0):
        super().__init__()
        self.num_experts, self.rank, self.scaling = num_experts, rank, alpha / rank
        self.A = nn.Parameter(torch.empty(num_experts, rank, d_in))
        self.B = nn.Parameter(torch.zeros(num_experts, d_out, rank))
        bound = 1.0 / math.sqrt(d_in)
        nn.init.uniform_(self.A, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def expert_delta(self, x: Tensor, expert: int) -> Tensor:
        """``s * B_e A_e dropout(x)`` for one expert and any leading shape ``[..., d_in] -> [..., d_out]``."""
        return self.scaling * (self.dropout(x) @ self.A[expert].T) @ self.B[expert].T

    def forward(self, x: Tensor, expert_index: Tensor, gates: Tensor, keep: Tensor | None = None) -> Tensor:
        """``delta_t = sum_j gates_tj * s * B_{e_tj} A_{e_tj} x_t`` (only the chosen experts run).

        Args:
            x: ``[T, d_in]`` tokens.
            expert_index: ``[T, k]`` long, the chosen experts of each token.
            gates: ``[T, k]`` their combine weights.
            keep: ``[T, k]`` bool, optional: assignments to skip (default: keep all).

        Returns:
            ``[T, d_out]``.
        """
        keep = torch.ones_like(expert_index, dtype=torch.bool) if keep is None else keep
        dispatch = sort_by_expert(expert_index, keep, self.num_experts)  # rows grouped by expert
        rows = self.dropout(x.index_select(0, dispatch.token_index))  # [N, d_in]
        A, B = self.A.unbind(0), self.B.unbind(0)  # unbind once (see the core's Experts._loop)
        outs = [(xe @ A[e].T) @ B[e].T for e, xe in enumerate(rows.split(dispatch.counts.tolist())) if xe.shape[0]]
        out = torch.cat(outs) if outs else rows.new_zeros(0, self.B.shape[1])
        return self.scaling * combine_by_token(out, dispatch, gates, x.shape[0])


def _freeze(layer: nn.Module) -> nn.Module:
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer


# ---------------------------------------------------------------------------------------------------
# MoCLE: cluster-conditional routing, one expert per sample, plus a universal expert
# ---------------------------------------------------------------------------------------------------


@dataclass
class MoCLEOutput:
    output: Tensor  # [B, S, d_out] (or [B, d_out] for a 2-D input)
    router_probs: Tensor  # [B, E] fp32 softmax(logits / tau)
    expert_index: Tensor  # [B] long: the sample's expert i*
    gate: Tensor  # [B] fp32: w = p_{i*}; the universal expert gets 1 - w


class MoCLELinear(nn.Module):
    """A frozen ``nn.Linear`` plus MoCLE's cluster-routed LoRA experts and universal expert.

    Args:
        base: the frozen layer ``W`` (its parameters are set to ``requires_grad=False``).
        num_experts: ``E`` (MoCLE default 4).
        num_clusters: ``K``, the k-means clusters of the instructions (MoCLE yaml: 64).
        rank, alpha, dropout: LoRA settings (MoCLE: 8, 32, 0.1).
        temperature: ``tau`` in ``softmax(logits / tau)`` (MoCLE yaml: 0.05).
        noise_std: std of the Gaussian noise added to the gate logits in training (MoCLE: 0.1).
        embed_dim: width of the learned cluster embedding (MoCLE: 384, SBERT's width).
        universal: add the universal expert (MoCLE's ``g_enable``; default True).
    """

    def __init__(self, base: nn.Linear, *, num_experts: int = 4, num_clusters: int = 64, rank: int = 8,
                 alpha: float = 32.0, dropout: float = 0.1, temperature: float = 0.05, noise_std: float = 0.1,
                 embed_dim: int = 384, universal: bool = True):
        super().__init__()
        self.base = _freeze(base)
        self.temperature, self.noise_std = temperature, noise_std
        self.cluster_embedding = nn.Embedding(num_clusters, embed_dim)  # e_c
        self.gate = nn.Linear(embed_dim, num_experts, bias=False)  # W_g
        lora = dict(rank=rank, alpha=alpha, dropout=dropout)
        self.experts = LoRAExperts(num_experts, base.in_features, base.out_features, **lora)
        self.universal = LoRAExperts(1, base.in_features, base.out_features, **lora) if universal else None

    def router_logits(self, cluster: Tensor) -> Tensor:
        """``[B]`` cluster ids -> ``[B, E]`` fp32 ``W_g Emb(c)`` (+ ``N(0, noise_std^2)`` in training)."""
        logits = self.gate(self.cluster_embedding(cluster)).float()
        if self.training and self.noise_std:
            logits = logits + self.noise_std * torch.randn_like(logits)
        return logits

    def forward(self, x: Tensor, cluster: Tensor) -> MoCLEOutput:
        """``x [B, S, d_in]`` (or ``[B, d_in]``), ``cluster [B]`` long -> ``MoCLEOutput``."""
        squeeze = x.dim() == 2
        x = x.unsqueeze(1) if squeeze else x
        Bsz, S, _ = x.shape
        routing = route(self.router_logits(cluster) / self.temperature, top_k=1)  # p = softmax(z / tau), fp32
        w = routing.gates  # [B, 1]: w = p_{i*} (k = 1: the core keeps the raw probability)
        flat = x.reshape(Bsz * S, -1)
        index = routing.expert_index.repeat_interleave(S, dim=0)  # every token of a sample uses i*
        gates = w.repeat_interleave(S, dim=0)
        y = self.base(flat) + self.experts(flat, index, gates)  # W x + w s B_i A_i x
        if self.universal is not None:  # + (1 - w) s B_u A_u x
            y = y + self.universal(flat, torch.zeros_like(index), 1.0 - gates)
        y = y.view(Bsz, S, -1)
        return MoCLEOutput(y.squeeze(1) if squeeze else y, routing.router_probs,
                           routing.expert_index[:, 0], w[:, 0])


@torch.no_grad()
def kmeans(points: Tensor, num_clusters: int, *, iterations: int = 50,
           generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means with k-means++ seeding: ``points [n, D]`` -> centroids ``[K, D]``.

    MoCLE fits k-means once on the SBERT embeddings of the training instructions and stores it
    (``joblib``); this stands in for that step. An empty cluster keeps its previous centroid.
    """
    n = points.shape[0]
    centroids = points[torch.randint(0, n, (1,), generator=generator)]
    for _ in range(1, num_clusters):  # k-means++: sample proportionally to the squared distance
        d2 = torch.cdist(points, centroids).min(dim=1).values.square()
        centroids = torch.cat([centroids, points[torch.multinomial(d2 + 1e-12, 1, generator=generator)]])
    for _ in range(iterations):
        assign = assign_clusters(points, centroids)
        counts = torch.bincount(assign, minlength=num_clusters).unsqueeze(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids


def assign_clusters(points: Tensor, centroids: Tensor) -> Tensor:
    """``[n, D]``, ``[K, D]`` -> ``[n]`` long: the nearest centroid (Euclidean), as ``kmeans.predict``."""
    return torch.cdist(points, centroids).argmin(dim=1)


# ---------------------------------------------------------------------------------------------------
# LLaVA-MoLE: token-level top-1 routing among LoRA experts of a frozen linear layer or MLP
# ---------------------------------------------------------------------------------------------------


@dataclass
class MoLEOutput:
    output: Tensor  # [B, S, d_out]
    router_probs: Tensor  # [B, S, E] fp32
    expert_index: Tensor  # [B, S] long: each token's top-1 expert
    balance_loss: Tensor  # scalar: mole_balance_loss over the non-pad tokens (unweighted)


def mole_balance_loss(router_probs: Tensor, expert_index: Tensor, mask: Tensor | None = None) -> Tensor:
    """LLaVA-MoLE's balance loss: ``mean_b sum_e mean_s(p_bse) * mean_s(onehot_bse)``.

    Per sample ``b``, the means run over its non-pad tokens; there is no factor ``E`` (so the value is
    ``1/E`` when routing is uniform and 1 when a sample's tokens all go to one expert with probability 1,
    i.e. the core's ``load_balancing_loss`` of that sample divided by ``E``). As in the code, the one-hot
    is straight-through, ``onehot - p.detach() + p``: its value is the hard count but it passes ``p``'s
    gradient, so both factors carry gradient (Switch's ``f`` carries none).

    Args:
        router_probs: ``[B, S, E]`` softmax probabilities.
        expert_index: ``[B, S]`` long top-1 experts.
        mask: ``[B, S]`` bool, True for real tokens (default: all). A sample with no real token adds 0.
    """
    E = router_probs.shape[-1]
    mask = torch.ones(expert_index.shape, dtype=torch.bool, device=expert_index.device) if mask is None else mask
    m = mask.unsqueeze(-1).to(router_probs.dtype)  # [B, S, 1]
    one_hot = F.one_hot(expert_index, E).to(router_probs.dtype)
    one_hot = one_hot - router_probs.detach() + router_probs  # straight-through, as forwchen/LLaVA-MoLE
    n = m.sum(dim=1).clamp_min(1.0)  # [B, 1] real tokens per sample
    mean_p = (router_probs * m).sum(dim=1) / n  # [B, E]
    mean_onehot = (one_hot * m).sum(dim=1) / n
    return (mean_p * mean_onehot).sum(dim=-1).mean()


def _token_routing(x: Tensor, router: nn.Linear, mode: GateMode) -> tuple:
    """LLaVA-MoLE's router on ``x [T, d]``: ``p = softmax(W_r x)`` in fp32, then the experts and gates
    that ``mode`` uses. Returns ``(routing, expert_index [T, k], gates [T, k])``."""
    logits = F.linear(x.float(), router.weight.float())  # [T, E]
    E = logits.shape[-1]
    if mode == "dense":  # out = W x + sum_e p_e s B_e A_e x
        routing = route(logits, top_k=E, renormalize=False)
        return routing, routing.expert_index, routing.gates
    routing = route(logits, top_k=1)  # i* = argmax p; the core keeps the raw p_{i*} as the gate for k = 1
    p = routing.gates
    gates = {"gate": p, "none": torch.ones_like(p), "straight_through": 1.0 + p - p.detach()}[mode]
    return routing, routing.expert_index, gates


def _check_mode(mode: str) -> None:
    if mode not in ("gate", "none", "straight_through", "dense"):
        raise ValueError(f"unknown mode {mode!r}")


class MoLELinear(nn.Module):
    """A frozen ``nn.Linear`` with LLaVA-MoLE's token-level top-1 LoRA experts:
    ``y_t = W x_t + g_t * s * B_{i*} A_{i*} x_t`` with ``i* = argmax softmax(W_r x_t)``.

    Args:
        base: the frozen layer ``W`` (its parameters are set to ``requires_grad=False``).
        num_experts, rank, alpha, dropout, mode: as ``MoLEFeedForward``.
    """

    def __init__(self, base: nn.Linear, *, num_experts: int = 3, rank: int = 32, alpha: float = 64.0,
                 dropout: float = 0.05, mode: GateMode = "gate"):
        super().__init__()
        _check_mode(mode)
        self.base, self.mode, self.num_experts = _freeze(base), mode, num_experts
        self.router = nn.Linear(base.in_features, num_experts, bias=False)  # W_r
        self.experts = LoRAExperts(num_experts, base.in_features, base.out_features,
                                   rank=rank, alpha=alpha, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> MoLEOutput:
        """``x [B, S, d_in]``, ``mask [B, S]`` bool (real tokens; only for the balance loss) -> ``MoLEOutput``."""
        Bsz, S, d = x.shape
        flat = x.reshape(-1, d)
        routing, index, gates = _token_routing(flat, self.router, self.mode)
        y = self.base(flat) + self.experts(flat, index, gates)
        probs = routing.router_probs.view(Bsz, S, -1)
        top1 = probs.argmax(dim=-1)
        return MoLEOutput(y.view(Bsz, S, -1), probs, top1, mole_balance_loss(probs, top1, mask))


class MoLEFeedForward(nn.Module):
    """A frozen ``FeedForward`` (``fc2(act(fc1 x))``) whose two matrices get LoRA experts, one top-1
    routing decision per token shared by both (LLaVA-MoLE, MLP layer).

    With ``num_experts=1`` this is plain LoRA on both matrices (the router's softmax over one expert is
    exactly 1 and gets no gradient): the shared-LoRA baseline. The same holds for ``MoLELinear``.

    Args:
        base: the frozen MLP (its parameters are set to ``requires_grad=False``).
        num_experts: ``E`` (LLaVA-MoLE release: 3).
        rank, alpha, dropout: LoRA settings (release: 32, 64; dropout 0.05).
        mode: how each chosen expert's update is weighted: ``"gate"`` (default), ``"none"`` (the
            code's sparse path), ``"straight_through"`` or ``"dense"`` (the released inference); see the
            module docstring.
    """

    def __init__(self, base: FeedForward, *, num_experts: int = 3, rank: int = 32, alpha: float = 64.0,
                 dropout: float = 0.05, mode: GateMode = "gate"):
        super().__init__()
        _check_mode(mode)
        self.base, self.mode, self.num_experts = _freeze(base), mode, num_experts
        d_model, d_hidden = base.fc1.in_features, base.fc1.out_features
        self.router = nn.Linear(d_model, num_experts, bias=False)  # W_r
        lora = dict(rank=rank, alpha=alpha, dropout=dropout)
        self.fc1_experts = LoRAExperts(num_experts, d_model, d_hidden, **lora)
        self.fc2_experts = LoRAExperts(num_experts, d_hidden, d_model, **lora)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> MoLEOutput:
        """``x [B, S, d]``, ``mask [B, S]`` bool (real tokens; only for the balance loss) -> ``MoLEOutput``."""
        Bsz, S, d = x.shape
        flat = x.reshape(-1, d)
        routing, index, gates = _token_routing(flat, self.router, self.mode)
        h = self.base.fc1(flat) + self.fc1_experts(flat, index, gates)  # same routing for both matrices
        h = ACTIVATIONS[self.base.activation](h)
        y = self.base.fc2(h) + self.fc2_experts(h, index, gates)
        probs = routing.router_probs.view(Bsz, S, -1)
        top1 = probs.argmax(dim=-1)
        return MoLEOutput(y.view(Bsz, S, d), probs, top1, mole_balance_loss(probs, top1, mask))


__all__ = [
    "GateMode",
    "LoRAExperts",
    "MoCLELinear",
    "MoCLEOutput",
    "MoLEFeedForward",
    "MoLELinear",
    "MoLEOutput",
    "assign_clusters",
    "kmeans",
    "mole_balance_loss",
]
