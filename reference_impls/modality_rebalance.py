"""Countering a dominant modality: AGS-SMoE's preemption-factor gradient scaling, with a sparse-MoE fusion.

Chen, Huang, Huang, Huang. "Actual Cause Guided Adaptive Gradient Scaling for Balanced Multimodal
Sentiment Analysis" (AGS-SMoE), ACM TOMM 2025; code ``TheShy-Dream/AGS-SMoE``.

Why this paper
--------------
The knowledge base files nine papers under *adapter / modality-imbalance*
(``grep -l "subcategory: modality-imbalance" papers/*.yaml``). Most change what the experts are
(LTDR's per-modality routing, AsyMoE's and HEPE's hyperbolic and evidence-priority experts, MokA's and
MaLoRA's modality LoRA) or reweight the loss (BTW). AGS-SMoE is the one whose mechanism acts directly on
the symptom this sub-category is about, **a modality that trains first and leaves the others
under-trained**, and does so with a rule small enough to show on a CPU: it reads each modality
encoder's gradient norm and scales down the dominant one. It is also the one whose official code could
be read (``solver.py``, ``config.py``), so the defaults below are the code's, not guesses. Its
sparse-MoE layer then fuses the modality tokens.

What the paper does
-------------------
"Modal preemption": in joint training, one modality's encoder takes over optimisation, the fused loss
falls, and the other encoders stop receiving useful gradient. AGS-SMoE reads the encoders' gradient
norms as evidence of which modality is pre-empting and turns them, with no learned parameter, into a
**preemption factor** that multiplies that encoder's gradients before the optimiser step. The official
code (``solver.py``) does this after every ``backward`` (``update_batch = 1``) for the first
``end_epoch`` epochs:

    g_m   = sqrt( (1/P_m) sum_{p in encoder m} |grad p|_2^2 )    average per-tensor L2 norm
                                                                 (calculate_average_gradient_l2_norm)
    r_m   = g_m / mean_{n != m} g_n                               ratio to the other modalities
    f_m   = 1 - tanh( alpha * r_m / (1 + r_m) )    if m pre-empts (see strategy), else 1
    grad p <- f_m * grad p   for every parameter p of encoder m

``r / (1 + r)`` is the code's ``1 / (1 + 1/r)``, in ``(0, 1)``, so ``f`` lies in ``(1 - tanh(alpha), 1]``.
Who counts as pre-empting (``strategy``):

* ``"average"`` (code default): every modality whose ``g_m`` exceeds the mean of the others' norms
  (``apply_grad_input_multi_modifier``);
* ``"max"``: the modality with the largest ``g_m`` (``apply_grad_input_modifier``).

The code does the same at a second stage, the two cross-modal attention modules (text->audio,
text->vision), with its own strength ``hyperbeta`` and the two-module rule
(``apply_grad_input_multi_modifier_bi``, which is ``"average"`` for two modules).
:class:`PreemptionGradientScaler` takes any number of such stages. Then it clips the total gradient norm
at ``clip = 1.0`` and steps the optimiser.

Defaults (``config.py``)
------------------------
``hyperalpha = hyperbeta = 0.01``, ``strategy = "average"``, ``end_epoch = 5`` (of ``num_epochs = 40``),
``update_batch = 1``, ``num_experts = 3``, ``top_k = 2``, Adam at ``lr_main = 1e-3``, clip 1.0.

Two consequences of those defaults, both measured in ``notebooks/adapter_modality_rebalance.ipynb`` and
tested here:

* with ``alpha = 0.01`` the factor is at least ``1 - tanh(0.01) = 0.990``: the gradients change by
  under 1%;
* **Adam undoes a constant factor.** Adam divides the first moment by the root of the second, so
  multiplying a parameter's gradients by the same ``f`` at every step leaves its update unchanged up to
  ``eps``. Only the *changes* of ``f`` from step to step reach the weights. The gradient clipping after
  the scaling does not change that. Under SGD, by contrast, ``f`` is a per-encoder learning-rate factor.
  The notebook shows both.

Where this implementation simplifies
------------------------------------
* The model (:class:`MultimodalSMoEClassifier`) is a CPU-sized stand-in for the paper's backbone
  (BERT text, LSTM audio and vision, cross-modal attention, contrastive and information-bottleneck
  losses, none of which are reproduced). Each modality has an MLP encoder producing one token. The
  tokens, plus a learned modality embedding, go through one sparse MoE layer (the shared core's
  :class:`reference_impls.moe.SparseMoE`; code defaults 3 experts, top-2), then mean pooling and a
  linear head. The MoE's role in the paper is to let tokens "in different preemption states" use
  different experts; here it is just the fusion layer, and the rebalancing acts on the encoders.
* With no cross-modal modules there is no second stage in the notebook; the scaler supports one.
* ``end_epoch`` and gradient clipping are left to the training loop.

Shapes: ``B`` samples, ``M`` modalities, ``d`` token width, ``C`` classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impls.moe import MoEOutput, SparseMoE

Strategy = Literal["average", "max"]


# ---------------------------------------------------------------------------------------------------
# The preemption factor
# ---------------------------------------------------------------------------------------------------


def average_gradient_norm(module: nn.Module) -> float:
    """``sqrt((1/P) sum_p |grad p|_2^2)`` over the ``P`` parameter tensors of ``module`` that have a
    gradient: the root of the *mean of per-tensor squared norms* (the code's
    ``calculate_average_gradient_l2_norm``), not the global norm. 0 when no tensor has a gradient."""
    squares = [p.grad.detach().float().norm().item() ** 2 for p in module.parameters() if p.grad is not None]
    return math.sqrt(sum(squares) / len(squares)) if squares else 0.0


def preemption_factors(grad_norms: Sequence[float], alpha: float, *, strategy: Strategy = "average") -> list[float]:
    """One factor per module: ``1 - tanh(alpha * r / (1 + r))`` for a pre-empting module, else 1.

    Args:
        grad_norms: ``g_m`` for the ``M >= 2`` modules of one stage.
        alpha: strength (the code's ``hyperalpha`` / ``hyperbeta``, default 0.01).
        strategy: ``"average"``: module ``m`` pre-empts when ``g_m > mean_{n != m} g_n`` (the code's
            default); ``"max"``: when ``g_m`` is the largest (ties: every maximal module).

    ``r_m = g_m / mean_{n != m} g_n``. A module whose peers all have zero gradient gets ``r = inf`` and
    the factor ``1 - tanh(alpha)``.
    """
    M = len(grad_norms)
    if M < 2:
        raise ValueError("preemption needs at least two modules to compare")
    if strategy not in ("average", "max"):
        raise ValueError(f"unknown strategy {strategy!r}")
    largest = max(grad_norms)
    factors = []
    for m, g in enumerate(grad_norms):
        others = (sum(grad_norms) - g) / (M - 1)
        preempts = g > others if strategy == "average" else g == largest
        if not preempts or g == 0:
            factors.append(1.0)
            continue
        share = g / (g + others)  # r / (1 + r) = 1 / (1 + 1/r), in (0, 1]
        factors.append(1.0 - math.tanh(alpha * share))
    return factors


def scale_gradients(module: nn.Module, factor: float) -> None:
    """``grad p <- factor * grad p`` for every parameter of ``module`` that has a gradient."""
    for p in module.parameters():
        if p.grad is not None:
            p.grad.mul_(factor)


@dataclass
class ScalerReport:
    grad_norms: list[dict[str, float]]  # per stage: module name -> g_m before scaling
    factors: list[dict[str, float]]  # per stage: module name -> f_m applied


class PreemptionGradientScaler:
    """Call after ``loss.backward()`` and before clipping and ``optimiser.step()``.

    Args:
        stages: one mapping ``name -> module`` per stage (the code: stage 1 the unimodal encoders,
            stage 2 the cross-modal attention modules). Each stage is compared within itself.
        alphas: strength per stage (code: ``hyperalpha = 0.01``, ``hyperbeta = 0.01``); one float is
            used for every stage.
        strategies: ``"average"`` or ``"max"`` per stage (code: ``strategy`` for stage 1, default
            ``"average"``; stage 2 always compares its two modules, which is ``"average"``).
    """

    def __init__(self, stages: Sequence[Mapping[str, nn.Module]], *, alphas: float | Sequence[float] = 0.01,
                 strategies: Strategy | Sequence[Strategy] = "average"):
        self.stages = [dict(stage) for stage in stages]
        n = len(self.stages)
        self.alphas = [alphas] * n if isinstance(alphas, (int, float)) else list(alphas)
        self.strategies = [strategies] * n if isinstance(strategies, str) else list(strategies)
        if len(self.alphas) != n or len(self.strategies) != n:
            raise ValueError("give one alpha and one strategy per stage")

    def __call__(self) -> ScalerReport:
        norms_out, factors_out = [], []
        for stage, alpha, strategy in zip(self.stages, self.alphas, self.strategies):
            norms = {name: average_gradient_norm(module) for name, module in stage.items()}
            factors = dict(zip(stage, preemption_factors(list(norms.values()), alpha, strategy=strategy)))
            for name, module in stage.items():
                scale_gradients(module, factors[name])
            norms_out.append(norms)
            factors_out.append(factors)
        return ScalerReport(norms_out, factors_out)


# ---------------------------------------------------------------------------------------------------
# A small multimodal classifier with a sparse-MoE fusion layer
# ---------------------------------------------------------------------------------------------------


@dataclass
class ClassifierOutput:
    logits: Tensor  # [B, C]
    tokens: dict[str, Tensor]  # per modality, the encoder output [B, d] (what the unimodal probes read)
    moe: MoEOutput  # the fusion layer's routing, load-balance and z losses


class MultimodalSMoEClassifier(nn.Module):
    """Per-modality MLP encoders -> one token each -> sparse MoE over the ``M`` tokens -> mean -> head.

    Args:
        input_dims: ``{modality: input width}``; the order fixes the modality ids.
        num_classes: ``C``.
        d_model: token width ``d``.
        encoder_hidden: hidden width of every encoder ``Linear -> ReLU -> Linear``.
        num_experts, top_k: the fusion MoE (code defaults 3 and 2).
        expert_hidden: FFN width of each expert.
    """

    def __init__(self, input_dims: Mapping[str, int], num_classes: int, *, d_model: int = 32,
                 encoder_hidden: int = 64, num_experts: int = 3, top_k: int = 2, expert_hidden: int = 64):
        super().__init__()
        self.modalities = list(input_dims)
        self.encoders = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(width, encoder_hidden), nn.ReLU(), nn.Linear(encoder_hidden, d_model))
            for m, width in input_dims.items()
        })
        self.modality_embedding = nn.Parameter(torch.randn(len(input_dims), d_model) * 0.02)
        self.norm = nn.LayerNorm(d_model)
        self.moe = SparseMoE(d_model, expert_hidden, num_experts, top_k)  # dropless, renormalised top-k
        self.head = nn.Linear(d_model, num_classes)

    def encode(self, modality: str, x: Tensor) -> Tensor:
        """The unimodal feature ``[B, d]`` of one modality."""
        return self.encoders[modality](x)

    def forward(self, inputs: Mapping[str, Tensor]) -> ClassifierOutput:
        """``inputs[m]``: ``[B, input_dims[m]]`` for every modality."""
        tokens = {m: self.encode(m, inputs[m]) for m in self.modalities}
        h = torch.stack([tokens[m] for m in self.modalities], 1) + self.modality_embedding  # [B, M, d]
        moe = self.moe(self.norm(h))
        fused = (h + moe.output).mean(1)  # residual MoE, then mean over modalities
        return ClassifierOutput(self.head(fused), tokens, moe)


# ---------------------------------------------------------------------------------------------------
# Unimodal probes: how much each encoder learned on its own
# ---------------------------------------------------------------------------------------------------


def probe_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                   *, ridge: float = 1.0) -> float:
    """Accuracy of a linear probe fitted on frozen features: a ridge least-squares classifier.

    Features are standardised with the training statistics, a bias column is added, and
    ``W = (X^T X + ridge I)^-1 X^T Y`` is solved in closed form against one-hot targets ``Y``; the class
    is ``argmax(x W)``. Closed form, so the probe is deterministic and costs one small solve (a logistic
    probe fitted by gradient descent took longer than training the model in the notebook). The encoder
    is not touched (features are detached).
    """
    train_features, test_features = train_features.detach().double(), test_features.detach().double()
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    add_bias = lambda z: torch.cat([(z - mean) / std, torch.ones(z.shape[0], 1, dtype=z.dtype)], -1)
    X, X_test = add_bias(train_features), add_bias(test_features)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    Y = F.one_hot(train_labels, num_classes).double()
    W = torch.linalg.solve(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y)
    return ((X_test @ W).argmax(-1) == test_labels).float().mean().item()


__all__ = [
    "ClassifierOutput",
    "MultimodalSMoEClassifier",
    "PreemptionGradientScaler",
    "ScalerReport",
    "average_gradient_norm",
    "preemption_factors",
    "probe_accuracy",
    "scale_gradients",
]
