"""Expert parallelism (reference_impls/distributed.py) against the single-process SparseMoE.

Research notes sec. 11 items 27-28 and sec. 12.4: with the experts sharded over W ranks and tokens exchanged
by all-to-all, outputs and gradients equal the single-process module with the same weights, and the counts
a rank receives equal the counts the other ranks send to its experts.

W = 2 and W = 4 gloo processes on 127.0.0.1 are started once per world size (a module-scoped fixture);
each runs every scenario and saves its tensors, and the tests compare them here with the single-process
``SparseMoE`` built from the same seed. Routing groups are per rank (see the module docstring), so the
reference applies ``SparseMoE`` to each rank's micro-batch separately and sums the ranks' losses.
"""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reference_impls.distributed import ExpertParallelMoE, sync_gradients
from reference_impls.moe import SparseMoE

D, H, E, K = 8, 16, 8, 2  # d_model a multiple of 4 so that F.grouped_mm runs on CPU
LB, Z = 0.01, 0.001  # aux-loss coefficients in the test loss, so the router also gets their gradients
SEED = 1234

SCENARIOS = {
    "dropless": dict(capacity_factor=None),
    # C = ceil(2 * 0.5 * T_r / 8) = 1 or 2 slots: drops on every rank.
    "capacity": dict(capacity_factor=0.5),
    "capacity_batch_priority": dict(capacity_factor=0.75, priority="batch", normalize_before_drop=True),
    # Every token picks experts 0 and 1, both on rank 0: ranks >= 1 receive no rows at all.
    # (and the experts run as the core's per-expert loop, whose empty output is a fresh tensor).
    "skewed_dropless": dict(capacity_factor=None, skew=True, expert_backend="loop"),
    "skewed_capacity": dict(capacity_factor=1.0, skew=True),
    # Rank 1's input does not require grad (its backward exchange must still run) and gradients are
    # averaged over ranks.
    "frozen_input_averaged": dict(capacity_factor=None, frozen_rank=1, average=True),
}
MODULE_ARGS = ("capacity_factor", "priority", "normalize_before_drop", "expert_backend")


def _tokens_shape(rank: int) -> tuple[int, int, int]:
    return (2, 3 + rank, D)  # uneven micro-batches: 6, 8, 10, 12 tokens


def _data(name: str, world: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(sorted(SCENARIOS).index(name))
    xs = [torch.randn(_tokens_shape(r), generator=g) for r in range(world)]
    # Random upstream gradients: an expanded stride-0 grad (from .sum()) trips grouped_mm's fp32 backward.
    grads = [torch.randn(_tokens_shape(r), generator=g) for r in range(world)]
    if SCENARIOS[name].get("skew"):
        for x in xs:
            x[..., 0] = 3.0
    return xs, grads


def _build(cls, name: str, **extra):
    cfg = SCENARIOS[name]
    torch.manual_seed(SEED)
    moe = cls(D, H, E, K, **{a: cfg[a] for a in MODULE_ARGS if a in cfg}, **extra)
    if cfg.get("skew"):
        with torch.no_grad():  # logit of experts 0, 1 is +15 + O(1), of the others -15 + O(1)
            moe.router.weight[:, 0] = torch.tensor([5.0, 5.0] + [-5.0] * (E - 2))
    return moe.train()


def _loss(out, grad: torch.Tensor) -> torch.Tensor:
    return (out.output * grad).sum() + LB * out.aux_losses["load_balance"] + Z * out.aux_losses["z_loss"]


# ----------------------------------------------------------------------------------------------------
# Worker processes (module level, so that torch.multiprocessing's spawn can import them)
# ----------------------------------------------------------------------------------------------------


def _run_scenario(name: str, rank: int, world: int) -> dict:
    cfg = SCENARIOS[name]
    xs, grads = _data(name, world)
    moe = _build(ExpertParallelMoE, name)
    x = xs[rank].clone().requires_grad_(rank != cfg.get("frozen_rank"))
    out = moe(x)
    _loss(out, grads[rank]).backward()
    sync_gradients(moe, average=cfg.get("average", False))
    return dict(
        output=out.output.detach(),
        x_grad=x.grad,
        router_grad=moe.router.weight.grad,
        expert_grads={n: p.grad for n, p in moe.experts.named_parameters()},
        first_expert=moe.experts.first_expert,
        sent=out.expert_counts,  # [E] rows this rank sent to each expert
        received=moe.experts.recv_counts,  # [W, E_local] rows its experts received from each rank
        dropped=out.dropped,
    )


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A short timeout turns a hang (a collective some rank never enters) into a failure.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        results = {name: _run_scenario(name, rank, world) for name in SCENARIOS}
        torch.manual_seed(rank)  # different seeds: the router must still be rank 0's everywhere
        results["router_seeded_by_rank"] = ExpertParallelMoE(D, H, E, K).router.weight.detach()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"W{w}")
