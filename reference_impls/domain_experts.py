"""Med-MoE: domain-specific experts chosen by a router trained to recognise the domain, plus a meta expert.

Jiang, Zheng, Zhang, Jin, Liu. "Med-MoE: Mixture of Domain-Specific Experts for Lightweight Medical
Vision-Language Models", Findings of EMNLP 2024, arXiv 2404.10237 (first titled "MoE-TinyMed");
code ``jiangsongtao/Med-MoE``.

Why this paper
--------------
The knowledge base files seventeen papers under *learner / domain-experts*. Many are robot or driving
policies whose "domains" are skills, embodiments or scenes (HiMoE-VLA, DriveMoE, MoSE, SAME, ChatVLA, MoRE,
AdaMoE, LAR-MoE, SAMoE-VLA), and several medical ones specialise encoders by imaging modality without a
sparse router (MedMoE, M4oE). **Med-MoE** is the cleanest representative of the idea itself: one expert
per domain, a router *trained to recognise the domain*, and an always-on *meta expert* for what the domains
share, inside an otherwise standard sparse MoE (it is built on MoE-LLaVA). Its code could be read, so the
layer below follows it, and a CPU-sized version can show the two things that matter: the router recovers
the domains, and domain experts beat a dense layer of the same active size when domains need different
functions.

What the paper and code do
--------------------------
Training has three stages (paper summary, notes on the code below):

1. **Alignment** of medical images with the language model's tokens (not reproduced here).
2. **Instruction tuning with routing**: the dense model is instruction-tuned, and a router is trained to
   classify the input's domain (MRI, CT, pathology, X-ray). In the code the router is one linear layer with a
   bias (``moe/sharded_moe.py::Router.fc1``, ``d -> num_experts``), trained as a supervised classifier on
   hidden states averaged over layers and positions (third-party reading of ``Router_Train.ipynb``:
   deepwiki.com/jiangsongtao/Med-MoE, "Router Training and Specialization"), saved as
   ``phi_router.pth`` / ``stablelm_router.pth``.
3. **Domain-specific MoE tuning**: every chosen FFN becomes a MoE layer whose experts are copies of the dense
   FFN (upcycling, as MoE-LLaVA). The router is **loaded and frozen** (``TopKGate``: ``requires_grad =
   False`` on ``fc1``). The layer's output adds the **meta expert**, the original dense FFN, to the routed
   mixture without a weight (``moe/layer.py``: ``output = output + mea_output``)::

       y(x) = sum_{e in topk(p(x))} g_e(x) FFN_e(x) + FFN_meta(x),     p(x) = softmax(W_r x + b_r)

Defaults read in the code (``llava_stablelm_moe.py``, ``moe/sharded_moe.py``, ``moe/layer.py``,
``README.md``): 4 experts, top-2 (``Tinymed-*`` "×4-Top2"), DeepSpeed top-2 gating with gates renormalised
over the two choices, capacity factor 4 for training and evaluation and ``drop_tokens = False``
(dropless), MoE layers in every other block (``moe_mode = "sparse"``), ``router_aux_loss_coef = 0.01``.

Two consequences the code leaves implicit (both tested):

* the router is frozen, so the balance loss it still computes and adds (0.01 x ``l_aux``) has no parameter
  to act on; it changes the reported loss, not training. Here :meth:`DomainExpertsLayer.freeze_router`
  makes the same state explicit, and ``aux_losses`` reports the loss for logging only;
* at the moment of upcycling the layer computes ``2 FFN(x)``, not ``FFN(x)``: the routed experts are copies
  of the dense FFN with gates summing to 1, and the meta expert is the dense FFN again, added without a
  weight. Unlike MoE-LLaVA's upcycling, the function changes, and stage 3 starts by undoing the doubling.

Where this implementation simplifies
------------------------------------
* A "sample" is one vector, not a sequence, and the model is embed -> one Med-MoE layer -> head (no
  language model). Routing is per sample, so training the router on pooled hidden states and applying it
  per token (as the code does) coincide.
* Routing goes through the shared core (``route`` dropless top-k with renormalised gates, ``Experts``,
  ``sort_by_expert``, ``combine_by_token``). DeepSpeed's Gumbel sampling of the second expert is off
  (the core's default), so routing is deterministic.
* The number of experts equals the number of domains and expert ``e`` is the router's class ``e``, as with
  Med-MoE's 4 experts for 4 imaging domains.

Shapes: ``B`` samples, ``d`` width, ``h`` expert hidden width, ``E`` experts (= domains), ``k`` choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impls.moe import (
    Experts,
    FeedForward,
    Routing,
    combine_by_token,
    load_balancing_loss,
    route,
    sort_by_expert,
)


@dataclass
class DomainMoEOutput:
    output: Tensor  # [B, d]
    router_logits: Tensor  # [B, E] fp32
    routing: Routing  # the core's decision: expert_index [B, k], gates [B, k], ...
    aux_losses: dict[str, Tensor]  # "load_balance" (E sum f P), for logging; inert when the router is frozen


class DomainExpertsLayer(nn.Module):
    """``y = sum_{e in topk} g_e FFN_e(x) + FFN_meta(x)``: domain experts under a domain router, plus a meta
    expert that every input uses.

    Args:
        d_model, d_hidden: widths of every FFN ``d -> h -> d`` (routed experts and meta expert alike).
        num_experts: ``E`` (Med-MoE: 4, one per imaging domain).
        top_k: ``k`` (Med-MoE: 2).
        meta_expert: add the always-on meta expert (Med-MoE: True).
        router_bias: the router is ``Linear(d, E)`` with a bias, as Med-MoE's ``Router.fc1`` (the core's
            ``SparseMoE`` router has none).
    """

    def __init__(self, d_model: int, d_hidden: int, num_experts: int = 4, top_k: int = 2, *,
                 meta_expert: bool = True, router_bias: bool = True):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(d_model, num_experts, bias=router_bias)
        self.experts = Experts(num_experts, d_model, d_hidden)
        self.meta = FeedForward(d_model, d_hidden) if meta_expert else None

    @classmethod
    def from_dense(cls, ffn: FeedForward, num_experts: int = 4, top_k: int = 2, *,
                   router: nn.Linear | None = None, meta_expert: bool = True) -> "DomainExpertsLayer":
        """Stage 3's layer: routed experts are copies of the dense FFN, the meta expert is a copy of it too
        (the code keeps the original module as ``meta_moe`` and deep-copies it into the experts), and the
        router, if given, is the stage-2 domain classifier (copied, then frozen). With the meta expert the
        new layer computes ``2 FFN(x)`` (module docstring)."""
        layer = cls(ffn.fc1.in_features, ffn.fc1.out_features, num_experts, top_k, meta_expert=meta_expert,
                    router_bias=router.bias is not None if router is not None else True)
        layer.experts.copy_from_dense(ffn)
        if layer.meta is not None:
            layer.meta.load_state_dict(ffn.state_dict())
        if router is not None:
            layer.router.load_state_dict(router.state_dict())
            layer.freeze_router()
        return layer

    def freeze_router(self) -> None:
        """Med-MoE stage 3: the domain router is loaded and not trained (``requires_grad = False``)."""
        for p in self.router.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> DomainMoEOutput:
        """``x [B, d]`` -> :class:`DomainMoEOutput`."""
        router_logits = self.router(x.float())  # fp32 router, as DeepSpeed
        routing = route(router_logits, self.top_k, None, renormalize=True)  # dropless (capacity 4, no drops)
        dispatch = sort_by_expert(routing.expert_index, routing.keep, self.num_experts)
        rows = self.experts(x.index_select(0, dispatch.token_index), dispatch.counts, dispatch.expert_of_row)
        y = combine_by_token(rows, dispatch, routing.gates, x.shape[0])  # sum_e g_e FFN_e(x)
        if self.meta is not None:
            y = y + self.meta(x)  # + FFN_meta(x), unweighted
        aux = {"load_balance": load_balancing_loss(routing.router_probs, routing.expert_index, self.num_experts)}
        return DomainMoEOutput(y, router_logits, routing, aux)


def router_domain_loss(router_logits: Tensor, domains: Tensor) -> Tensor:
    """Stage 2: the router is a supervised domain classifier, ``CE(softmax(W_r x + b_r), domain)``."""
    return F.cross_entropy(router_logits.float(), domains)


# ---------------------------------------------------------------------------------------------------
# A small model to train in the three stages
# ---------------------------------------------------------------------------------------------------


class DomainRegressor(nn.Module):
    """``head(h + mlp(LN(h)))`` with ``h = embed(x)``; ``mlp`` is a dense ``FeedForward`` (stages 1-2) or a
    :class:`DomainExpertsLayer` (stage 3). Regression to ``d_out`` targets.

    Args:
        d_in, d_out: input and target widths.
        d_model: width ``d``.
        d_hidden: FFN hidden width of the dense model (and of every expert after upcycling).
    """

    def __init__(self, d_in: int, d_out: int, *, d_model: int = 32, d_hidden: int = 32):
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.mlp: nn.Module = FeedForward(d_model, d_hidden)
        self.head = nn.Linear(d_model, d_out)

    def hidden(self, x: Tensor) -> Tensor:
        """The MLP's input ``LN(embed(x))``, ``[B, d]``: what the router reads (and is trained on)."""
        return self.norm(self.embed(x))

    def forward(self, x: Tensor) -> tuple[Tensor, DomainMoEOutput | None]:
        h = self.embed(x)
        z = self.norm(h)
        if isinstance(self.mlp, DomainExpertsLayer):
            moe = self.mlp(z)
            return self.head(h + moe.output), moe
        return self.head(h + self.mlp(z)), None

    def upcycle(self, num_experts: int = 4, top_k: int = 2, *, router: nn.Linear | None = None,
                meta_expert: bool = True) -> "DomainRegressor":
        """Stage 3: replace the dense FFN by a :class:`DomainExpertsLayer` built from it (in place)."""
        if not isinstance(self.mlp, FeedForward):
            raise ValueError("already upcycled")
        self.mlp = DomainExpertsLayer.from_dense(self.mlp, num_experts, top_k, router=router, meta_expert=meta_expert)
        return self


