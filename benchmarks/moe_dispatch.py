"""How fast is `reference_impls.moe.SparseMoE`, and against which limit?

For (tokens, experts, k) = (4096, 8, 2), (512, 8, 2), (256, 64, 2), d_model 512, d_hidden 1024, fp32,
this times forward and forward+backward of

* ``SparseMoE``            the library layer (sort by expert, ``F.grouped_mm`` experts where available);
* ``SparseMoE[loop]``      the same layer with ``expert_backend="loop"`` (per-expert loop over unbound weights);
* ``masked loop``          the naive baseline: for each expert, mask its tokens, gather, FFN, ``index_add``;
* ``padded bmm``           capacity-padded ``[E, C, d]`` buffers (C = the largest expert count, so nothing
                           is dropped) and one ``baddbmm`` per matrix, GShard/DeepSpeed-style buffers filled
                           by index instead of by a one-hot einsum;
* ``dense k*h``            a dense FFN of width ``k * d_hidden``: the same active FLOPs, the compute-bound limit;
* ``weights floor``        the time to stream every expert's weights (``2 E d h`` floats) from memory: read
                           once for the forward; read, read again and write as many gradient bytes for
                           forward+backward. The memory-bound limit, which binds with few tokens per expert.

All variants use the same weights and the same routing function (``reference_impls.moe.route``, dropless),
are measured in one run, and report the minimum over repeats (the 2-core CPU is shared, so the minimum is
the least noisy statistic). Run from the repository root:

    python benchmarks/moe_dispatch.py            # full run
    python benchmarks/moe_dispatch.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from reference_impls.moe import ACTIVATIONS, FeedForward, SparseMoE, route  # noqa: E402

CONFIGS = [(4096, 8, 2), (512, 8, 2), (256, 64, 2)]
D_MODEL, D_HIDDEN = 512, 1024


def masked_loop(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """The textbook loop: one boolean mask per expert over all tokens."""
    logits = moe.router(x)
    r = route(logits, moe.top_k)
    act = ACTIVATIONS[moe.experts.activation]
    ex = moe.experts
    out = torch.zeros_like(x)
    for e, (w1, b1, w2, b2) in enumerate(zip(ex.w1.unbind(0), ex.b1.unbind(0), ex.w2.unbind(0), ex.b2.unbind(0))):
        token, choice = torch.nonzero(r.expert_index == e, as_tuple=True)
        if token.numel() == 0:
            continue
        h = act(torch.addmm(b1, x[token], w1))
        y = torch.addmm(b2, h, w2) * r.gates[token, choice].unsqueeze(-1)
        out = out.index_add(0, token, y)
    return out


def padded_bmm(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Capacity-padded buffers: slot ``position`` of expert ``e`` holds the token routed there."""
    logits = moe.router(x)
    r = route(logits, moe.top_k)
    E, d = moe.num_experts, x.shape[-1]
    capacity = int(r.position.max()) + 1  # the largest expert count: dropless, minimal padding
    token = torch.arange(x.shape[0], device=x.device).unsqueeze(-1).expand_as(r.expert_index).reshape(-1)
    slot = (r.expert_index * capacity + r.position).reshape(-1)
    buffers = x.new_zeros(E * capacity, d).index_copy(0, slot, x[token]).view(E, capacity, d)
    ex = moe.experts
    act = ACTIVATIONS[ex.activation]
    h = act(torch.baddbmm(ex.b1.unsqueeze(1), buffers, ex.w1))
    y = torch.baddbmm(ex.b2.unsqueeze(1), h, ex.w2).view(E * capacity, d)
    weighted = y[slot] * r.gates.reshape(-1, 1)
    return torch.zeros_like(x).index_add(0, token, weighted)


def best_time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def time_variant(forward, params, x, repeats, warmup):
    def fwd():
        with torch.no_grad():
            forward(x)

    grad_out = torch.randn_like(x)  # not y.sum(): grouped_mm's backward rejects stride-0 gradients

    def fwd_bwd():
        for p in params:
            p.grad = None
        x.grad = None
        forward(x).backward(grad_out)

    return best_time(fwd, repeats, warmup), best_time(fwd_bwd, repeats, warmup)


def weights_floor(num_experts: int, repeats: int, warmup: int) -> tuple[float, float]:
    """Reading (and writing) the bytes of all expert weights, measured here and now."""
    weights = torch.randn(2 * num_experts * D_MODEL * D_HIDDEN)
    grads = torch.empty_like(weights)
    read = best_time(lambda: weights.sum(), repeats, warmup)
    read_write = best_time(lambda: grads.copy_(weights), repeats, warmup)
    return read, read + read_write  # forward: 1 read; backward: 1 more read + 1 write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    repeats, warmup = (3, 1) if args.quick else (7, 2)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, fp32, "
          f"d_model {D_MODEL}, d_hidden {D_HIDDEN}; min of {repeats} repeats, ms (fwd / fwd+bwd)")

    rows = []
    for tokens, experts, k in CONFIGS:
        moe = SparseMoE(D_MODEL, D_HIDDEN, experts, k).to(device)
        moe_loop = SparseMoE(D_MODEL, D_HIDDEN, experts, k, expert_backend="loop").to(device)
        moe_loop.load_state_dict(moe.state_dict())
        dense = FeedForward(D_MODEL, k * D_HIDDEN).to(device)
        x = torch.randn(tokens, D_MODEL, device=device, requires_grad=True)
        params = list(moe.parameters())
        t = {
            "SparseMoE": time_variant(lambda v: moe(v).output, params, x, repeats, warmup),
            "SparseMoE[loop]": time_variant(lambda v: moe_loop(v).output, list(moe_loop.parameters()), x,
                                            repeats, warmup),
            "masked loop": time_variant(lambda v: masked_loop(moe, v), params, x, repeats, warmup),
            "padded bmm": time_variant(lambda v: padded_bmm(moe, v), params, x, repeats, warmup),
            "dense k*h": time_variant(dense, list(dense.parameters()), x, repeats, warmup),
            "weights floor": weights_floor(experts, repeats, warmup) if device.type == "cpu" else (float("nan"),) * 2,
        }
        rows.append(((tokens, experts, k), t))

    names = list(rows[0][1])
    header = f"{'(T, E, k)':>14} | " + " | ".join(f"{n:>17}" for n in names)
    print(header)
    print("-" * len(header))
    for cfg, t in rows:
        print(f"{str(cfg):>14} | " + " | ".join(f"{t[n][0]:7.1f} / {t[n][1]:7.1f}" for n in names))

    print("\nratios (fwd / fwd+bwd)")
    for (tokens, experts, k), t in rows:
        moe_t = t["SparseMoE"]
        best_alt = [min(t["masked loop"][i], t["padded bmm"][i]) for i in range(2)]
        parts = [
            ("SparseMoE / dense k*h", [moe_t[i] / t["dense k*h"][i] for i in range(2)]),
            ("SparseMoE / best(masked loop, padded bmm)", [moe_t[i] / best_alt[i] for i in range(2)]),
            ("SparseMoE / weights floor", [moe_t[i] / t["weights floor"][i] for i in range(2)]),
            ("masked loop / dense k*h", [t["masked loop"][i] / t["dense k*h"][i] for i in range(2)]),
        ]
        print(f"  ({tokens}, {experts}, {k}):")
        for name, (f, fb) in parts:
            print(f"    {name:<42} {f:5.2f} / {fb:5.2f}")


if __name__ == "__main__":
    main()
