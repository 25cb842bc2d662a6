"""How fast is `reference_impls.moe.SparseMoE`, and against which limit?

For (tokens, experts, k) = (4096, 8, 2), (512, 8, 2), (256, 64, 2), d_model 512, d_hidden 1024, fp32,
this times forward and forward+backward of

* ``SparseMoE``            the library layer as shipped (``expert_backend="auto"``: grouped_mm where the kernel
                           takes the device, dtype and widths, else the loop), and in a second table the same
                           layer with each path forced: ``grouped_mm`` (where it can run), ``loop``;
* ``masked loop``          the naive baseline: for each expert, mask its tokens, gather, FFN, ``index_add``;
* ``padded bmm``           capacity-padded ``[E, C, d]`` buffers (C = the largest expert count, so nothing
                           is dropped) and one ``baddbmm`` per matrix, GShard/DeepSpeed-style buffers filled
                           by index instead of by a one-hot einsum;
* ``dense k*h``            a dense FFN of width ``k * d_hidden``: the same active FLOPs, the compute-bound limit;
* ``weights floor``        the time to stream every expert's weights (``2 E d h`` floats) from memory: read
                           once for the forward; read, read again and write as many gradient bytes for
                           forward+backward. The memory-bound limit, which binds with few tokens per expert.

A third table times the rest of the routing family, each against its own dense equivalent (a dense FFN
doing the same expert FLOPs per token): ``ExpertChoiceMoE`` (capacity factor c = 2, so c experts per
token on average: dense width c*h), ``SoftMoE`` (one slot per expert, as many slots as tokens: dense
width h), and ``SparseMoE`` with one shared expert (dense width (k+1)*h).

Page faults: forward+backward allocates fresh gradient memory each step (the loop sets ``.grad = None``),
and glibc serves every block over 32 MB (a gradient of all 64 experts' weights is 128 MB) by ``mmap``:
each step then pays a page fault per 4 KB page it writes, about as long as the backward's arithmetic
at (256, 64, 2). That is an allocator cost, not the layer's: ``--keep-memory`` re-runs the benchmark
with glibc's documented tunables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` (freed memory
stays in the process and is reused, as a caching allocator such as jemalloc would do), and the
weights floor is measured the same way in both runs (a copy into memory written before).

All variants use the same weights and the same routing function (``reference_impls.moe.route``, dropless),
are measured in one run, and report the minimum over repeats (the 2-core CPU is shared, so the minimum is
the least noisy statistic). Run from the repository root:

    python benchmarks/moe_dispatch.py            # full run
    python benchmarks/moe_dispatch.py --quick    # fewer repeats
    python benchmarks/moe_dispatch.py --keep-memory   # freed memory reused: no page faults per step
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from reference_impls.moe import (  # noqa: E402
    ACTIVATIONS, ExpertChoiceMoE, FeedForward, SoftMoE, SparseMoE, grouped_mm_available, route)

CONFIGS = [(4096, 8, 2), (512, 8, 2), (256, 64, 2)]
D_MODEL, D_HIDDEN = 512, 1024


def masked_loop(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """The textbook loop: one boolean mask per expert over all tokens."""
    r = route(moe.router(x), moe.top_k)
    act = ACTIVATIONS[moe.experts.activation]
    ex = moe.experts
    out = torch.zeros_like(x)
    for e, (w1, b1, w2, b2) in enumerate(zip(ex.w1.unbind(0), ex.b1.unbind(0), ex.w2.unbind(0), ex.b2.unbind(0))):
        token, choice = torch.nonzero(r.expert_index == e, as_tuple=True)
        if token.numel() == 0:
            continue
        h = act(torch.addmm(b1, x[token], w1))
        y = torch.addmm(b2, h, w2) * r.gates[token, choice].to(x.dtype).unsqueeze(-1)
        out = out.index_add(0, token, y)
    return out


def padded_bmm(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Capacity-padded buffers: slot ``position`` of expert ``e`` holds the token routed there."""
    r = route(moe.router(x), moe.top_k)
    E, d = moe.num_experts, x.shape[-1]
    capacity = int(r.position.max()) + 1  # the largest expert count: dropless, minimal padding
    token = torch.arange(x.shape[0], device=x.device).unsqueeze(-1).expand_as(r.expert_index).reshape(-1)
    slot = (r.expert_index * capacity + r.position).reshape(-1)
    buffers = x.new_zeros(E * capacity, d).index_copy(0, slot, x[token]).view(E, capacity, d)
    ex = moe.experts
    act = ACTIVATIONS[ex.activation]
    h = act(torch.baddbmm(ex.b1.unsqueeze(1), buffers, ex.w1))
    y = torch.baddbmm(ex.b2.unsqueeze(1), h, ex.w2).view(E * capacity, d)
    weighted = y[slot] * r.gates.reshape(-1, 1).to(x.dtype)
    return torch.zeros_like(x).index_add(0, token, weighted)


