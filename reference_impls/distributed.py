"""Expert parallelism: the experts of a ``SparseMoE`` sharded over the ranks of a ``torch.distributed`` group.

What the systems do
-------------------
When the experts no longer fit on one device, each of ``W`` ranks keeps ``E / W`` of them (GShard,
Lepikhin et al. 2020, sec. 2.2; DeepSpeed-MoE; MegaBlocks, Gale et al. 2022) and the *tokens* travel
instead of the weights. Every rank routes its own micro-batch, sends each kept (token, expert) row to
the rank that owns the expert, the experts run on what they received, and the results travel back to
the rank the token came from, where they are combined with the gates. The two exchanges are
``all_to_all`` collectives: rank ``r`` sends chunk ``s`` of its buffer to rank ``s`` and receives chunk
``r`` of every other rank's buffer.

Layout and the exchange (MegaBlocks' ``parallel_forward_once`` pattern, ``megablocks/layers/moe.py``)
--------------------------------------------------------------------------------------------------
Experts are sharded contiguously: rank ``r`` owns experts ``r*E_local .. (r+1)*E_local - 1`` with
``E_local = E / W``. The core's ``sort_by_expert`` already orders the rows by expert, so rows for rank 0
come first, then rank 1, and so on: the send buffer needs no further permutation.

1. **Counts first.** ``counts [E]`` (rows this rank sends to each expert) go through an equal-split
   ``all_to_all_single`` of ``E_local`` integers per rank. Rank ``r`` receives ``recv_counts [W, E_local]``:
   ``recv_counts[s, j]`` rows from rank ``s`` for its local expert ``j``. This is the only way a rank can
   learn how many rows it will receive, i.e. the output sizes of the next collective.
2. **Tokens, uneven splits.** ``all_to_all_single`` with ``input_split_sizes = counts.view(W, E_local).sum(1)``
   and ``output_split_sizes = recv_counts.sum(1)``. Dropless routing needs this: the number of rows per
   rank depends on the routing. (DeepSpeed instead pads every expert to capacity ``C`` and sends equal
   ``[E, C, d]`` buffers, ``deepspeed/moe/sharded_moe.py::_AllToAll``; padding costs bandwidth, see
   docs/impls/distributed.md.)
3. Received rows are grouped by (source rank, local expert); a stable sort by local expert makes them
   expert-contiguous for the core's ``Experts`` (one ``grouped_mm`` per matrix), and the inverse
   permutation restores the received order.
4. **Reverse exchange** with the split lists swapped, back into the sender's expert-sorted order, where
   the core's ``combine_by_token`` adds the gate-weighted rows per token.

Both token exchanges are differentiable through ``AllToAll``, whose backward is the same collective with
the split lists swapped (MegaBlocks ``megablocks/layers/all_to_all.py::AllToAllOp``).
``torch.distributed.nn.functional.all_to_all_single`` does the same but is deprecated in torch 2.13.

What is reused from the core
----------------------------
Everything but the experts: ``ExpertParallelMoE`` *is* a ``reference_impls.moe.SparseMoE`` whose
``experts`` attribute is an ``ExpertParallelExperts``, a drop-in ``Experts`` with the same call signature
(expert-sorted rows and ``counts [E]`` in, rows in the same order out). Routing (``route``), dispatch
(``sort_by_expert``), combine (``combine_by_token``) and the losses run unchanged in
``SparseMoE.forward``. Hence: **the layer's output on rank r is exactly ``SparseMoE(x_r)``** with the same
weights (tests/impls/test_distributed.py checks outputs and gradients at W = 2 and 4).

Capacity and dropping with several ranks: routing groups are per rank
---------------------------------------------------------------------
Each rank routes its own micro-batch, as DeepSpeed does (``TopKGate`` gates the rank's local tokens before
``_AllToAll``): the capacity is ``C = max(ceil(k * cf * T_r / E), min_capacity)`` over the ``T_r`` tokens of
rank ``r``, position/batch priority ranks those tokens only, and the drop decision is made by the
*sending* rank before anything is exchanged. So expert ``e`` receives at most ``C`` rows from each rank,
``W * C`` in total, and the result on rank ``r`` equals the single-process ``SparseMoE`` applied to
``x_r`` alone, *not* to the concatenation of all ranks' tokens. With a binding capacity these differ
(capacity is batch-dependent, research notes sec. 11 item 8); in dropless mode they are identical.
The auxiliary losses in ``aux_losses`` are likewise those of rank ``r``'s tokens (DeepSpeed's ``l_aux``
is per rank too); averaged over ranks by ``sync_gradients(average=True)`` they train the router like
DeepSpeed under data parallelism.

Gradients
---------
After ``backward`` an expert shard holds the gradient from *every* rank's tokens (the reverse
all-to-all brought it home), while the replicated parameters (router, and any dense layer of the model)
hold only their own rank's contribution. ``sync_gradients`` all-reduces the replicated ones and leaves
the shards alone; ``average=True`` then divides both by ``W``, which gives every parameter the gradient
of ``mean_r L_r`` (what DDP gives a dense model); ``average=False`` gives that of ``sum_r L_r``.
Do not wrap the model in ``DistributedDataParallel`` as is: DDP would average the gradients of
*different* experts with each other (DeepSpeed excludes expert parameters from the data-parallel
all-reduce for this reason). Only pure expert parallelism is covered (the expert-parallel group is the
data-parallel group); replicating each shard over several groups (EP x DP) is not.

Collectives in backward
-----------------------
Backward runs two all-to-alls per layer, and a collective must be entered by every rank of the group.
Two cases would otherwise leave one rank out and hang the others: a rank whose input does not require
grad (its first exchange would have no backward node) and a rank that received no rows (the core's
expert loop returns a fresh, disconnected empty tensor). Both are handled below. The remaining
requirement is the usual one: every rank calls ``forward`` the same number of times and runs
``backward`` on a loss that depends on every MoE output, or none does.

Shapes: ``T`` tokens on this rank (flattened), ``d`` model width, ``E`` experts in all, ``W`` ranks,
``E_local = E / W``, ``N`` rows this rank sends, ``M`` rows it receives.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from reference_impls.moe import Experts, SparseMoE


# ----------------------------------------------------------------------------------------------------
# Differentiable all-to-all
# ----------------------------------------------------------------------------------------------------


class AllToAll(torch.autograd.Function):
    """``all_to_all_single`` along dim 0 with uneven splits; backward is the reverse exchange.

    Rows ``sum(send_splits[:s]) : sum(send_splits[:s+1])`` of ``x`` go to rank ``s``; the output holds the
    rows received from rank 0, then rank 1, ... (``recv_splits`` of each). The gradient of a received row
    belongs to the rank that sent it, so backward sends ``grad`` with the two split lists swapped.
    """

    @staticmethod
    def forward(ctx, x: Tensor, recv_splits: list[int], send_splits: list[int], group) -> Tensor:
        ctx.recv_splits, ctx.send_splits, ctx.group = recv_splits, send_splits, group
        out = x.new_empty((sum(recv_splits), *x.shape[1:]))
        dist.all_to_all_single(
            out, x.contiguous(), output_split_sizes=recv_splits, input_split_sizes=send_splits, group=group
        )
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Always run the collective, even if this rank's input needs no gradient: the other ranks are
        # waiting for the rows this rank sends back (MegaBlocks skips it when needs_input_grad is False,
        # which is only safe if every rank skips).
        return AllToAll.apply(grad.contiguous(), ctx.send_splits, ctx.recv_splits, ctx.group), None, None, None


def all_to_all(x: Tensor, recv_splits: list[int], send_splits: list[int], group=None) -> Tensor:
    """Differentiable uneven all-to-all of the rows of ``x`` (see ``AllToAll``)."""
    return AllToAll.apply(x, recv_splits, send_splits, group)


def exchange_counts(counts: Tensor, group=None) -> Tensor:
    """Counts first: ``counts [E]`` rows this rank sends to each expert -> ``[W, E_local]`` rows this
    rank's experts receive from each rank (``recv[s, j] = counts_on_rank_s[rank * E_local + j]``, research
    notes sec. 11 item 28). One equal-split ``all_to_all_single`` of ``E_local`` integers per rank, as
    MegaBlocks exchanges ``tokens_per_expert``."""
    world = dist.get_world_size(group)
    recv = torch.empty_like(counts)
    dist.all_to_all_single(recv, counts.contiguous(), group=group)
    return recv.view(world, -1)


# ----------------------------------------------------------------------------------------------------
# Sharded experts: a drop-in Experts
# ----------------------------------------------------------------------------------------------------


class ExpertParallelExperts(Experts):
    """This rank's ``E / W`` experts, called like the core's ``Experts`` with all ``E`` experts' rows.

    The parameters are this rank's slices of the single-process ``w1 [E, d, h]``, ``w2 [E, h, d]``,
    ``b1``, ``b2`` under the same names (``experts.w1`` is rows ``first_expert : first_expert + E_local``),
    so a rank's state dict is its shard of the single-process one.

    Args:
        num_experts: ``E``, all experts (divisible by the group's world size).
        d_model, d_hidden, activation, bias, backend: as ``Experts``.
        group: the expert-parallel process group (None: the default group).
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        d_hidden: int,
        *,
        group=None,
        activation: str = "gelu",
        bias: bool = True,
        backend: Literal["auto", "grouped_mm", "loop"] = "auto",
    ):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if num_experts % world:
            raise ValueError(f"num_experts={num_experts} is not divisible by the world size {world}")
        super().__init__(num_experts // world, d_model, d_hidden, activation=activation, bias=bias, backend=backend)
        self.group, self.world_size = group, world
        self.num_global_experts = num_experts
        self.first_expert = rank * self.num_experts
        self.recv_counts: Tensor | None = None  # [W, E_local] of the last forward, for inspection

    @classmethod
    @torch.no_grad()
    def shard(cls, experts: Experts, group=None) -> "ExpertParallelExperts":
        """This rank's shard of a single-process ``Experts`` (same dtype and device)."""
        b = experts.b1 is not None
        # The shard's own initialisation is overwritten below; fork the CPU RNG so that it leaves the
        # caller's random stream as building the single-process module left it. (Building on the meta
        # device would avoid the work but imports sympy on first use, 3 s.)
        with torch.random.fork_rng(devices=[]):
            out = cls(
                experts.num_experts, experts.d_model, experts.d_hidden,
                group=group, activation=experts.activation, bias=b, backend=experts.backend,
            )
        out = out.to(device=experts.w1.device, dtype=experts.w1.dtype)
        mine = slice(out.first_expert, out.first_expert + out.num_experts)
        for name in ("w1", "w2", "b1", "b2") if b else ("w1", "w2"):
            getattr(out, name).copy_(getattr(experts, name)[mine])
        return out

    def forward(self, x: Tensor, counts: Tensor, expert_of_row: Tensor | None = None) -> Tensor:
        """``x [N, d]`` rows sorted by global expert, ``counts [E]`` -> ``[N, d]`` expert outputs, same order.
        ``expert_of_row`` (global ids) is not needed: the receiver rebuilds its own from the counts."""
        W, E_local = self.world_size, self.num_experts
        if counts.numel() != W * E_local:
            raise ValueError(f"counts has {counts.numel()} experts, expected {W * E_local}")
        # 1. counts first: how many rows arrive from each rank, for each local expert.
        recv_counts = exchange_counts(counts, self.group)  # [W, E_local]
        self.recv_counts = recv_counts
        # Host sync: the split sizes are Python ints (they set the shapes), as in MegaBlocks.
        send_splits = counts.view(W, E_local).sum(1).tolist()
        recv_splits = recv_counts.sum(1).tolist()

        if torch.is_grad_enabled() and not x.requires_grad:
            # A leaf that requires grad keeps this rank's backward all-to-all in the graph: the other
            # ranks' gradients for the rows this rank's experts computed must be sent back from here.
            x = x.detach().requires_grad_()
        # 2. tokens: rows sorted by global expert are already grouped by destination rank.
        received = all_to_all(x, recv_splits, send_splits, self.group)  # [M, d], by (source rank, expert)

        if received.shape[0] == 0:
            # Nothing to compute. Pass the empty tensor itself on, so that the reverse exchange stays in
            # the autograd graph (the core's loop would return a fresh, disconnected empty tensor).
            out = received
        else:
            # 3. local sort: group the rows by local expert for the grouped GEMM, then undo it.
            local_expert = torch.arange(E_local, device=x.device).repeat(W).repeat_interleave(recv_counts.reshape(-1))
            sorted_expert, order = local_expert.sort(stable=True)
            y = super().forward(received.index_select(0, order), recv_counts.sum(0), sorted_expert)
            out = y.index_select(0, torch.argsort(order))
        # 4. send the results back to the ranks the rows came from, in their expert-sorted order.
        return all_to_all(out, send_splits, recv_splits, self.group)


# ----------------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------------


class ExpertParallelMoE(SparseMoE):
    """``SparseMoE`` with its experts sharded over ``group``; same arguments plus ``group``.

    Construction is a collective: every rank of ``group`` builds the module. Each rank initialises the
    whole single-process module, keeps its expert shard and frees the rest, and the router is broadcast
    from the group's first rank (as DDP does for replicated parameters). So, with the same seed on every
    rank, the shards are exactly those of ``SparseMoE(...)`` built from that seed, and the router is
    identical everywhere whatever the seeds. (A model too large for one device would instead be built on
    the ``meta`` device and load each rank's shard from a checkpoint.)

    ``forward(x)`` takes this rank's micro-batch ``x [..., d]`` and returns the core's ``MoEOutput`` for it;
    ``expert_counts`` counts the rows this rank *sent* per global expert, and ``experts.recv_counts`` the
    rows its experts *received*. See the module docstring for capacity semantics (per-rank routing
    groups) and for ``sync_gradients``.
    """

    def __init__(self, *args, group=None, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            # The module is built on the CPU; NCCL only moves CUDA tensors.
            on_nccl = dist.get_backend(group) == "nccl"
            weight = self.router.weight.to(torch.cuda.current_device()) if on_nccl else self.router.weight
            dist.broadcast(weight, group=group, group_src=0)
            self.router.weight.copy_(weight)
        self.experts = ExpertParallelExperts.shard(self.experts, group)


@torch.no_grad()
def sync_gradients(model: nn.Module, group=None, *, average: bool = True) -> None:
    """Data-parallel gradient reduction for a model holding ``ExpertParallelExperts``.

    Replicated parameters (everything outside the expert shards) are all-reduced (summed) over
    ``group``; expert shards already hold every rank's contribution and are left as they are. With
    ``average=True`` all gradients are then divided by ``W``, i.e. they are the gradients of the mean of
    the ranks' losses, like DDP's; ``average=False`` gives those of the sum. A replicated parameter
    without a gradient on this rank takes part with zeros (the all-reduce needs every rank).
    """
    world = dist.get_world_size(group)
    sharded = {id(p) for m in model.modules() if isinstance(m, ExpertParallelExperts) for p in m.parameters()}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) not in sharded:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, group=group)
        if average and p.grad is not None:
            p.grad.div_(world)


__all__ = [
    "AllToAll",
    "ExpertParallelExperts",
    "ExpertParallelMoE",
    "all_to_all",
    "exchange_counts",
    "sync_gradients",
]
