"""MoE-Adapters for continual learning: adapter experts on a frozen backbone, one router per task, the
experts a task used most frozen after it, and an autoencoder selector that picks the router at test time.

Yu, Zhuge, Zhang, Hu, Wang, Lu, He. "Boosting Continual Learning of Vision-Language Models via
Mixture-of-Experts Adapters". CVPR 2024, arXiv 2403.11549. Official code: ``JiazuoYu/MoE-Adapters4CL``.

What the paper does, and why
----------------------------
A vision-language model (CLIP) learns a sequence of tasks (the MTIL benchmark: 11 datasets, one after
the other). Fine-tuning it, or one adapter on it, on each new task overwrites what the previous tasks
needed (*forgetting*), and also what zero-shot CLIP knew about data it was never tuned on. MoE-Adapters
keeps the backbone frozen and adds, in every residual block of both encoders, a mixture of small
adapter experts shared by all tasks, with **one router per task**:

    x <- x + Attn(LN_1 x)
    c  = x[:, 0]                                           first token (CLS / SOT) of each sample, [B, d]
    h  = c R^t + eps * (softplus(c W_noise^t) + 0.01)      eps ~ N(0, 1), training only
    W^t = Softmax(TopK(h))                                 top-k logits, softmax over those k; 0 elsewhere
    y  = sum_i W_i^t A_i(x)                                each chosen adapter sees the sample's whole sequence
    x <- x + MLP(LN_2 x) + y

An adapter is ``A_i(x) = 0.1 * up(dropout(relu(down(x))))`` with ``down: d -> 64`` and ``up: 64 -> d``,
``up`` initialised to zero. Two mechanisms protect old tasks:

* **Activation-frequency freezing.** While a task trains, the layer counts how often each expert is
  chosen. At the end of the task, the **two most chosen experts of each layer** are frozen: later
  tasks may still route to them but can no longer change them. A task's router is used (and trained)
  only for that task, so old routers never change either.
* **Distribution discriminative auto-selector (DDAS).** One small autoencoder per task is trained on
  that task's inputs (AlexNet conv features in the paper). At test time the autoencoder with the lowest
  reconstruction error names the task whose router to use; if even that error exceeds a threshold, the
  input is treated as unseen and goes through the frozen backbone **without any adapter** (zero-shot
  CLIP), which keeps zero-shot transfer intact.

Which sources this follows (``shared/research/methods_subcategories.md`` section 9)
----------------------------------------------------------------------------------
* The gating equations and the DDAS threshold: the paper (as restated on sciencestack.ai,
  ``W^t = Softmax(TopK(R^t(c^t)))``, ``y^t = sum_i W_i^t E_i(x^t)``).
* Placement, first-token routing, noise, adapter shape and scale, zero init of ``up``, zero-initialised
  per-task routers: ``JiazuoYu/MoE-Adapters4CL: mtil/clip/model.py``, ``mtil/clip/adapter.py``.
* Freezing the two most chosen experts per layer after each task: ``mtil/src/models/finetune.py``.
* DDAS autoencoder ``sigmoid(features) -> Linear(D, 100) + ReLU -> Linear(100, D) + sigmoid``, MSE, the
  threshold 0.0655: ``mtil/src/models/evaluation.py`` and ``mtil/src/args.py``.
* Defaults (``mtil/src/args.py`` and ``train_full_shot_router11_experts22_1000iters.sh``): 22 experts,
  top-2, adapter width 64, 11 tasks, 1000 iterations per task.

Where the code and the paper differ, and what this file does:

* The MTIL code computes a load-balancing loss ``1e-2 * (CV^2(importance) + CV^2(load))`` and never
  adds it to the objective (the CIL code does not compute it). Here ``AdapterMoEOutput`` carries the
  core's Switch-style ``load_balance`` loss so that a caller *can* add it; the notebook, like the code,
  does not.
* The code makes the DDAS decision per *batch* (the MSE is averaged over the batch, so a mixed batch
  gets one task id). ``DistributionSelector.select(per="sample")`` (default) decides per sample;
  ``per="batch"`` reproduces the code.

Where this simplifies
---------------------
* **Backbone.** A frozen stack of pre-LN residual blocks ``x <- x + MLP(LN x) + y`` with no attention
  stands in for CLIP's two encoders; adapters are in every block, as in the paper, but only one
  encoder exists. Classification is by cosine similarity to fixed random per-task class vectors,
  standing in for CLIP's (frozen) text embeddings of the class names; in the paper the text encoder
  carries MoE-adapters too.
* **Adapter dropout** (0.1) is left out: the experts are the core's ``Experts`` (stacked
  ``down``/``up`` weights, ReLU), which has no dropout. The 0.1 output scale is kept.
* **Freezing** in the code is by parameter name (each expert is its own module, ``requires_grad`` off).
  Here the experts are stacked; a frozen expert's weights are copied into buffers when it is frozen and
  the layer computes with ``where(frozen, copy, parameter)``, so no optimiser state, weight decay or
  gradient can move a frozen expert. Like the code, the two most chosen experts are frozen even if
  one of them was already frozen by an earlier task (then fewer new experts are frozen).
* **DDAS features** are whatever the caller passes (the notebook uses the raw inputs). The paper's
  autoencoder 0, trained on TinyImageNet and mapped to zero-shot, is not included; only the threshold
  sends inputs to zero-shot. The threshold depends on the feature scale: 0.0655 belongs to AlexNet
  features.

Routing uses the shared core ``reference_impls/moe.py``: ``route`` (top-k; for ``k >= 2`` the gates are
the softmax renormalised over the k chosen experts, which is ``Softmax(TopK(h))``), ``sort_by_expert``,
``Experts`` and ``combine_by_token``; per-sample routing is expanded to the sample's tokens before
dispatch. For ``k = 1`` the core keeps the raw probability as the gate, where the paper's softmax over a
single logit gives 1; with one expert (the single-adapter baseline) both are exactly 1.

Shapes: ``B`` samples, ``S`` tokens per sample, ``d`` width, ``E`` experts, ``k`` experts per sample,
``T`` tasks, ``C`` classes per task, ``D`` DDAS feature width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from reference_impls.moe import (
    ExpertBackend,
    Experts,
    FeedForward,
    Routing,
    combine_by_token,
    load_balancing_loss,
    route,
    sort_by_expert,
)

ZERO_SHOT = -1  # task id meaning "no adapter": the frozen backbone alone


# ---------------------------------------------------------------------------------------------------
# The adapter-expert layer with per-task routers and expert freezing
# ---------------------------------------------------------------------------------------------------


@dataclass
class AdapterMoEOutput:
    output: Tensor  # [B, S, d]: y = sum_i W_i A_i(x), already scaled; 0 for zero-shot samples
    router_logits: Tensor  # [B, E] fp32, with the noise in training
    routing: Routing  # per sample: expert_index [B, k], gates [B, k], router_probs [B, E]
    aux_losses: dict[str, Tensor]  # "load_balance": the core's Switch loss over active samples (unused by the code)


class AdapterMoE(nn.Module):
    """MoE-Adapters' layer: ``E`` adapter experts shared by all tasks, one noisy top-k router per task.

    Args:
        d_model: width ``d`` of the residual stream.
        num_experts: ``E`` (official MTIL script: 22).
        top_k: ``k`` experts per sample (official: 2).
        num_tasks: ``T``, the number of routers (official MTIL: 11).
        adapter_dim: the adapters' bottleneck width (official ``ffn_num``: 64).
        adapter_scale: the adapters' output scale (official: 0.1).
        noisy_gating: add ``eps * (softplus(c W_noise) + 0.01)`` to the logits in training (official: yes).
        expert_backend: see the core's ``Experts``.
    """

    def __init__(self, d_model: int, *, num_experts: int = 22, top_k: int = 2, num_tasks: int = 11,
                 adapter_dim: int = 64, adapter_scale: float = 0.1, noisy_gating: bool = True,
                 expert_backend: ExpertBackend = "auto"):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        self.num_experts, self.top_k, self.num_tasks = num_experts, top_k, num_tasks
        self.adapter_scale, self.noisy_gating = adapter_scale, noisy_gating
        # A_i(x) = up_i(relu(down_i(x))): down = w1/b1 (core default init), up = w2/b2 zero-initialised.
        self.experts = Experts(num_experts, d_model, adapter_dim, activation="relu", bias=True,
                               backend=expert_backend)
        with torch.no_grad():
            self.experts.w2.zero_()
            self.experts.b2.zero_()
        # One (R^t, W_noise^t) per task, zero-initialised as the official code; separate parameters so that
        # an optimiser given only task t's router cannot touch the others.
        self.w_gate = nn.ParameterList(nn.Parameter(torch.zeros(d_model, num_experts)) for _ in range(num_tasks))
        self.w_noise = nn.ParameterList(nn.Parameter(torch.zeros(d_model, num_experts)) for _ in range(num_tasks))
        self.register_buffer("frozen", torch.zeros(num_experts, dtype=torch.bool))
        self.register_buffer("activation_counts", torch.zeros(num_experts, dtype=torch.long))
        for name, p in self.experts.named_parameters():  # the frozen experts' weights live here
            self.register_buffer(f"frozen_{name}", torch.zeros_like(p))

    # ----- frozen experts -------------------------------------------------------------------------

    def expert_parameters(self) -> dict[str, Tensor]:
        """The weights the layer computes with: the frozen copy for frozen experts, the parameter otherwise."""
        out = {}
        for name, p in self.experts.named_parameters():
            mask = self.frozen.view(-1, *([1] * (p.dim() - 1)))
            out[name] = torch.where(mask, getattr(self, f"frozen_{name}"), p)  # no gradient to frozen rows
        return out

    @torch.no_grad()
    def freeze_most_used(self, num: int = 2) -> Tensor:
        """End of a task: freeze the ``num`` experts chosen most often since the last call (official:
        2 per layer), copy their current weights, reset the counts. Returns their ids ``[num]`` (some
        may have been frozen already). Nothing is frozen if the layer was never used in training."""
        if num == 0 or self.activation_counts.sum() == 0:
            self.activation_counts.zero_()
            return torch.zeros(0, dtype=torch.long, device=self.frozen.device)
        chosen = self.activation_counts.topk(num).indices
        new = chosen[~self.frozen[chosen]]
        for name, p in self.experts.named_parameters():
            getattr(self, f"frozen_{name}")[new] = p[new]
        self.frozen[chosen] = True
        self.activation_counts.zero_()
        return chosen

    # ----- routing and forward --------------------------------------------------------------------

    def router_logits(self, c: Tensor, task: Tensor) -> Tensor:
        """``c [B, d]`` first tokens, ``task [B]`` long (router ids; negative ones get router 0 and are
        ignored by the caller) -> ``[B, E]`` fp32 ``h = c R^t (+ eps * (softplus(c W_noise^t) + 0.01))``."""
        t = task.clamp_min(0)
        R = torch.stack(list(self.w_gate))[t].float()  # [B, d, E]: each sample's task router
        h = torch.einsum("bd,bde->be", c.float(), R)
        if self.training and self.noisy_gating:
            W_noise = torch.stack(list(self.w_noise))[t].float()
            std = F.softplus(torch.einsum("bd,bde->be", c.float(), W_noise)) + 0.01
            h = h + torch.randn_like(h) * std
        return h

    def forward(self, x: Tensor, task: Tensor) -> AdapterMoEOutput:
        """``x [B, S, d]``, ``task [B]`` long router ids (``ZERO_SHOT = -1``: no adapter) -> output."""
        Bsz, S, d = x.shape
        logits = self.router_logits(x[:, 0], task)  # routed by the first token of each sample
        routing = route(logits, self.top_k)  # W^t = Softmax(TopK(h)), fp32; [B, k]
        active = task >= 0
        # Per-sample routing, per-token dispatch: every token of sample b goes to b's k experts.
        index = routing.expert_index.repeat_interleave(S, dim=0)  # [B*S, k]
        gates = routing.gates.repeat_interleave(S, dim=0)
        keep = active.repeat_interleave(S).unsqueeze(1).expand_as(index)  # zero-shot samples: no adapter
        dispatch = sort_by_expert(index, keep, self.num_experts)
        flat = x.reshape(Bsz * S, d)
        rows = flat.index_select(0, dispatch.token_index)
        out = functional_call(self.experts, self.expert_parameters(), (rows, dispatch.counts, dispatch.expert_of_row))
        y = self.adapter_scale * combine_by_token(out, dispatch, gates, Bsz * S)  # y = sum_i W_i A_i(x)
        if self.training:  # activation counting for freezing: one count per (sample, chosen expert)
            self.activation_counts += torch.bincount(routing.expert_index[active].reshape(-1),
                                                     minlength=self.num_experts)
        probs, chosen = routing.router_probs[active], routing.expert_index[active]
        aux = {"load_balance": load_balancing_loss(probs, chosen, self.num_experts)}
        return AdapterMoEOutput(y.view(Bsz, S, d), logits, routing, aux)

    def router_parameters(self, task: int) -> list[nn.Parameter]:
        return [self.w_gate[task], self.w_noise[task]]


# ---------------------------------------------------------------------------------------------------
# DDAS: one autoencoder per task, lowest reconstruction error wins, above a threshold -> zero-shot
# ---------------------------------------------------------------------------------------------------


class TaskAutoencoder(nn.Module):
    """``sigmoid(f) -> Linear(D, hidden) + ReLU -> Linear(hidden, D) + sigmoid``; the target is ``sigmoid(f)``
    (official: ``D = 256*13*13`` AlexNet conv features, ``hidden = 100``)."""

    def __init__(self, feature_dim: int, hidden: int = 100):
        super().__init__()
        self.encoder = nn.Linear(feature_dim, hidden)
        self.decoder = nn.Linear(hidden, feature_dim)

    def errors(self, features: Tensor) -> Tensor:
        """``[B, D] -> [B]`` per-sample reconstruction MSE."""
        target = torch.sigmoid(features)
        reconstruction = torch.sigmoid(self.decoder(F.relu(self.encoder(target))))
        return (reconstruction - target).square().mean(dim=-1)


class DistributionSelector(nn.Module):
    """DDAS: one ``TaskAutoencoder`` per task seen; ``select`` returns task ids, or ``ZERO_SHOT``.

    Args:
        feature_dim: ``D``.
        hidden: autoencoder bottleneck (official: 100).
        threshold: reconstruction MSE above which an input counts as unseen (official: 0.0655, on
            AlexNet features; it has to be recalibrated for other features).
    """

    def __init__(self, feature_dim: int, *, hidden: int = 100, threshold: float = 0.0655):
        super().__init__()
        self.feature_dim, self.hidden, self.threshold = feature_dim, hidden, threshold
        self.autoencoders = nn.ModuleList()

    def add_task(self, features: Tensor, *, steps: int = 500, lr: float = 1e-3, batch_size: int = 128,
                 generator: torch.Generator | None = None) -> float:
        """Train a new autoencoder on one task's ``features [n, D]`` (Adam, MSE); returns its final mean
        training error. The new autoencoder's index is the task id."""
        ae = TaskAutoencoder(self.feature_dim, self.hidden).to(features.device)
        optimiser = torch.optim.Adam(ae.parameters(), lr=lr)
        for _ in range(steps):
            batch = features[torch.randint(0, features.shape[0], (batch_size,), generator=generator)]
            loss = ae.errors(batch).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        ae.requires_grad_(False)
        self.autoencoders.append(ae)
        with torch.no_grad():
            return ae.errors(features).mean().item()

    @torch.no_grad()
    def errors(self, features: Tensor) -> Tensor:
        """``[B, D] -> [B, T]``: each autoencoder's per-sample reconstruction error."""
        return torch.stack([ae.errors(features) for ae in self.autoencoders], dim=-1)

    @torch.no_grad()
    def select(self, features: Tensor, *, per: Literal["sample", "batch"] = "sample",
               threshold: float | None = None) -> Tensor:
        """``[B, D] -> [B]`` long: the task whose autoencoder reconstructs best, or ``ZERO_SHOT`` where that
        lowest error exceeds the threshold. ``per="batch"`` averages the errors over the batch first and
        gives every sample the same answer (the official code)."""
        threshold = self.threshold if threshold is None else threshold
        errors = self.errors(features)
        if per == "batch":
            errors = errors.mean(dim=0, keepdim=True).expand_as(errors)
        best, task = errors.min(dim=-1)
        return torch.where(best > threshold, torch.full_like(task, ZERO_SHOT), task)


