"""Expert parallelism with reference_impls/distributed.py, end to end.

Run from the repository root (gloo on CPU, NCCL with one GPU per rank):

    torchrun --nproc-per-node 2 examples/expert_parallel.py

Every rank holds E / W of the experts and its own micro-batch. The script

1. runs one forward pass and reports, per rank, how many rows it sends to each rank and how many bytes
   leave the rank, next to the balanced-routing estimate ``k T d b (W - 1) / W`` (docs/impls/distributed.md);
2. trains the expert-parallel layer for a few SGD steps, and in the same processes the single-process
   ``SparseMoE`` built from the same seed on all ranks' micro-batches, and compares the weights.
"""

import os
import pathlib
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root

from reference_impls.distributed import ExpertParallelMoE, sync_gradients  # noqa: E402
from reference_impls.moe import SparseMoE  # noqa: E402

D_MODEL, D_HIDDEN, NUM_EXPERTS, TOP_K = 64, 128, 8, 2
TOKENS_PER_RANK, STEPS, LR, BALANCE_COEF = 256, 20, 3.0, 0.01


def micro_batch(rank: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s inputs and regression targets (any rank can rebuild any rank's batch)."""
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(TOKENS_PER_RANK, D_MODEL, generator=g)
    target = torch.tanh(x @ torch.randn(D_MODEL, D_MODEL, generator=torch.Generator().manual_seed(7)) / 8)
    return x.to(device), target.to(device)


def step_loss(out, target):
    return F.mse_loss(out.output, target) + BALANCE_COEF * out.aux_losses["load_balance"]


def main() -> None:
    use_nccl = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_nccl else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_nccl else torch.device("cpu")
    if use_nccl:
        torch.cuda.set_device(device)
    torch.set_num_threads(1)

    torch.manual_seed(0)
    moe = ExpertParallelMoE(D_MODEL, D_HIDDEN, NUM_EXPERTS, TOP_K, group=None).to(device)
    x, target = micro_batch(rank, device)

    # 1. One forward pass: who sends what to whom.
    out = moe(x)
    sent = out.expert_counts.view(world, -1).sum(1)  # rows to each rank's experts
    received = moe.experts.recv_counts.sum(1)  # rows from each rank
    b = x.element_size()
    leaving = int(sent.sum() - sent[rank]) * D_MODEL * b
    estimate = TOP_K * TOKENS_PER_RANK * D_MODEL * b * (world - 1) / world
    line = (
        f"rank {rank}: experts {moe.experts.first_expert}-{moe.experts.first_expert + moe.experts.num_experts - 1}, "
        f"sends rows {sent.tolist()}, receives rows {received.tolist()}, "
        f"dispatch bytes leaving the rank {leaving} (balanced estimate {estimate:.0f})"
    )
    lines = [None] * world
    dist.all_gather_object(lines, line)

    # 2. Train: expert-parallel layer (own micro-batch) and single-process reference (all micro-batches).
    torch.manual_seed(0)
    ref = SparseMoE(D_MODEL, D_HIDDEN, NUM_EXPERTS, TOP_K).to(device)
    batches = [micro_batch(r, device) for r in range(world)]
    opt = torch.optim.SGD(moe.parameters(), lr=LR)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = step_loss(moe(x), target)
        loss.backward()
        sync_gradients(moe)  # gradients of the mean of the ranks' losses
        opt.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        losses.append(mean_loss.item() / world)

        ref_opt.zero_grad()
        (sum(step_loss(ref(xr), tr) for xr, tr in batches) / world).backward()
        ref_opt.step()

    mine = slice(moe.experts.first_expert, moe.experts.first_expert + moe.experts.num_experts)
    diff = max(
        (moe.router.weight - ref.router.weight).abs().max().item(),
        *((getattr(moe.experts, n) - getattr(ref.experts, n)[mine]).abs().max().item() for n in ("w1", "b1", "w2", "b2")),
    )
    diffs = [None] * world
    dist.all_gather_object(diffs, diff)
    if rank == 0:
        print(f"world size {world}, backend {dist.get_backend()}, {NUM_EXPERTS} experts, top-{TOP_K}, "
              f"{TOKENS_PER_RANK} tokens per rank, d_model {D_MODEL}, {b}-byte elements")
        print("\n".join(lines))
        print(f"mean loss over ranks: step 1 {losses[0]:.4f}, step {STEPS} {losses[-1]:.4f}")
        print(f"max |weight difference| to the single-process SparseMoE after {STEPS} SGD steps, per rank: "
              + ", ".join(f"{d:.1e}" for d in diffs))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
