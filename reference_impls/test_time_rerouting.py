"""R2-T2: re-routing a multimodal MoE at test time, from the routing of neighbours it got right.

Li, Li, Zhou. "R2-T2: Re-Routing in Test-Time for Multimodal Mixture-of-Experts", arXiv 2502.20395.

What the paper does, and why
----------------------------
A multimodal MoE's router is trained once and then trusted on every input. Under a distribution shift
it can send a sample to the wrong experts even though the right experts exist and would answer
correctly. R2-T2 changes only the sample's **routing weights** at test time, with no retraining:

* a **reference set** holds training samples the model predicts *correctly*, with their routing
  weights ``r_j`` and an embedding of each sample's *task* (the question text, in the paper);
* for a test sample ``x`` the ``k`` nearest reference samples ``N_k(x)`` in that embedding space are
  found, with a kernel ``K(x, x_j)``;
* the test sample's routing weights ``r`` (initialised from the router) are moved towards routing
  that works for those neighbours. Three strategies (notes section 11.1):

  1. **Neighbourhood gradient descent (NGD)**, the default here::

         r* = argmin_r  sum_{j in N_k(x)} K(x, x_j) * l(f(x_j; r), y_j) / sum_j K(x, x_j)
         predict f(x; r*)

     ``f(x_j; r)`` is the model run on the *neighbour's* input with the *test sample's* routing.
  2. **Kernel regression**: ``r_hat = sum_j K r_j / sum_j K`` from the neighbours' routing weights,
     then a binary search for ``alpha`` in ``r <- (1 - alpha) r + alpha r_hat``.
  3. **Mode finding** (moving ``r`` repeatedly towards the kernel-weighted local mean of the
     neighbours' routing weights) is **not implemented** here.

Defaults and where they come from
---------------------------------
From the official code (``tianyi-lab/R2-T2: README.md``, ``evaluate.py``, as the research notes read
them, section 11.2): ``k = 5`` neighbours, ``10`` steps, Adam with learning rate ``1e-2`` and cosine
annealing to ``1e-5``, neighbours by ``NearestNeighbors(metric='cosine')`` with the kernel
``1 - cosine distance`` (= cosine similarity), loss = cross-entropy on the answer. Those are the
defaults of :func:`neighbourhood_gradient_descent`.

Two warnings from the notes, both reproduced by ``notebooks/adapter_test_time_rerouting.ipynb``:

* **The official learning rate was tuned for something else.** The released ``evaluate.py`` does not
  optimise routing weights at all: it trains MoAI's six expert attention modules and leaves the gating
  networks frozen, and never resets them between test samples (notes section 0, item 2, and 11.3).
  With ``1e-2`` annealed over 10 Adam steps the step sizes add up to about ``0.055``, so a logit moves
  by roughly that much (Adam's step is about ``lr`` per step), which rarely changes a decision. The
  notebook reports the official setting *and* a tuned one (``lr = 1.0``).
* **The embedding used for the neighbour search decides the result** (notes 11.4). The paper embeds the
  question text with a separate model (NV-Embed-v2); the notebook compares a task embedding with the
  model's own (shifted) router input.

This file implements the *paper's* per-sample re-routing, reset for every test sample: every function
starts from the router's logits and changes nothing in the model.

Kernel regression's search for ``alpha``: the stored sources say "binary search" without naming the
criterion. Here ``alpha`` minimises the same kernel-weighted neighbour loss as NGD, found by
bisection on the sign of ``dL/d alpha`` over ``[0, 1]`` (exact when the loss is unimodal in
``alpha``). This is this implementation's reading.

Where it simplifies
-------------------
* The model is a small classifier, not MoAI-7B: a router reading a "question" vector picks among
  ``E`` FFN experts applied to a "content" vector, and a shared linear head reads their mixture
  (:class:`RoutedClassifier`). MoAI's gates are dense softmaxes over 3 experts; ``top_k=None`` gives
  that (``top_k = E``), and any ``top_k < E`` routes through the shared core exactly as
  :class:`reference_impls.moe.SparseMoE` does (``route``, ``sort_by_expert``, ``Experts``,
  ``combine_by_token``).
* What is optimised is the routing *logit* vector; the weights are its softmax, so they stay on the
  simplex (notes 11.5). With ``top_k < E`` the gates of unselected experts do not depend on their
  logits (renormalised top-k), so NGD cannot *promote* an expert the router left out; kernel
  regression can (it mixes whole probability vectors). A test shows both.
* Optimisation is batched over test samples. Because each sample's logits appear only in its own
  loss term and Adam is element-wise, this equals running each sample alone (tested against a
  per-sample loop).

Shapes: ``B`` test samples, ``N`` reference samples, ``k`` neighbours, ``E`` experts, ``C`` classes,
``d_c`` content width, ``d_q`` question width, ``d_e`` kNN embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impls.moe import Experts, Routing, combine_by_token, route, sort_by_expert

# ---------------------------------------------------------------------------------------------------
# The MoE whose routing gets re-routed
# ---------------------------------------------------------------------------------------------------


@dataclass
class RoutedOutput:
    logits: Tensor  # [B, C] class logits
    router_logits: Tensor  # [B, E] fp32: the routing logits that were used (router's or supplied)
    routing: Routing  # the core's routing decision (gates, experts, ...)


class RoutedClassifier(nn.Module):
    """``f(content; r)``: ``E`` FFN experts on the content, mixed by routing weights from the question.

    ``logits = head(sum_{e in topk(r)} g_e * FFN_e(content))`` with ``r = softmax(z)`` and router logits
    ``z = W_r [question]`` (or ``W_r [content; question]`` with ``router_reads_content``). The routing
    logits can be *supplied* instead of computed, which is what test-time re-routing needs.

    Args:
        d_content, d_question: input widths ``d_c`` and ``d_q``.
        num_classes: ``C``.
        num_experts: ``E`` (MoAI mixes 3 experts per gate; default 4 here).
        d_hidden: width of every expert FFN ``d_c -> d_hidden -> d_c``.
        top_k: experts per sample; None (default) is dense, ``k = E``, gates = the softmax (MoAI).
            With ``k < E`` the gates are renormalised over the top k (DeepSpeed top-2 semantics); for
            ``k = 1`` the gate is the raw probability ``p_1``, the core's Switch convention.
        router_reads_content: the router sees ``[content; question]`` instead of the question alone.
    """

    def __init__(self, d_content: int, d_question: int, num_classes: int, *, num_experts: int = 4,
                 d_hidden: int = 32, top_k: int | None = None, router_reads_content: bool = False):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = num_experts if top_k is None else top_k
        if not 1 <= self.top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, {num_experts}]")
        self.router_reads_content = router_reads_content
        self.router = nn.Linear(d_question + (d_content if router_reads_content else 0), num_experts)
        self.experts = Experts(num_experts, d_content, d_hidden)
        self.head = nn.Linear(d_content, num_classes)

    def router_logits(self, content: Tensor, question: Tensor) -> Tensor:
        """``z [B, E]`` in fp32."""
        inputs = torch.cat([content, question], -1) if self.router_reads_content else question
        return self.router(inputs).float()

    def forward(self, content: Tensor, question: Tensor | None = None, *,
                router_logits: Tensor | None = None) -> RoutedOutput:
        """``content [B, d_c]`` and ``question [B, d_q]``, or ``router_logits [B, E]`` in place of the
        question: the routing then comes from those logits and the router is not called."""
        if router_logits is None:
            if question is None:
                raise ValueError("give the question or the router logits")
            router_logits = self.router_logits(content, question)
        routing = route(router_logits, self.top_k, None, renormalize=True)
        dispatch = sort_by_expert(routing.expert_index, routing.keep, self.num_experts)
        rows = self.experts(content.index_select(0, dispatch.token_index), dispatch.counts, dispatch.expert_of_row)
        mixed = combine_by_token(rows, dispatch, routing.gates, content.shape[0])  # sum_e g_e FFN_e(x)
        return RoutedOutput(self.head(mixed), router_logits, routing)


# ---------------------------------------------------------------------------------------------------
# Reference set and neighbours
# ---------------------------------------------------------------------------------------------------


@dataclass
class ReferenceSet:
    """Reference samples the model predicts correctly (R2-T2's "successful" samples)."""

    embeddings: Tensor  # [N, d_e] task embeddings used for the neighbour search
    content: Tensor  # [N, d_c] model inputs (what f(x_j; r) is evaluated on)
    labels: Tensor  # [N] long
    router_logits: Tensor  # [N, E] the router's logits on them (their routing weights are the softmax)

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def routing_weights(self) -> Tensor:
        """``r_j = softmax(z_j)``, ``[N, E]``."""
        return torch.softmax(self.router_logits, -1)


@torch.no_grad()
def build_reference_set(model: RoutedClassifier, content: Tensor, question: Tensor, labels: Tensor,
                        embeddings: Tensor) -> ReferenceSet:
    """Keep the samples that ``model`` predicts correctly, with their router logits.

    ``embeddings [N, d_e]`` is the task embedding of each sample (the paper: NV-Embed-v2 on the question
    text). Test samples must not be among these (leakage, notes 11.5)."""
    out = model(content, question)
    correct = out.logits.argmax(-1) == labels
    return ReferenceSet(embeddings[correct], content[correct], labels[correct], out.router_logits[correct])


def nearest_neighbours(queries: Tensor, keys: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """Cosine k-nearest neighbours, as ``NearestNeighbors(metric='cosine')`` in the official code.

    Returns ``index [B, k]`` (nearest first) and the kernel ``K = 1 - cosine distance`` = cosine
    similarity, ``[B, k]``, in ``[-1, 1]``.
    """
    if not 1 <= k <= keys.shape[0]:
        raise ValueError(f"k={k} must be in [1, {keys.shape[0]}]")
    similarity = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T  # [B, N]
    kernel, index = similarity.topk(k, dim=-1)
    return index, kernel


def random_neighbours(num_queries: int, num_keys: int, k: int = 5, *,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Control: ``k`` distinct reference samples drawn at random for each query, kernel 1."""
    index = torch.rand(num_queries, num_keys, generator=generator).argsort(-1)[:, :k]
    return index, torch.ones(num_queries, k)


# ---------------------------------------------------------------------------------------------------
# The neighbourhood objective
# ---------------------------------------------------------------------------------------------------


def _normalised_kernel(kernel: Tensor) -> Tensor:
    """``K_ij / sum_j K_ij``; the sum is floored at a tiny positive number."""
    return kernel / kernel.sum(-1, keepdim=True).clamp_min(1e-12)


def neighbourhood_loss(model: RoutedClassifier, router_logits: Tensor, reference: ReferenceSet,
                       index: Tensor, kernel: Tensor) -> Tensor:
    """``L_i(r_i) = sum_j K_ij * CE(f(x_j; r_i), y_j) / sum_j K_ij`` for every test sample, ``[B]``.

    Args:
        router_logits: ``[B, E]`` the test samples' routing logits (softmax = routing weights).
        reference: the reference set.
        index, kernel: ``[B, k]`` neighbours and kernel weights from :func:`nearest_neighbours`.
    """
    B, k = index.shape
    neighbour_content = reference.content[index.reshape(-1)]  # [B*k, d_c]: x_j
    neighbour_labels = reference.labels[index.reshape(-1)]  # [B*k]: y_j
    logits = model(neighbour_content, router_logits=router_logits.repeat_interleave(k, dim=0)).logits  # f(x_j; r_i)
    ce = F.cross_entropy(logits, neighbour_labels, reduction="none").view(B, k)  # l(f(x_j; r_i), y_j)
    return (_normalised_kernel(kernel.to(ce.dtype)) * ce).sum(-1)


# ---------------------------------------------------------------------------------------------------
# Strategy 1: neighbourhood gradient descent (NGD)
# ---------------------------------------------------------------------------------------------------


def neighbourhood_gradient_descent(model: RoutedClassifier, router_logits: Tensor, reference: ReferenceSet,
                                   index: Tensor, kernel: Tensor, *, steps: int = 10, lr: float = 1e-2,
                                   min_lr: float = 1e-5) -> Tensor:
    """NGD: ``steps`` Adam steps on each test sample's routing logits against its neighbourhood loss.

    Args:
        model: the trained MoE; its parameters are not changed (no gradient is kept on them).
        router_logits: ``[B, E]`` starting logits, the router's own (R2-T2 resets to these for every
            sample).
        reference, index, kernel: see :func:`neighbourhood_loss`.
        steps: Adam steps (official: 10).
        lr, min_lr: Adam learning rate, annealed by a cosine schedule from ``lr`` to ``min_lr`` over
            ``steps`` (official: 1e-2 to 1e-5, tuned there for expert weights, not logits; the
            notebook also uses 1.0).

    Returns:
        ``[B, E]`` the optimised logits ``r*``. Equal to optimising every sample on its own.
    """
    def loss(logits: Tensor) -> Tensor:
        return neighbourhood_loss(model, logits, reference, index, kernel).sum()  # sum_i L_i(r_i)

    return optimise_routing(model, router_logits, loss, steps=steps, lr=lr, min_lr=min_lr)


def optimise_routing(model: RoutedClassifier, router_logits: Tensor, objective, *, steps: int, lr: float,
                     min_lr: float) -> Tensor:
    """``steps`` Adam steps on the routing logits ``[B, E]`` against ``objective(logits) -> scalar``, the
    learning rate annealed by a cosine schedule from ``lr`` to ``min_lr``; the model stays as it is."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)  # only the routing logits move
    try:
        logits = router_logits.detach().clone().float().requires_grad_(True)
        optimiser = torch.optim.Adam([logits], lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=min_lr)
        for _ in range(steps):
            loss = objective(logits)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    finally:
        for p in params:
            p.requires_grad_(True)
    return logits.detach()


# ---------------------------------------------------------------------------------------------------
# Strategy 2: kernel regression with a binary search on the mixing weight
# ---------------------------------------------------------------------------------------------------


def kernel_regression_weights(reference: ReferenceSet, index: Tensor, kernel: Tensor) -> Tensor:
    """``r_hat_i = sum_j K_ij r_j / sum_j K_ij``, ``[B, E]`` (a probability vector per sample)."""
    neighbour_weights = reference.routing_weights[index]  # [B, k, E]
    return (_normalised_kernel(kernel).unsqueeze(-1) * neighbour_weights).sum(1)


def kernel_regression_rerouting(model: RoutedClassifier, router_logits: Tensor, reference: ReferenceSet,
                                index: Tensor, kernel: Tensor, *, search_steps: int = 10) -> tuple[Tensor, Tensor]:
    """Kernel regression, then ``r(alpha) = (1 - alpha) r + alpha r_hat`` with ``alpha`` from a bisection.

    ``alpha`` minimises the neighbourhood loss of :func:`neighbourhood_loss` along the segment from the
    router's weights to ``r_hat``: bisection on the sign of ``dL/d alpha`` (``search_steps`` halvings,
    so ``alpha`` is found to ``2^-search_steps``); ``alpha = 0`` or ``1`` when the slope at that end
    already points outwards. The criterion is this implementation's reading (module docstring).

    Returns:
        ``(logits [B, E], alpha [B])``: the new routing logits ``log r(alpha)`` and the chosen alpha.
    """
    r = torch.softmax(router_logits.detach().float(), -1)  # router's routing weights
    r_hat = kernel_regression_weights(reference, index, kernel).detach()

    def slope(alpha: Tensor) -> Tensor:  # dL_i / d alpha_i at alpha, [B]
        alpha = alpha.clone().requires_grad_(True)
        mixed = (1 - alpha).unsqueeze(-1) * r + alpha.unsqueeze(-1) * r_hat
        loss = neighbourhood_loss(model, mixed.clamp_min(1e-12).log(), reference, index, kernel)
        (grad,) = torch.autograd.grad(loss.sum(), alpha)
        return grad

    B = r.shape[0]
    lo, hi = torch.zeros(B), torch.ones(B)
    for _ in range(search_steps):
        mid = (lo + hi) / 2
        rising = slope(mid) > 0  # the minimum lies left of mid
        hi = torch.where(rising, mid, hi)
        lo = torch.where(rising, lo, mid)
    alpha = (lo + hi) / 2
    alpha = torch.where(slope(torch.zeros(B)) >= 0, torch.zeros(B), alpha)  # loss rises from r: keep r
    alpha = torch.where(slope(torch.ones(B)) <= 0, torch.ones(B), alpha)  # still falling at r_hat
    mixed = (1 - alpha).unsqueeze(-1) * r + alpha.unsqueeze(-1) * r_hat
    return mixed.clamp_min(1e-12).log(), alpha


# ---------------------------------------------------------------------------------------------------
# A baseline that uses no reference set
# ---------------------------------------------------------------------------------------------------


def entropy_rerouting(model: RoutedClassifier, content: Tensor, router_logits: Tensor, *, steps: int = 10,
                      lr: float = 1.0, min_lr: float = 1e-5) -> Tensor:
    """No-reference control: the same optimiser on each sample's routing logits, minimising the entropy
    of the sample's *own* prediction ``H(softmax(f(x; r)))`` (TENT-style confidence), not a
    neighbourhood loss. Returns the new logits ``[B, E]``."""
    def entropy(logits: Tensor) -> Tensor:
        p = torch.softmax(model(content, router_logits=logits).logits, -1)
        return -torch.special.xlogy(p, p).sum()

    return optimise_routing(model, router_logits, entropy, steps=steps, lr=lr, min_lr=min_lr)


@torch.no_grad()
def knn_label_vote(reference: ReferenceSet, index: Tensor, kernel: Tensor, num_classes: int) -> Tensor:
    """Control: predict the kernel-weighted majority label of the neighbours, ``[B]`` long. If this
    scores well, the reference set alone solves the task and re-routing is not what helps."""
    votes = torch.zeros(index.shape[0], num_classes)
    votes.scatter_add_(1, reference.labels[index], kernel.float())
    return votes.argmax(-1)


__all__ = [
    "ReferenceSet",
    "RoutedClassifier",
    "RoutedOutput",
    "build_reference_set",
    "entropy_rerouting",
    "kernel_regression_rerouting",
    "kernel_regression_weights",
    "knn_label_vote",
    "nearest_neighbours",
    "neighbourhood_gradient_descent",
    "neighbourhood_loss",
    "random_neighbours",
]