def ranks(request, tmp_path_factory):
    """``(world, [results of rank 0, ..., rank W-1])``, each a dict scenario -> tensors."""
    world = request.param
    out_dir = tmp_path_factory.mktemp(f"ep{world}")
    mp.spawn(_worker, args=(world, _free_port(), str(out_dir)), nprocs=world, join=True)
    return world, [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


def _reference(name: str, world: int):
    """Single-process SparseMoE applied to each rank's micro-batch (per-rank routing groups)."""
    cfg = SCENARIOS[name]
    ref = _build(SparseMoE, name)
    xs, grads = _data(name, world)
    xs = [x.clone().requires_grad_() for x in xs]
    outs = [ref(x) for x in xs]
    total = sum(_loss(o, g) for o, g in zip(outs, grads))
    (total / world if cfg.get("average") else total).backward()
    return ref, xs, outs


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_outputs_and_input_gradients_equal_single_process(ranks, name):
    world, results = ranks
    _, xs, outs = _reference(name, world)
    for r, res in enumerate(results):
        got = res[name]
        _close(got["output"], outs[r].output.detach())
        assert got["dropped"] == outs[r].dropped
        if r == SCENARIOS[name].get("frozen_rank"):
            assert got["x_grad"] is None
        else:
            # sync_gradients averages parameter gradients only; an input gradient is that of the rank's
            # own loss (as under DDP), hence W times the reference's gradient of the mean.
            _close(got["x_grad"], xs[r].grad * (world if SCENARIOS[name].get("average") else 1))


@pytest.mark.parametrize("name", SCENARIOS)
def test_router_and_expert_gradients_equal_single_process(ranks, name):
    world, results = ranks
    ref, _, _ = _reference(name, world)
    e_local = E // world
    for res in results:
        got = res[name]
        _close(got["router_grad"], ref.router.weight.grad)  # replicated: identical on every rank
        mine = slice(got["first_expert"], got["first_expert"] + e_local)
        for pname, full in ref.experts.named_parameters():
            grad = got["expert_grads"][pname]
            # A shard that received no rows has no gradient; the reference's rows there are exactly 0.
            _close(torch.zeros_like(full[mine]) if grad is None else grad, full.grad[mine])
        assert ref.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", SCENARIOS)
def test_counts_exchange(ranks, name):
    """Item 28: rank r receives from rank s exactly what rank s routed to r's experts, and the rows its
    experts computed are everything every rank kept for them."""
    world, results = ranks
    e_local = E // world
    sent = torch.stack([res[name]["sent"] for res in results])  # [W(source), E]
    for r, res in enumerate(results):
        received = res[name]["received"]
        assert received.shape == (world, e_local)
        torch.testing.assert_close(received, sent[:, r * e_local : (r + 1) * e_local], rtol=0, atol=0)
    # Total kept rows are conserved by the exchange.
    assert int(sum(res[name]["received"].sum() for res in results)) == int(sent.sum())


@pytest.mark.parametrize("name", ["skewed_dropless", "skewed_capacity"])
def test_ranks_without_tokens(ranks, name):
    """The skewed scenarios really leave every rank but 0 without rows (so the equality tests above cover
    empty receives), and in capacity mode they really drop."""
    world, results = ranks
    assert int(results[0][name]["received"].sum()) > 0
    for res in results[1:]:
        assert int(res[name]["received"].sum()) == 0
        assert all(g is None for g in res[name]["expert_grads"].values())
    if SCENARIOS[name]["capacity_factor"] is not None:
        assert all(res[name]["dropped"] > 0 for res in results)


def test_capacity_is_per_rank_and_dropless_is_not(ranks):
    """Per-rank routing groups: with a binding capacity the result is SparseMoE on each micro-batch and
    differs from SparseMoE on the concatenated batch; dropless, the two are the same (item 8)."""
    world, results = ranks
    for name, binding in (("capacity", True), ("dropless", False)):
        ep = torch.cat([res[name]["output"].reshape(-1, D) for res in results])
        ref = _build(SparseMoE, name)
        xs, _ = _data(name, world)
        with torch.no_grad():
            whole = ref(torch.cat([x.reshape(-1, D) for x in xs]))
        if binding:
            assert sum(res[name]["dropped"] for res in results) > 0
            assert not torch.allclose(ep, whole.output, rtol=1e-5, atol=1e-6)
        else:
            _close(ep, whole.output)


def test_router_is_broadcast_from_rank_0(ranks):
    _, results = ranks
    torch.manual_seed(0)
    rank0 = SparseMoE(D, H, E, K).router.weight.detach()
    for res in results:
        torch.testing.assert_close(res["router_seeded_by_rank"], rank0, rtol=0, atol=0)
