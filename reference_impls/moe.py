"""Token-choice top-k sparse Mixture-of-Experts: the shared core of every reference implementation.

What the papers do
------------------
A sparse MoE layer replaces one feed-forward network (FFN) by ``E`` expert FFNs and a router.
The router is a linear map ``z = x W_r`` (``W_r`` is ``d x E``, no bias) followed by a softmax over all
experts, ``p = softmax(z)``. Each token goes to its ``k`` most probable experts, and the layer's output
is the gate-weighted sum of those experts' outputs (Shazeer et al. 2017; GShard, Lepikhin et al. 2020;
Switch, Fedus et al. 2021):

    y(x) = sum_{e in topk(p(x))} g_e(x) * FFN_e(x)

Experts have a fixed buffer size, the *capacity* ``C``, so that the work per expert is bounded (and, in
expert parallelism, the all-to-all buffers have equal sizes). Assignments that do not fit are dropped:
the token then skips that expert, and if every choice was dropped the layer outputs 0 for it and only
the transformer's residual connection carries it forward.

Which code this follows, and the flags where codebases differ
---------------------------------------------------------------
The defaults reproduce DeepSpeed v0.9.5 ``deepspeed/moe/sharded_moe.py::top2gating``, the gating that
MoE-LLaVA (PKU-YuanGroup/MoE-LLaVA, which pins ``deepspeed==0.9.5``) trains with, generalised to any k:

* capacity ``C = max(ceil(k * cf * S / E), min_capacity)`` over the ``S`` tokens of the routing group
  (``_capacity`` in sharded_moe.py; DeepSpeed's group is the whole flattened micro-batch, and so is ours).
  ``capacity_factor=None`` means dropless (no capacity at all).
* buffer positions by *position priority*: all first choices outrank all second choices, and inside one
  choice rank earlier positions come first (``locations2 += sum(mask1)`` in top2gating).
  ``priority="batch"`` is V-MoE's Batch Priority Routing instead (google-research/vmoe
  ``vmoe/nn/routing.py::_get_top_experts_per_item_common``): tokens are ranked by their largest router
  probability, still all top-1 choices before all top-2 choices.
* gates renormalised over the choices that *survived* dropping, ``g_j = p_j / max(sum_kept p, eps)``
  (top2gating divides by ``clamp(gates1_s + gates2_s, min=finfo.eps)``). ``normalize_before_drop=True``
  renormalises over all k choices before dropping, as Tutel does (``tutel/impls/fast_dispatch.py``,
  ``normalize_gate=True``), which gives different numbers on overflow. ``renormalize=False`` keeps the
  raw softmax probabilities as combine weights (Switch, V-MoE).
* the second expert: DeepSpeed picks it as ``argmax_{j != e1}(z_j + Gumbel noise)``, in training *and
  in evaluation* (v0.9.5 passes no training flag to top2gating). That makes inference stochastic, so
  here ``second_expert_sampling="off"`` (deterministic top-k) is the default; ``"train"`` samples only
  in training and ``"always"`` is exactly DeepSpeed's behaviour. For k > 2 every choice after the first
  is sampled this way. Gates always come from the noise-free softmax, as in DeepSpeed.
* the router runs in fp32 (DeepSpeed casts the input and keeps ``wg`` in fp32).

Dispatch
--------
DeepSpeed builds dense one-hot ``[S, E, C]`` dispatch/combine tensors and einsums them, which costs
``O(k * cf * S^2 * d)``, quadratic in the number of tokens. Here dispatch sorts the kept (token, expert)
assignments by expert (as MegaBlocks and ScatterMoE do), runs every expert on its contiguous block of
rows, and adds the gate-weighted rows back per token with ``index_add``. Semantics are identical (the
tests check this against a naive per-expert loop); only the cost differs. The experts run as one
``torch.nn.functional.grouped_mm`` call per matrix where the kernel takes the device, dtype and widths,
and as a readable loop over experts everywhere else (see ``Experts``).

Losses
------
``load_balancing_loss`` is the Switch/GShard form ``E * sum_i f_i P_i`` and ``router_z_loss`` is ST-MoE's
``mean_s logsumexp(z_s)^2``; both are separate functions (like HF's ``load_balancing_loss_func``) and
``SparseMoE`` returns both in ``aux_losses`` so the caller chooses the coefficients (MoE-LLaVA: 0.01 on
the balance loss, summed over layers; no z-loss).

Shapes: ``T`` tokens (flattened), ``d`` model width, ``h`` expert hidden width, ``E`` experts, ``k``
choices per token, ``N`` kept assignments (``N <= T * k``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Priority = Literal["position", "batch", "random"]
SecondExpertSampling = Literal["off", "train", "always"]

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # Phi-2's "gelu_new"
    "relu": F.relu,
    "silu": F.silu,
}


# ----------------------------------------------------------------------------------------------------
# Dense FFN (what gets upcycled)
# ----------------------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """The dense transformer FFN ``fc2(act(fc1(x)))``; names follow Phi-2's ``mlp.fc1`` / ``mlp.fc2``,
    which MoE-LLaVA's Phi-2 scripts train by name (``--train_modules fc1 fc2 wg``)."""

    def __init__(self, d_model: int, d_hidden: int, *, activation: str = "gelu", bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_hidden, bias=bias)
        self.fc2 = nn.Linear(d_hidden, d_model, bias=bias)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(ACTIVATIONS[self.activation](self.fc1(x)))