def min_times(fns: dict, repeats: int, warmup: int) -> dict:
    """Minimum wall time (ms) of every callable, with the repeats interleaved (a, b, c, a, b, c, ...)
    so that a change in the load of the shared machine hits every variant alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - t0) * 1e3)
    return best


def fwd_and_fwd_bwd(forward, params, x):
    """Two callables: forward under no_grad, and forward + backward with a random upstream gradient."""
    grad_out = torch.randn_like(x)  # not y.sum(): grouped_mm's backward rejects stride-0 gradients

    def fwd():
        with torch.no_grad():
            forward(x)

    def fwd_bwd():
        for p in params:
            p.grad = None
        x.grad = None
        forward(x).backward(grad_out)

    return fwd, fwd_bwd


def weight_streaming(num_experts: int, dtype: torch.dtype):
    """Reading (and writing) the bytes of all expert weights: ``2 E d h`` values."""
    weights = torch.randn(2 * num_experts * D_MODEL * D_HIDDEN, dtype=dtype)
    grads = torch.empty_like(weights)
    return (lambda: weights.sum()), (lambda: grads.copy_(weights))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--repeats", type=int, help="override the number of repeats (7, or 3 with --quick)")
    parser.add_argument("--config", type=int, action="append", choices=range(len(CONFIGS)),
                        help="measure only this entry of CONFIGS (repeatable); default: all")
    parser.add_argument("--keep-memory", action="store_true",
                        help="run with glibc's MALLOC_MMAP_MAX_=0 (freed memory is reused, no page faults)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="bfloat16 selects grouped_mm on CUDA (SM >= 8.0)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.keep_memory and os.environ.get("MALLOC_MMAP_MAX_") != "0":
        # glibc reads its tunables at process start, so the benchmark starts again with them set
        env = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    repeats, warmup = (3, 1) if args.quick else (7, 2)
    repeats = args.repeats or repeats
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"d_model {D_MODEL}, d_hidden {D_HIDDEN}; min of {repeats} repeats, ms (fwd / fwd+bwd)")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; freed memory "
          + ("kept and reused (MALLOC_MMAP_MAX_=0)" if os.environ.get("MALLOC_MMAP_MAX_") == "0"
             else "returned to the OS (glibc default: large gradients page-fault every step)"), flush=True)

    rows = []
    for tokens, experts, k in [CONFIGS[i] for i in args.config] if args.config else CONFIGS:
        moe = SparseMoE(D_MODEL, D_HIDDEN, experts, k).to(device, dtype)
        forced = {}
        probe = torch.empty(1, D_MODEL, device=device, dtype=dtype)
        for backend in ("grouped_mm", "loop"):
            if backend == "grouped_mm" and not grouped_mm_available(probe, D_HIDDEN):
                continue
            forced[backend] = SparseMoE(D_MODEL, D_HIDDEN, experts, k, expert_backend=backend).to(device, dtype)
            forced[backend].load_state_dict(moe.state_dict())
        dense = FeedForward(D_MODEL, k * D_HIDDEN).to(device, dtype)
        x = torch.randn(tokens, D_MODEL, device=device, dtype=dtype, requires_grad=True)
        variants = {
            "SparseMoE": (lambda v: moe(v).output, list(moe.parameters())),
            "masked loop": (lambda v: masked_loop(moe, v), list(moe.parameters())),
            "padded bmm": (lambda v: padded_bmm(moe, v), list(moe.parameters())),
            "dense k*h": (dense, list(dense.parameters())),
        }
        for backend, m in forced.items():
            variants[f"[{backend}]"] = ((lambda mm: lambda v: mm(v).output)(m), list(m.parameters()))
        chosen = moe.experts.choose_backend(x)
        fns = {}
        for name, (forward, params) in variants.items():
            fns[(name, 0)], fns[(name, 1)] = fwd_and_fwd_bwd(forward, params, x)
        if device.type == "cpu":
            fns["read"], fns["copy"] = weight_streaming(experts, dtype)
        best = min_times(fns, repeats, warmup)
        t = {name: (best[(name, 0)], best[(name, 1)]) for name in variants}
        # forward: the weights are read once; backward: read again, and as many gradient bytes written
        t["weights floor"] = (best["read"], best["read"] + best["copy"]) if "read" in best else (float("nan"),) * 2
        rows.append(((tokens, experts, k), t, chosen))
        print(f"  measured {(tokens, experts, k)}", flush=True)

    print(f"load average at end: {os.getloadavg()[0]:.1f}")

    def table(names, title):
        header = f"{'(T, E, k)':>14} | " + " | ".join(f"{n:>17}" for n in names)
        print(f"\n{title}\n{header}\n" + "-" * len(header))
        for cfg, t, _ in rows:
            print(f"{str(cfg):>14} | " + " | ".join(f"{t[n][0]:7.1f} / {t[n][1]:7.1f}" for n in names))

    table(["SparseMoE", "masked loop", "padded bmm", "dense k*h", "weights floor"], "ms, fwd / fwd+bwd")
    table([n for n in ("[grouped_mm]", "[loop]") if n in rows[0][1]], "SparseMoE with each path forced, ms, fwd / fwd+bwd")
    family(args, device, dtype, repeats, warmup)

    print("\nratios (fwd / fwd+bwd)")
    for (tokens, experts, k), t, chosen in rows:
        moe_t = t["SparseMoE"]
        best_alt = [min(t["masked loop"][i], t["padded bmm"][i]) for i in range(2)]
        parts = [
            ("SparseMoE / dense k*h", [moe_t[i] / t["dense k*h"][i] for i in range(2)]),
            ("SparseMoE / best(masked loop, padded bmm)", [moe_t[i] / best_alt[i] for i in range(2)]),
            ("SparseMoE / weights floor", [moe_t[i] / t["weights floor"][i] for i in range(2)]),
            ("masked loop / dense k*h", [t["masked loop"][i] / t["dense k*h"][i] for i in range(2)]),
        ]
        print(f"  ({tokens}, {experts}, {k}), expert backend chosen by auto: {chosen}")
        for name, (f, fb) in parts:
            print(f"    {name:<42} {f:5.2f} / {fb:5.2f}")

def family(args, device, dtype, repeats: int, warmup: int) -> None:
    """The routing family against dense equivalents, at (tokens, experts) = (4096, 8)."""
    tokens, experts = 4096, 8
    x = torch.randn(tokens, D_MODEL, device=device, dtype=dtype, requires_grad=True)
    ec = ExpertChoiceMoE(D_MODEL, D_HIDDEN, experts, capacity_factor=2.0).to(device, dtype)
    soft = SoftMoE(D_MODEL, D_HIDDEN, experts).to(device, dtype)
    shared = SparseMoE(D_MODEL, D_HIDDEN, experts, 2, num_shared_experts=1).to(device, dtype)
    group = tokens // experts  # Soft MoE: groups of m = E tokens, one slot per expert: n*p = m slots
    soft_x = x.detach().view(group, experts, D_MODEL).requires_grad_()
    dense = {w: FeedForward(D_MODEL, w * D_HIDDEN).to(device, dtype) for w in (1, 2, 3)}
    variants = {
        "ExpertChoiceMoE (c=2)": (lambda v: ec(v).output, list(ec.parameters()), x),
        "dense 2h": (dense[2], list(dense[2].parameters()), x),
        "SoftMoE (p=1, m=E)": (lambda v: soft(v).output, list(soft.parameters()), soft_x),
        "dense h": (dense[1], list(dense[1].parameters()), x),
        "SparseMoE k=2 + 1 shared": (lambda v: shared(v).output, list(shared.parameters()), x),
        "dense 3h": (dense[3], list(dense[3].parameters()), x),
    }
    fns = {}
    for name, (forward, params, inp) in variants.items():
        fns[(name, 0)], fns[(name, 1)] = fwd_and_fwd_bwd(forward, params, inp)
    best = min_times(fns, repeats, warmup)
    print(f"\nthe routing family at {tokens} tokens, {experts} experts, ms (fwd / fwd+bwd), and the ratio to its dense equivalent")
    for name, reference in (("ExpertChoiceMoE (c=2)", "dense 2h"), ("SoftMoE (p=1, m=E)", "dense h"),
                            ("SparseMoE k=2 + 1 shared", "dense 3h")):
        ours, theirs = (best[(name, 0)], best[(name, 1)]), (best[(reference, 0)], best[(reference, 1)])
        print(f"  {name:<26} {ours[0]:7.1f} / {ours[1]:7.1f}   {reference:<9} {theirs[0]:7.1f} / {theirs[1]:7.1f}"
              f"   ratio {ours[0] / theirs[0]:5.2f} / {ours[1] / theirs[1]:5.2f}")


if __name__ == "__main__":
    main()