def active_ffn_parameters(module: nn.Module) -> int:
    """FFN parameters one sample uses: the dense FFN's, or ``k`` experts' plus the meta expert's plus the
    router's for a :class:`DomainExpertsLayer`."""
    if isinstance(module, DomainExpertsLayer):
        ex = module.experts
        per_expert = sum(p[0].numel() for p in (ex.w1, ex.w2, ex.b1, ex.b2) if p is not None)
        meta = sum(p.numel() for p in module.meta.parameters()) if module.meta is not None else 0
        return module.top_k * per_expert + meta + sum(p.numel() for p in module.router.parameters())
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def domain_expert_agreement(expert_index: Tensor, domains: Tensor, num_experts: int) -> tuple[float, Tensor]:
    """How well top-1 experts recover the domains.

    Returns ``(accuracy, table)``: ``table [D, E]`` counts samples of domain ``d`` whose first choice is
    expert ``e``; ``accuracy`` is the fraction of samples routed to "their" expert under the best
    one-to-one matching of domains to experts (a maximum-weight bipartite matching, ``networkx``).
    1.0 when every domain has an expert of its own; at most the largest domain's share when all samples go
    to one expert. It needs no fixed mapping, so it also scores a router that was never shown the labels.
    """
    import networkx as nx  # a dependency of moekb itself; only this score needs it

    num_domains = int(domains.max()) + 1
    table = torch.zeros(num_domains, num_experts, dtype=torch.long)
    table.index_put_((domains, expert_index[:, 0]), torch.ones_like(domains), accumulate=True)
    graph = nx.Graph()
    graph.add_weighted_edges_from((("domain", d), ("expert", e), int(table[d, e]))
                                  for d in range(num_domains) for e in range(num_experts) if table[d, e] > 0)
    matched = sum(graph[a][b]["weight"] for a, b in nx.max_weight_matching(graph))
    return matched / domains.numel(), table


__all__ = [
    "DomainExpertsLayer",
    "DomainMoEOutput",
    "DomainRegressor",
    "active_ffn_parameters",
    "domain_expert_agreement",
    "router_domain_loss",
]