# ----------------------------------------------------------------------------------------------------
# Routing: which expert, which gate, which buffer slot, kept or dropped
# ----------------------------------------------------------------------------------------------------


CapacityArithmetic = Literal["float32", "exact"]


def expert_capacity(
    num_tokens: int,
    num_experts: int,
    top_k: int,
    capacity_factor: float | None,
    min_capacity: int = 0,
    *,
    arithmetic: CapacityArithmetic = "float32",
) -> int | None:
    """Slots per expert, ``C = max(ceil(k * cf * S / E), min_capacity)``; ``None`` (dropless) when
    ``capacity_factor`` is None.

    DeepSpeed v0.9.5 ``_capacity`` computes ``ceil((S / E) * torch.tensor(k * cf))`` with k = 1 in
    top1gating and k = 2 in top2gating: the product is a *float32* tensor op, so ``k * cf`` is rounded
    to float32 first. ``arithmetic="float32"`` (default) reproduces that, which sometimes gives one slot
    more than exact arithmetic: cf = 1.2, S = 210, E = 8 gives 64 (float32: 26.25 * 2.4000001 =
    63.0000025) where exact arithmetic gives 63. ``arithmetic="exact"`` uses rational arithmetic on the
    decimal value of ``cf``. MoE-LLaVA: cf = 1.5 in training (``scripts/v1/*/finetune_moe.sh``), 2.0 in
    evaluation (``train.py`` default), min_capacity = 0. With ``cf >= E / k`` nothing can be dropped.
    """
    if capacity_factor is None:
        return None
    if arithmetic == "float32":
        slots = math.ceil(float(torch.tensor(top_k * capacity_factor, dtype=torch.float32) * (num_tokens / num_experts)))
    elif arithmetic == "exact":
        from fractions import Fraction

        slots = math.ceil(Fraction(str(capacity_factor)) * top_k * num_tokens / num_experts)
    else:
        raise ValueError(f"unknown capacity arithmetic {arithmetic!r}")
    return max(slots, min_capacity)


@dataclass
class Routing:
    """The router's decision for ``T`` tokens. Every ``[T, k]`` field is indexed by (token, choice rank)."""

    router_probs: Tensor  # [T, E] fp32 softmax of the (noise-free) router logits
    expert_index: Tensor  # [T, k] long: the j-th choice of each token (column 0 = argmax)
    gates: Tensor  # [T, k] fp32 combine weights; exactly 0 where the assignment was dropped
    keep: Tensor  # [T, k] bool: the assignment fits in its expert's buffer
    position: Tensor  # [T, k] long: slot in the expert's buffer in priority order (>= capacity if dropped)
    capacity: int | None  # slots per expert; None = dropless

    @property
    def num_experts(self) -> int:
        return self.router_probs.shape[-1]

    @property
    def expert_counts(self) -> Tensor:
        """[E] long: kept assignments per expert."""
        return torch.bincount(self.expert_index[self.keep], minlength=self.num_experts)

    @property
    def dropped(self) -> int:
        return int((~self.keep).sum())


def _gumbel_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    # -log(Exp(1)) is Gumbel(0, 1); same distribution as DeepSpeed's gumbel_rsample.
    return -torch.empty_like(x).exponential_(generator=generator).log()


def _choose_experts(
    router_logits: Tensor, router_probs: Tensor, top_k: int, sample: bool, generator: torch.Generator | None = None
) -> Tensor:
    if not sample or top_k == 1:
        return router_probs.topk(top_k, dim=-1).indices
    # DeepSpeed top2gating: e1 = argmax p (no noise); e2 = argmax_{j != e1} (z_j + Gumbel), so that
    # P(e2 = j) = softmax over the other experts' logits (the Gumbel-max trick).
    first = router_probs.argmax(dim=-1, keepdim=True)
    noisy = (router_logits + _gumbel_like(router_logits, generator)).scatter(-1, first, float("-inf"))
    return torch.cat([first, noisy.topk(top_k - 1, dim=-1).indices], dim=-1)


def _buffer_positions(expert_index: Tensor, token_priority: Tensor, num_experts: int) -> Tensor:
    """Slot of every assignment in its expert's buffer when assignments queue in the order
    (choice rank, token priority): all first choices, then all second choices, and so on.

    One stable sort replaces DeepSpeed's ``cumsum`` over one-hot masks: sorted by expert, an
    assignment's slot is its rank minus the number of assignments to lower-numbered experts.
    """
    T, k = expert_index.shape
    queue = expert_index[token_priority].T.reshape(-1)  # [k*T] in priority order
    by_expert = torch.argsort(queue, stable=True)
    counts = torch.bincount(queue, minlength=num_experts)
    first_slot = torch.cumsum(counts, 0) - counts
    slot_sorted = torch.arange(queue.numel(), device=queue.device) - first_slot[queue[by_expert]]
    slot_queue = torch.empty_like(slot_sorted).scatter_(0, by_expert, slot_sorted)
    position = torch.empty_like(expert_index)
    position[token_priority] = slot_queue.view(k, T).T
    return position