# ---------------------------------------------------------------------------------------------------
# A small frozen backbone with MoE-adapters in every block
# ---------------------------------------------------------------------------------------------------


@dataclass
class ContinualConfig:
    """Sizes default to a CPU toy; the MoE-Adapters settings default to the official code's values."""

    d_in: int = 16
    d_model: int = 32
    d_hidden: int = 64  # the frozen MLPs' width
    num_blocks: int = 2
    num_tasks: int = 11
    classes_per_task: int = 5
    num_experts: int = 22
    top_k: int = 2
    adapter_dim: int = 64
    adapter_scale: float = 0.1
    noisy_gating: bool = True
    freeze_per_task: int = 2  # experts frozen per layer after each task (0: no freezing)
    logit_scale: float = 10.0  # cosine-similarity logits times this (CLIP: learned, about 100)


class ContinualAdapterModel(nn.Module):
    """Frozen backbone (input projection, ``num_blocks`` pre-LN residual MLP blocks, final LN) with an
    ``AdapterMoE`` in every block, and fixed random class vectors per task as the classifier.

    ``forward(x [B, S, d_in] or [B, d_in], router_task [B], head_task [B])`` returns logits ``[B, C]``:
    ``router_task`` picks each sample's router (``ZERO_SHOT``: no adapter), ``head_task`` picks which
    task's classes it is scored against (in MTIL the dataset, hence its class names, is known at test
    time; only the router is chosen by DDAS).

    With ``num_experts=1, top_k=1, freeze_per_task=0`` this is one adapter per block shared by all tasks:
    plain sequential fine-tuning of an adapter.
    """

    def __init__(self, config: ContinualConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Linear(c.d_in, c.d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(c.d_model) for _ in range(c.num_blocks))
        self.mlps = nn.ModuleList(FeedForward(c.d_model, c.d_hidden) for _ in range(c.num_blocks))
        self.final_norm = nn.LayerNorm(c.d_model)
        for p in self.parameters():  # everything so far is the frozen backbone
            p.requires_grad_(False)
        class_vectors = torch.randn(c.num_tasks, c.classes_per_task, c.d_model)  # CLIP's class-name embeddings
        self.register_buffer("class_vectors", F.normalize(class_vectors, dim=-1))
        self.adapters = nn.ModuleList(
            AdapterMoE(c.d_model, num_experts=c.num_experts, top_k=c.top_k, num_tasks=c.num_tasks,
                       adapter_dim=c.adapter_dim, adapter_scale=c.adapter_scale, noisy_gating=c.noisy_gating)
            for _ in range(c.num_blocks)
        )

    def features(self, x: Tensor, router_task: Tensor) -> tuple[Tensor, list[AdapterMoEOutput]]:
        """``[B, S, d_in]`` -> normalised first-token features ``[B, d]`` and each layer's adapter output."""
        x = x.unsqueeze(1) if x.dim() == 2 else x
        h = self.embed(x)
        outputs = []
        for norm, mlp, adapter in zip(self.norms, self.mlps, self.adapters):
            out = adapter(h, router_task)
            h = h + mlp(norm(h)) + out.output  # x <- x + MLP(LN x) + y
            outputs.append(out)
        return F.normalize(self.final_norm(h[:, 0]), dim=-1), outputs

    def forward(self, x: Tensor, router_task: Tensor, head_task: Tensor) -> Tensor:
        f, _ = self.features(x, router_task)
        return self.config.logit_scale * torch.einsum("bd,bcd->bc", f, self.class_vectors[head_task])

    def trainable_parameters(self, task: int) -> list[nn.Parameter]:
        """What task ``task`` trains: every expert (frozen ones get no gradient and are computed from
        their copies anyway) and that task's routers, nothing else."""
        params = []
        for adapter in self.adapters:
            params += list(adapter.experts.parameters()) + adapter.router_parameters(task)
        return params

    def end_task(self) -> list[Tensor]:
        """Freeze the ``freeze_per_task`` most chosen experts of every layer; returns their ids per layer."""
        return [adapter.freeze_most_used(self.config.freeze_per_task) for adapter in self.adapters]


__all__ = [
    "AdapterMoE",
    "AdapterMoEOutput",
    "ContinualAdapterModel",
    "ContinualConfig",
    "DistributionSelector",
    "TaskAutoencoder",
    "ZERO_SHOT",
]