def route(
    router_logits: Tensor,
    top_k: int,
    capacity_factor: float | None = None,
    *,
    min_capacity: int = 0,
    renormalize: bool = True,
    normalize_before_drop: bool = False,
    priority: Priority = "position",
    sample_second_expert: bool = False,
    capacity_arithmetic: CapacityArithmetic = "float32",
    generator: torch.Generator | None = None,
) -> Routing:
    """Top-k token-choice routing with optional capacity (see the module docstring for the sources).

    Args:
        router_logits: ``[T, E]`` router outputs ``z = x W_r`` for one routing group.
        top_k: experts per token, ``k``.
        capacity_factor: ``cf`` in ``C = ceil(k * cf * T / E)``; None is dropless.
        min_capacity: lower bound on ``C`` (DeepSpeed ``min_capacity``; MoE-LLaVA passes 0).
        renormalize: for ``k >= 2``, combine weights ``p_j / sum_kept p`` (DeepSpeed top-2, Mixtral);
            False gives the raw softmax ``p_j`` (V-MoE). For ``k = 1`` the gate is always the raw
            ``p_1``, as in Switch (eq. 2) and DeepSpeed's top1gating: renormalising one choice gives
            exactly 1, and the task loss would then send the router no gradient.
        normalize_before_drop: with ``renormalize``, divide by the sum over all k choices *before*
            dropping (Tutel); a token that lost its second choice then keeps ``p_1 / (p_1 + p_2) < 1``.
        priority: who gets a buffer slot first when capacity binds. ``"position"`` (DeepSpeed top-2:
            earlier tokens first), ``"batch"`` (V-MoE BPR: largest top-1 probability first; ties keep
            position order) or ``"random"`` (DeepSpeed top-1's random token selection, ``use_rts``:
            a uniformly random order). Always all first choices before all second choices.
        sample_second_expert: DeepSpeed's Gumbel sampling of choices 2..k.
        capacity_arithmetic: see ``expert_capacity`` (DeepSpeed: float32).
        generator: random source for ``"random"`` priority and the Gumbel sampling.
    """
    T, E = router_logits.shape
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k={top_k} must be in [1, num_experts={E}]")
    router_probs = torch.softmax(router_logits.float(), dim=-1)
    expert_index = _choose_experts(router_logits.float(), router_probs, top_k, sample_second_expert, generator)
    topk_probs = router_probs.gather(-1, expert_index)

    if priority == "position":
        token_priority = torch.arange(T, device=router_logits.device)
    elif priority == "batch":
        token_priority = torch.argsort(topk_probs[:, 0], descending=True, stable=True)
    elif priority == "random":
        token_priority = torch.randperm(T, generator=generator, device="cpu").to(router_logits.device)
    else:
        raise ValueError(f"unknown priority {priority!r}")
    position = _buffer_positions(expert_index, token_priority, E)

    capacity = expert_capacity(T, E, top_k, capacity_factor, min_capacity, arithmetic=capacity_arithmetic)
    keep = position < capacity if capacity is not None else torch.ones_like(position, dtype=torch.bool)

    eps = torch.finfo(router_probs.dtype).eps
    if not renormalize or top_k == 1:
        gates = topk_probs * keep
    elif normalize_before_drop:
        gates = topk_probs / topk_probs.sum(-1, keepdim=True).clamp_min(eps) * keep
    else:
        kept = topk_probs * keep
        gates = kept / kept.sum(-1, keepdim=True).clamp_min(eps)
    return Routing(router_probs, expert_index, gates, keep, position, capacity)


# ----------------------------------------------------------------------------------------------------
# Dispatch: group the kept assignments by expert, and add the expert outputs back per token
# ----------------------------------------------------------------------------------------------------


@dataclass
class Dispatch:
    """Kept assignments in expert-contiguous order: rows ``offsets[e-1]:offsets[e]`` go to expert e."""

    assignment: Tensor  # [N] long: index into the flattened [T*k] assignments
    token_index: Tensor  # [N] long: the token of each row (assignment // k)
    expert_of_row: Tensor  # [N] long: non-decreasing expert id of each row
    counts: Tensor  # [E] long: rows per expert


def sort_by_expert(expert_index: Tensor, keep: Tensor, num_experts: int) -> Dispatch:
    """Sort the kept (token, expert) assignments by expert; dropped ones are sent to a sentinel
    expert ``E`` that sorts last and is cut off."""
    k = expert_index.shape[-1]
    flat = torch.where(keep, expert_index, num_experts).reshape(-1)
    assignment = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts + 1)[:num_experts]
    assignment = assignment[: int(counts.sum())]  # host sync: the number of kept rows sets the shapes
    return Dispatch(assignment, assignment // k, flat[assignment], counts)


def combine_by_token(expert_out: Tensor, dispatch: Dispatch, gates: Tensor, num_tokens: int) -> Tensor:
    """``y_t = sum_j g_tj * FFN_{e_tj}(x_t)``: weight every row by its gate and add it to its token."""
    weight = gates.reshape(-1).index_select(0, dispatch.assignment).to(expert_out.dtype).unsqueeze(-1)
    out = expert_out.new_zeros(num_tokens, expert_out.shape[-1])
    return out.index_add(0, dispatch.token_index, expert_out * weight)


# ----------------------------------------------------------------------------------------------------
# Experts: E FFNs with stacked weights
# ----------------------------------------------------------------------------------------------------


def grouped_mm_available(x: Tensor, *widths: int) -> bool:
    """Whether ``F.grouped_mm`` can run on rows like ``x`` with matrices of these widths.

    The kernel exists on CPU (torch >= 2.11: fp32 and bf16) and on CUDA for bf16 on SM >= 8.0. It needs
    every row stride to be a multiple of 16 bytes (fp32 widths divisible by 4, bf16 by 8), else it
    raises "strides should be multiple of 16 bytes". Under ``torch.compile`` its fake-tensor rule
    accepts bf16 only, so fp32 takes the fallback there.
    """
    if not hasattr(F, "grouped_mm"):
        return False
    if x.device.type == "cpu":
        dtype_ok = x.dtype == torch.bfloat16 or (x.dtype == torch.float32 and not torch.compiler.is_compiling())
    elif x.device.type == "cuda":
        dtype_ok = x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    else:
        dtype_ok = False
    return dtype_ok and all(width * x.element_size() % 16 == 0 for width in (x.shape[-1], *widths))


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: ``grouped_mm``'s backward
    refuses the stride-0 gradient that ``out.sum().backward()`` sends."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # an empty tensor counts as contiguous whatever its strides, so zero rows get a fresh one
        return grad.contiguous() if grad.numel() else torch.zeros(grad.shape, dtype=grad.dtype, device=grad.device)


ExpertBackend = Literal["auto", "grouped_mm", "loop"]


class Experts(nn.Module):
    """``E`` FFN experts ``fc2_e(act(fc1_e(x)))`` with stacked weights ``w1 [E, d, h]``, ``w2 [E, h, d]``.

    ``forward`` takes expert-contiguous rows (``Dispatch`` order) and the rows per expert. One fast
    path and one readable fallback compute the same product; the tests check both against a naive
    per-token loop, values and gradients:

    * ``"grouped_mm"``: one ``F.grouped_mm`` per matrix, with ``offs = cumsum(counts)``: no padding, no
      Python loop. Biases are added as ``one_hot(expert_of_row) @ b`` (``grouped_mm``'s own ``bias``
      argument is not differentiable, and gathering ``b[expert_of_row]`` has a scatter-add backward
      onto E rows that took longer than the GEMMs on CPU).
    * ``"loop"``: ``unbind`` the stacked weights *once* and loop over experts with non-empty rows.
      Unbinding outside the loop matters: indexing ``w1[e]`` inside it makes the backward build E
      full-size ``[E, d, h]`` gradient buffers, ``O(E^2 d h)`` work.
    * ``"auto"`` (default) takes ``grouped_mm`` wherever ``grouped_mm_available`` says the kernel
      accepts the device, dtype and widths, and the loop everywhere else: any width, any dtype, any
      device, and ``torch.compile`` in fp32.
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        d_hidden: int,
        *,
        activation: str = "gelu",
        bias: bool = True,
        backend: ExpertBackend = "auto",
    ):
        super().__init__()
        if backend not in ("auto", "grouped_mm", "loop"):
            raise ValueError(f"unknown expert backend {backend!r}")
        self.num_experts, self.d_model, self.d_hidden = num_experts, d_model, d_hidden
        self.activation, self.backend = activation, backend
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, d_hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_hidden, d_model))
        self.b1 = nn.Parameter(torch.empty(num_experts, d_hidden)) if bias else None
        self.b2 = nn.Parameter(torch.empty(num_experts, d_model)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        for w, b, fan_in in ((self.w1, self.b1, self.d_model), (self.w2, self.b2, self.d_hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    @torch.no_grad()
    def copy_from_dense(self, ffn: FeedForward) -> None:
        """Upcycling (Komatsuzaki et al. 2022; DeepSpeed ``Experts`` deep-copies the dense MLP E times)."""
        self.w1.copy_(ffn.fc1.weight.T.expand_as(self.w1))
        self.w2.copy_(ffn.fc2.weight.T.expand_as(self.w2))
        if self.b1 is not None:
            self.b1.copy_(ffn.fc1.bias.expand_as(self.b1))
            self.b2.copy_(ffn.fc2.bias.expand_as(self.b2))

    def choose_backend(self, x: Tensor) -> str:
        if self.backend == "auto":
            return "grouped_mm" if grouped_mm_available(x, self.d_hidden) else "loop"
        if self.backend == "grouped_mm" and not grouped_mm_available(x, self.d_hidden):
            raise ValueError(f"grouped_mm cannot run here ({x.device.type}, {x.dtype}, widths {self.d_model} "
                             f"and {self.d_hidden}): use backend='auto' or 'loop'")
        return self.backend

    def forward(self, x: Tensor, counts: Tensor, expert_of_row: Tensor | None = None) -> Tensor:
        """``x [N, d]`` expert-contiguous rows, ``counts [E]`` rows per expert, ``expert_of_row [N]``
        (optional: derived from ``counts``) -> ``[N, d]``."""
        if self.choose_backend(x) == "loop":
            return self._loop(x, counts)
        if expert_of_row is None:
            expert_of_row = torch.repeat_interleave(torch.arange(self.num_experts, device=x.device), counts)
        return _ContiguousGrad.apply(self._grouped_mm(x.contiguous(), counts, expert_of_row))

    def _grouped_mm(self, x: Tensor, counts: Tensor, expert_of_row: Tensor) -> Tensor:
        act = ACTIVATIONS[self.activation]
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = F.grouped_mm(x, self.w1, offs=offs)
        if self.b1 is not None:
            # per-row bias as a one-hot [N, E] @ [E, h] GEMM (its backward is a GEMM too)
            one_hot = F.one_hot(expert_of_row, self.num_experts).to(x.dtype)
            h = h.addmm_(one_hot, self.b1)  # in place: grouped_mm's backward needs x, not h
        y = F.grouped_mm(act(h), self.w2, offs=offs)
        return y.addmm_(one_hot, self.b2) if self.b2 is not None else y

    def _loop(self, x: Tensor, counts: Tensor) -> Tensor:
        act = ACTIVATIONS[self.activation]
        w1, w2 = self.w1.unbind(0), self.w2.unbind(0)
        b1 = self.b1.unbind(0) if self.b1 is not None else [None] * self.num_experts
        b2 = self.b2.unbind(0) if self.b2 is not None else [None] * self.num_experts
        outs = []
        for e, xe in enumerate(x.split(counts.tolist())):
            if xe.shape[0] == 0:
                continue
            he = act(torch.addmm(b1[e], xe, w1[e]) if b1[e] is not None else xe @ w1[e])
            outs.append(torch.addmm(b2[e], he, w2[e]) if b2[e] is not None else he @ w2[e])
        if not outs:  # no rows: an empty result that still belongs to x's graph, so backward() works
            return x @ x.new_zeros(self.d_model, self.d_model)
        return torch.cat(outs)


# ----------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------


def load_balancing_loss(
    router_probs: Tensor, expert_index: Tensor, num_experts: int, *, count: Literal["first", "all"] = "first"
) -> Tensor:
    """Switch / GShard load-balancing loss ``E * sum_i f_i P_i``.

    ``P_i`` is the mean router probability of expert i over the tokens (carries the gradient) and ``f_i``
    the fraction of assignments whose expert is i (a hard count, no gradient), counted *before* capacity
    dropping. ``count="first"`` counts only each token's first choice, as DeepSpeed's top1/top2gating
    (``l_aux = mean(me * ce) * E * E``, MoE-LLaVA), Switch and GShard do; ``count="all"`` counts all k
    choices with ``f`` normalised by ``T * k`` (MegaBlocks, DeepSpeed ``topkgating``).
    Value: exactly 1 when ``f`` or ``P`` is uniform; ``E`` when every token picks the same expert with
    probability 1 (``count="first"``).

    An empty batch (``T = 0``, e.g. a rank's empty micro-batch) gives 0, still attached to the graph,
    instead of the 0/0 of the formula, so that summing the losses of micro-batches stays finite.

    Args:
        router_probs: ``[T, E]`` softmax probabilities.
        expert_index: ``[T, k]`` chosen experts, first choice in column 0.
    """
    if router_probs.shape[0] == 0:
        return router_probs.sum()
    chosen = expert_index[:, :1] if count == "first" else expert_index
    f = torch.bincount(chosen.reshape(-1), minlength=num_experts).to(router_probs.dtype) / chosen.numel()
    P = router_probs.mean(dim=0)
    return num_experts * torch.sum(f * P)


def router_z_loss(router_logits: Tensor) -> Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5): ``mean_s (logsumexp_j z_sj)^2``; ``(ln E)^2`` at
    zero logits. It penalises large logits, which make the fp32/bf16 softmax unstable. 0 for no tokens."""
    if router_logits.shape[0] == 0:
        return router_logits.float().sum()
    return torch.logsumexp(router_logits.float(), dim=-1).square().mean()


# ----------------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------------


@dataclass
class DropReport:
    """Who lost what to capacity, by modality: the table the notebooks print.

    ``M`` modality groups (one group when the caller passes none); indexes are modality ids.
    """

    assigned: Tensor  # [M, E] long: choices made (before capacity) by tokens of modality m for expert e
    dropped: Tensor  # [M, E] long: of those, the ones that found expert e's buffer full
    dropped_by_rank: Tensor  # [M, k] long: dropped first choices, second choices, ...
    tokens: Tensor  # [M] long: tokens of each modality
    tokens_fully_dropped: Tensor  # [M] long: tokens that lost every choice (only the residual carries them)

    @classmethod
    def from_routing(cls, routing: Routing, modality: Tensor | None = None, num_modalities: int | None = None):
        T, k = routing.expert_index.shape
        E = routing.num_experts
        modality = torch.zeros(T, dtype=torch.long, device=routing.keep.device) if modality is None else modality
        M = num_modalities or (int(modality.max()) + 1 if T else 1)
        cell = (modality.unsqueeze(-1) * E + routing.expert_index).reshape(-1)  # [T*k] (modality, expert) cell
        lost = ~routing.keep
        assigned = torch.bincount(cell, minlength=M * E).view(M, E)
        dropped = torch.bincount(cell[lost.reshape(-1)], minlength=M * E).view(M, E)
        rank_cell = (modality.unsqueeze(-1) * k + torch.arange(k, device=modality.device)).reshape(-1)
        dropped_by_rank = torch.bincount(rank_cell[lost.reshape(-1)], minlength=M * k).view(M, k)
        tokens = torch.bincount(modality, minlength=M)
        fully = torch.bincount(modality[lost.all(-1)], minlength=M)
        return cls(assigned, dropped, dropped_by_rank, tokens, fully)


@dataclass
class MoEOutput:
    output: Tensor  # same shape as the input
    router_logits: Tensor  # [T, E] fp32
    routing: Routing  # expert_index, gates, keep, position, capacity, router_probs
    expert_counts: Tensor  # [E] long: assignments kept per expert
    dropped: int  # token-expert assignments dropped by capacity
    aux_losses: dict[str, Tensor]  # "load_balance" (E sum f P) and "z_loss", uncoefficiented
    drops: DropReport | None = None  # per modality and expert, when ``forward`` got ``modality``


class SparseMoE(nn.Module):
    """Token-choice top-k MoE over FFN experts, DeepSpeed/MoE-LLaVA semantics by default.

    Args:
        d_model, d_hidden: expert FFN widths ``d -> h -> d``.
        num_experts: ``E`` routed experts (MoE-LLaVA: 4).
        top_k: ``k`` (MoE-LLaVA: 2).
        capacity_factor: training capacity factor; None is dropless (MoE-LLaVA: 1.5).
        renormalize: see ``route`` (DeepSpeed top-2: True; for k = 1 the gate is always the raw p).
        eval_capacity_factor: capacity factor when ``self.training`` is False; ``"same"`` (default) uses
            ``capacity_factor``. MoE-LLaVA: 2.0 (``train.py``), dropless for E=4, k=2.
        min_capacity: see ``route`` (MoE-LLaVA: 0).
        normalize_before_drop: see ``route`` (Tutel: True; DeepSpeed: False).
        priority: ``"position"`` (DeepSpeed top-2), ``"batch"`` (V-MoE Batch Priority Routing) or
            ``"random"`` (DeepSpeed top-1's random token selection).
        second_expert_sampling: ``"off"`` (default, deterministic), ``"train"`` (Gumbel-sample choices
            2..k only in training) or ``"always"`` (DeepSpeed v0.9.5: also at evaluation).
        capacity_arithmetic: ``"float32"`` (DeepSpeed, default) or ``"exact"``; see ``expert_capacity``.
        num_shared_experts: ``K_s`` always-on experts beside the routed ones (DeepSeekMoE, arXiv
            2401.06066, eq. 9: ``h = x + sum_{i<=K_s} FFN_i(x) + sum_routed g_i FFN_i(x)``). They are one
            ``FeedForward`` of width ``K_s * d_hidden``, as the official ``modeling_deepseek.py`` builds
            them: the sum of ``K_s`` FFNs equals one FFN with their hidden units side by side. They do not
            enter the router's softmax. DeepSeekMoE pairs them with ``renormalize=False`` (16B config
            ``norm_topk_prob: false``), which is not the default here.
        activation, bias: the expert FFN's (and ``FeedForward``'s).
        expert_backend: see ``Experts``.
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        num_experts: int,
        top_k: int,
        capacity_factor: float | None = None,
        renormalize: bool = True,
        *,
        eval_capacity_factor: float | None | Literal["same"] = "same",
        min_capacity: int = 0,
        normalize_before_drop: bool = False,
        priority: Priority = "position",
        second_expert_sampling: SecondExpertSampling = "off",
        capacity_arithmetic: CapacityArithmetic = "float32",
        num_shared_experts: int = 0,
        activation: str = "gelu",
        bias: bool = True,
        expert_backend: ExpertBackend = "auto",
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        if second_expert_sampling not in ("off", "train", "always"):
            raise ValueError(f"unknown second_expert_sampling {second_expert_sampling!r}")
        self.num_experts, self.top_k = num_experts, top_k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = capacity_factor if eval_capacity_factor == "same" else eval_capacity_factor
        self.renormalize, self.normalize_before_drop = renormalize, normalize_before_drop
        self.min_capacity, self.priority = min_capacity, priority
        self.second_expert_sampling = second_expert_sampling
        self.capacity_arithmetic = capacity_arithmetic
        self.router = nn.Linear(d_model, num_experts, bias=False)  # DeepSpeed TopKGate.wg
        self.experts = Experts(
            num_experts, d_model, d_hidden, activation=activation, bias=bias, backend=expert_backend
        )
        self.shared = (
            FeedForward(d_model, num_shared_experts * d_hidden, activation=activation, bias=bias)
            if num_shared_experts else None
        )

    @classmethod
    def from_dense(cls, ffn: FeedForward, num_experts: int, top_k: int, **kwargs) -> "SparseMoE":
        """Sparse upcycling: every expert starts as a copy of ``ffn``; the router is freshly initialised
        (MoE-LLaVA stage 3). With renormalised gates and no drops the output equals ``ffn(x)``."""
        moe = cls(
            ffn.fc1.in_features,
            ffn.fc1.out_features,
            num_experts,
            top_k,
            activation=ffn.activation,
            bias=ffn.fc1.bias is not None,
            **kwargs,
        )
        moe.experts.copy_from_dense(ffn)
        return moe.to(device=ffn.fc1.weight.device, dtype=ffn.fc1.weight.dtype).train(ffn.training)

    def forward(self, x: Tensor, modality: Tensor | None = None, num_modalities: int | None = None) -> MoEOutput:
        """``x [..., d]``; ``modality`` (optional, same leading shape, long ids) fills ``drops``."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        # fp32 router, as DeepSpeed (TopKGate casts input and wg to float32).
        router_logits = F.linear(x.float(), self.router.weight.float())
        sample = self.second_expert_sampling == "always" or (
            self.second_expert_sampling == "train" and self.training
        )
        routing = route(
            router_logits,
            self.top_k,
            self.capacity_factor if self.training else self.eval_capacity_factor,
            min_capacity=self.min_capacity,
            renormalize=self.renormalize,
            normalize_before_drop=self.normalize_before_drop,
            priority=self.priority,
            sample_second_expert=sample,
            capacity_arithmetic=self.capacity_arithmetic,
        )
        dispatch = sort_by_expert(routing.expert_index, routing.keep, self.num_experts)
        expert_out = self.experts(x.index_select(0, dispatch.token_index), dispatch.counts, dispatch.expert_of_row)
        y = combine_by_token(expert_out, dispatch, routing.gates, x.shape[0])
        if self.shared is not None:
            y = y + self.shared(x)
        aux = {
            "load_balance": load_balancing_loss(routing.router_probs, routing.expert_index, self.num_experts),
            "z_loss": router_z_loss(router_logits),
        }
        dropped = routing.expert_index.numel() - int(dispatch.assignment.numel())
        drops = None
        if modality is not None:
            drops = DropReport.from_routing(routing, modality.reshape(-1), num_modalities)
        return MoEOutput(y.reshape(shape), router_logits, routing, dispatch.counts, dropped, aux, drops)


# ----------------------------------------------------------------------------------------------------
# The routing family: experts choose tokens (Expert Choice), and slots mix tokens (Soft MoE)
# ----------------------------------------------------------------------------------------------------


@dataclass
class ExpertChoiceOutput:
    output: Tensor  # same shape as the input
    router_probs: Tensor  # [T, E] fp32 softmax over experts, per token
    token_index: Tensor  # [E, C] long: the tokens each expert chose, best first
    gates: Tensor  # [E, C] fp32: their router probabilities, the combine weights
    experts_per_token: Tensor  # [T] long: how many experts chose each token (0 = only the residual)


class ExpertChoiceMoE(nn.Module):
    """Expert Choice routing (Zhou et al. 2022, arXiv 2202.09368): each expert picks its top-C tokens.

    ``S = softmax(X W_g)`` over experts for each token (``[T, E]``); expert e takes the ``C`` tokens with
    the largest ``S[:, e]`` (``G, I = TopK(S^T, C)``), runs its FFN on them, and token t receives
    ``sum_{(e, j): I[e, j] = t} G[e, j] * FFN_e(x_t)``. Every expert is exactly full, so no balance loss
    is needed (the paper and flaxformer's ``ExpertsChooseMaskedRouter`` use none); in exchange a token
    may get several experts or none, and routing depends on the whole group and on future tokens: not
    for causal decoders.

    Args:
        d_model, d_hidden, num_experts: as ``SparseMoE``.
        capacity_factor: ``c`` in ``C = round(c * T / E)``; the paper's default is 2 ("in most
            experiments"), flaxformer rounds and floors at ``min_capacity = 4`` (``moe_layers.py``).
        min_capacity: see above; capped at ``T``.
        activation, bias, expert_backend: as ``SparseMoE``.
    """

    def __init__(self, d_model: int, d_hidden: int, num_experts: int, *, capacity_factor: float = 2.0,
                 min_capacity: int = 4, activation: str = "gelu", bias: bool = True,
                 expert_backend: ExpertBackend = "auto"):
        super().__init__()
        self.num_experts, self.capacity_factor, self.min_capacity = num_experts, capacity_factor, min_capacity
        self.router = nn.Linear(d_model, num_experts, bias=False)
        self.experts = Experts(num_experts, d_model, d_hidden, activation=activation, bias=bias, backend=expert_backend)

    def capacity(self, num_tokens: int) -> int:
        return min(max(round(self.capacity_factor * num_tokens / self.num_experts), self.min_capacity), num_tokens)

    def forward(self, x: Tensor) -> ExpertChoiceOutput:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        T, E = x.shape[0], self.num_experts
        router_probs = torch.softmax(F.linear(x.float(), self.router.weight.float()), dim=-1)  # S [T, E]
        C = self.capacity(T)
        gates, token_index = router_probs.T.topk(C, dim=-1)  # G, I = TopK(S^T, C): [E, C]
        rows = token_index.reshape(-1)  # expert-contiguous already: expert e owns rows e*C .. (e+1)*C-1
        counts = torch.full((E,), C, dtype=torch.long, device=x.device)
        expert_of_row = torch.arange(E, device=x.device).repeat_interleave(C)
        expert_out = self.experts(x.index_select(0, rows), counts, expert_of_row)
        weighted = expert_out * gates.reshape(-1, 1).to(expert_out.dtype)
        y = expert_out.new_zeros(T, shape[-1]).index_add(0, rows, weighted)
        per_token = torch.bincount(rows, minlength=T)
        return ExpertChoiceOutput(y.reshape(shape), router_probs, token_index, gates, per_token)


@dataclass
class SoftMoEOutput:
    output: Tensor  # [B, m, d]
    dispatch: Tensor  # [B, m, n*p] softmax over tokens (each slot's column sums to 1)
    combine: Tensor  # [B, m, n*p] softmax over all slots (each token's row sums to 1)


class SoftMoE(nn.Module):
    """Soft MoE (Puigcerver et al., ICLR 2024, arXiv 2308.00951): slots are convex combinations of tokens.

    For one group of ``m`` tokens ``X [m, d]`` and slot parameters ``Phi [d, n*p]`` (``n`` experts, ``p``
    slots each): logits ``L = X Phi``; dispatch ``D = softmax over tokens of L`` (each slot averages the
    tokens); slot inputs ``X~ = D^T X``; expert i processes its own p slots; combine
    ``C = softmax over all n*p slots of L`` (each token averages all slot outputs); ``Y = C Y~``. Nothing
    is dropped and everything is differentiable; no auxiliary loss (the official router returns 0).
    Each group is one sequence: the input is ``[B, m, d]`` and groups never mix.

    Follows ``google-research/vmoe: vmoe/projects/soft_moe/router.py``: tokens and slot vectors are
    l2-normalised over d (``x / sqrt(|x|^2 + 1e-6)``) and a learned scalar ``scale`` (init 1) multiplies
    the logits. The paper presents normalisation as needed for large models; ``normalize=False`` gives
    the plain ``L = X Phi``. Defaults from ``configs/common.py``: one slot per expert, ``Phi`` lecun-normal.

    Args:
        d_model, d_hidden, num_experts: as ``SparseMoE``.
        slots_per_expert: ``p`` (default 1).
        normalize: l2-normalise tokens and slots, with the learned ``scale`` (default True, as the code).
        activation, bias, expert_backend: as ``SparseMoE``.
    """

    def __init__(self, d_model: int, d_hidden: int, num_experts: int, *, slots_per_expert: int = 1,
                 normalize: bool = True, activation: str = "gelu", bias: bool = True,
                 expert_backend: ExpertBackend = "auto"):
        super().__init__()
        self.num_experts, self.slots_per_expert, self.normalize = num_experts, slots_per_expert, normalize
        self.slots = nn.Parameter(torch.randn(d_model, num_experts * slots_per_expert) / math.sqrt(d_model))
        self.scale = nn.Parameter(torch.ones(()))
        self.experts = Experts(num_experts, d_model, d_hidden, activation=activation, bias=bias, backend=expert_backend)

    def logits(self, x: Tensor) -> Tensor:
        """``[B, m, d] -> [B, m, n*p]`` in fp32."""
        x, phi = x.float(), self.slots.float()
        if self.normalize:
            x = x * torch.rsqrt(x.square().sum(-1, keepdim=True) + 1e-6)
            phi = self.scale * phi * torch.rsqrt(phi.square().sum(0, keepdim=True) + 1e-6)
        return x @ phi

    def forward(self, x: Tensor) -> SoftMoEOutput:
        B, m, d = x.shape
        n, p = self.num_experts, self.slots_per_expert
        logits = self.logits(x)
        dispatch = torch.softmax(logits, dim=1)  # over tokens: column s is slot s's convex weights
        combine = torch.softmax(logits, dim=2)  # over all n*p slots jointly
        slot_in = dispatch.transpose(1, 2).to(x.dtype) @ x  # X~ = D^T X: [B, n*p, d]
        # expert-contiguous rows: expert i owns slots i*p .. (i+1)*p - 1 of every group
        rows = slot_in.view(B, n, p, d).transpose(0, 1).reshape(n * B * p, d)
        counts = torch.full((n,), B * p, dtype=torch.long, device=x.device)
        slot_out = self.experts(rows, counts).view(n, B, p, d).transpose(0, 1).reshape(B, n * p, d)
        return SoftMoEOutput(combine.to(x.dtype) @ slot_out, dispatch, combine)


__all__ = [
    "ACTIVATIONS",
    "Dispatch",
    "DropReport",
    "ExpertChoiceMoE",
    "ExpertChoiceOutput",
    "SoftMoE",
    "SoftMoEOutput",
    "ExpertBackend",
    "Experts",
    "FeedForward",
    "MoEOutput",
    "Routing",
    "SparseMoE",
    "combine_by_token",
    "expert_capacity",
    "grouped_mm_available",
    "load_balancing_loss",
    "route",
    "router_z_loss",
    "sort_by_expert",
]
