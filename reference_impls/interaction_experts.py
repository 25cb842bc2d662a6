"""I2MoE: interaction experts (uniqueness, synergy, redundancy) and a reweighting model that explains.

Xin et al., "I2MoE: Interpretable Multimodal Interaction-aware Mixture-of-Experts", arXiv 2505.19190;
official code ``Raina-Xin/I2MoE`` (``src/imoe/InteractionMoE.py``, ``src/imoe/imoe_train.py``,
``src/imoe/train_transformer.py``; read at commit 75b578e1, as restated in the notes, section 7).

What the paper does, and why
----------------------------
A multimodal label can come from different *interactions* between modalities (partial information
decomposition): information **unique** to one modality, information **redundant** across modalities
(either one suffices), or **synergistic** information that only the combination carries (an XOR).
A single fusion network mixes all of these and cannot say which one a prediction used. I2MoE trains
``M + 2`` **interaction experts** for ``M`` modalities (``M`` uniqueness experts, one synergy expert,
one redundancy expert), each a copy of the fusion model, and pushes each towards its interaction with
a weakly supervised loss built from **modality perturbation**: run the expert again with modality j's
embedding replaced by random noise and compare the outputs. A **reweighting model** gives per-sample
weights over the experts; the prediction is their weighted sum, and the weights are the explanation
("this sample was decided by synergy").

Equations (``e_j`` the encoded embedding of modality j, ``o_i^0`` expert i's output on clean inputs,
``o_i^(j)`` its output with ``e_j`` replaced by ``randn_like(e_j)``)::

    w   = softmax(MLP_rw([pool(e_1), ..., pool(e_M)]) / tau)          [B, M+2]   reweighting
    y^  = sum_i w_i o_i^0                                             [B, C]     prediction (logits)

    L_uni,j = mean_{k != j} TripletMargin(anchor o_j^0, positive o_j^(k), negative o_j^(j); margin 1, p 2)
              removing modality j must move expert j more than removing any other modality
    L_syn   = mean_j cos(o_syn^0, o_syn^(j))          removing any modality must change the output
    L_red   = mean_j (1 - cos(o_red^0, o_red^(j)))    removing any single modality must not
    L_int   = (sum_j L_uni,j + L_syn + L_red) / (M + 2)
    L       = CE(y^, y) + lambda_int * L_int

Every expert runs ``1 + M`` times per step (clean plus one pass per perturbed modality). Inference
uses only the clean pass.

Which sources and defaults this follows (notes section 7)
---------------------------------------------------------
* ``M + 2`` experts, their order here ``[uni_1 .. uni_M, synergy, redundancy]``; the perturbation by
  ``randn_like``; triplet margin 1 with p = 2; cosine losses; the ``(M + 2)`` normalisation;
  the prediction as the weighted sum of the experts' logits (``InteractionMoE.py``).
* Reweighting: an MLP over the concatenated mean-pooled embeddings, dropout 0.5, softmax with
  temperature; ``temperature_rw = 1``, ``hidden_dim_rw = 256``, ``num_layer_rw = 1`` and
  ``interaction_loss_weight = 0.01`` (``train_transformer.py``; the MOSI script sweeps the weight over
  {0.3, 0.5, 0.7}).
* The losses act on expert **outputs** (logits) in the classification code. ``interaction_space=
  "embedding"`` applies them to each expert's fused embedding (the input of its classifier head)
  instead, as the notes recommend for binary tasks, where cosine on 2-dimensional logits is nearly
  degenerate.
* The classification variant's synergy loss (minimise cosine: push apart) is used. The regression
  variant's opposite sign (``InteractionMoERegression.py`` minimises the MSE between clean and
  perturbed outputs, pulling them together) is a defect in the notes' reading and is not reproduced.

Where this simplifies
---------------------
* Experts are MLP fusion models (the official experts are deep copies of a transformer fusion
  model, optionally sparse MoE; the detached gate loss of that path is not reproduced). All
  ``(M+2) x (1+M)`` expert passes run as **one** call of the shared core's ``Experts`` (stacked
  weights, one block of rows per expert: no Python loop over experts), followed by one batched
  per-expert linear head.
* Encoders are per-modality MLPs shared by all experts and by the reweighting model; the experts
  take the concatenated mean-pooled embeddings (inputs may be ``[B, d_j]`` or ``[B, L_j, d_j]``).
* One noise draw per modality per step is shared by all experts (the official code draws per call);
  pass ``generator`` for reproducible interaction losses (the notes: "fix the seeds per step when
  comparing runs").
* ``LateFusion`` (sum of per-modality classifiers' logits) is a baseline, not part of I2MoE.

Shapes: ``B`` samples, ``M`` modalities, ``h`` embedding width per modality, ``C`` classes,
``X = M + 2`` experts, ``V = 1 + M`` input variants (clean first, then modality j perturbed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impls.moe import Experts

InteractionSpace = Literal["logits", "embedding"]


def expert_names(num_modalities: int) -> list[str]:
    """``["uniqueness_0", ..., "uniqueness_{M-1}", "synergy", "redundancy"]``: the expert order."""
    return [f"uniqueness_{j}" for j in range(num_modalities)] + ["synergy", "redundancy"]


# ---------------------------------------------------------------------------------------------------
# The interaction losses, on expert outputs of shape [V, B, D] (V = 1 + M variants, clean first)
# ---------------------------------------------------------------------------------------------------


def uniqueness_loss(outputs: Tensor, modality: int, *, margin: float = 1.0) -> Tensor:
    """``L_uni,j``: triplet margin loss with anchor the clean output, negative the output with modality
    ``j`` perturbed, positives the outputs with each other modality perturbed (mean over positives):
    ``mean_b max(||a - p_k||_2 - ||a - n||_2 + margin, 0)``.

    Args:
        outputs: ``[1 + M, B, D]`` one expert's outputs, clean first, then modality 0..M-1 perturbed.
        modality: ``j``.
    """
    anchor, negative = outputs[0], outputs[1 + modality]
    others = [k for k in range(outputs.shape[0] - 1) if k != modality]
    losses = [F.triplet_margin_loss(anchor, outputs[1 + k], negative, margin=margin, p=2) for k in others]
    return torch.stack(losses).mean()


def synergy_loss(outputs: Tensor) -> Tensor:
    """``L_syn = mean_j mean_b cos(o^0, o^(j))``: minimised when perturbing any modality changes the output."""
    return F.cosine_similarity(outputs[:1], outputs[1:], dim=-1).mean()


def redundancy_loss(outputs: Tensor) -> Tensor:
    """``L_red = mean_j mean_b (1 - cos(o^0, o^(j)))``: minimised when no single perturbation changes it."""
    return (1 - F.cosine_similarity(outputs[:1], outputs[1:], dim=-1)).mean()


def interaction_losses(outputs: Tensor, *, margin: float = 1.0) -> dict[str, Tensor]:
    """All interaction losses from every expert's outputs.

    Args:
        outputs: ``[M + 2, 1 + M, B, D]``, experts in the order of ``expert_names``.

    Returns:
        ``{"uniqueness_j": ..., "synergy": ..., "redundancy": ..., "interaction": L_int}`` with
        ``L_int = (sum_j L_uni,j + L_syn + L_red) / (M + 2)``.
    """
    M = outputs.shape[0] - 2
    losses = {f"uniqueness_{j}": uniqueness_loss(outputs[j], j, margin=margin) for j in range(M)}
    losses["synergy"] = synergy_loss(outputs[M])
    losses["redundancy"] = redundancy_loss(outputs[M + 1])
    losses["interaction"] = torch.stack(list(losses.values())).sum() / (M + 2)
    return losses


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


@dataclass
class I2MoEOutput:
    logits: Tensor  # [B, C]  y^ = sum_i w_i o_i^0
    weights: Tensor  # [B, M+2]  reweighting (the explanation), rows sum to 1
    expert_logits: Tensor  # [M+2, B, C]  clean expert outputs o_i^0
    losses: dict[str, Tensor] | None  # interaction losses (None when the perturbed passes were skipped)


def _mlp(d_in: int, d_hidden: int, d_out: int, layers: int, dropout: float) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(d_in if i == 0 else d_hidden, d_hidden), nn.ReLU(), nn.Dropout(dropout)]
    mods.append(nn.Linear(d_hidden if layers else d_in, d_out))
    return nn.Sequential(*mods)


class InteractionMoE(nn.Module):
    """I2MoE over ``M`` modalities with MLP fusion experts.

    Args:
        input_dims: feature size ``d_j`` of each modality's input (``[B, d_j]`` or ``[B, L_j, d_j]``).
        num_classes: ``C``.
        embed_dim: ``h``, each encoder's output width.
        expert_hidden: hidden width of every fusion expert ``M h -> hidden -> M h``.
        reweight_hidden, reweight_layers, reweight_dropout: the reweighting MLP (official defaults
            256, 1 hidden layer, dropout 0.5).
        temperature: ``tau`` of the reweighting softmax (official 1).
        margin: the triplet margin of the uniqueness loss (official 1).
        interaction_space: ``"logits"`` (official) or ``"embedding"`` (each expert's fused embedding).
        expert_backend: see ``reference_impls.moe.Experts``.
    """

    def __init__(
        self,
        input_dims: Sequence[int],
        num_classes: int,
        *,
        embed_dim: int = 32,
        expert_hidden: int = 64,
        reweight_hidden: int = 256,
        reweight_layers: int = 1,
        reweight_dropout: float = 0.5,
        temperature: float = 1.0,
        margin: float = 1.0,
        interaction_space: InteractionSpace = "logits",
        expert_backend: str = "auto",
    ):
        super().__init__()
        if len(input_dims) < 2:
            raise ValueError("I2MoE needs at least two modalities")
        if interaction_space not in ("logits", "embedding"):
            raise ValueError(f"unknown interaction_space {interaction_space!r}")
        M = len(input_dims)
        self.num_modalities, self.num_experts, self.num_classes = M, M + 2, num_classes
        self.temperature, self.margin, self.interaction_space = temperature, margin, interaction_space
        self.encoders = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim)) for d in input_dims]
        )
        fused = M * embed_dim
        # X = M + 2 fusion experts, stacked: fc2_i(gelu(fc1_i(z))) : [M h] -> [M h]
        self.experts = Experts(self.num_experts, fused, expert_hidden, backend=expert_backend)
        # one linear classifier head per expert, stacked: [X, M h, C] and [X, C]
        bound = fused**-0.5
        self.head_weight = nn.Parameter(torch.empty(self.num_experts, fused, num_classes).uniform_(-bound, bound))
        self.head_bias = nn.Parameter(torch.empty(self.num_experts, num_classes).uniform_(-bound, bound))
        self.reweight = _mlp(fused, reweight_hidden, self.num_experts, reweight_layers, reweight_dropout)

    def encode(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Per-modality embeddings ``e_j``: ``[B, h]`` or ``[B, L_j, h]``."""
        if len(inputs) != self.num_modalities:
            raise ValueError(f"expected {self.num_modalities} modalities, got {len(inputs)}")
        return [enc(x) for enc, x in zip(self.encoders, inputs)]

    @staticmethod
    def _pool(e: Tensor) -> Tensor:
        return e.mean(dim=1) if e.dim() == 3 else e  # mean over the modality's tokens

    def run_experts(self, variants: Tensor) -> tuple[Tensor, Tensor]:
        """Every expert on every variant, in one ``Experts`` call.

        Args:
            variants: ``[V, B, M h]`` fused inputs.

        Returns:
            fused embeddings ``[X, V, B, M h]`` and logits ``[X, V, B, C]``.
        """
        V, B, F_ = variants.shape
        X = self.num_experts
        rows = variants.reshape(1, V * B, F_).expand(X, -1, -1).reshape(X * V * B, F_)  # expert-contiguous
        counts = torch.full((X,), V * B, dtype=torch.long, device=variants.device)
        z = self.experts(rows, counts).view(X, V, B, F_)
        logits = torch.einsum("xvbf,xfc->xvbc", z, self.head_weight) + self.head_bias[:, None, None]
        return z, logits

    def variants(self, embeddings: Sequence[Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The ``V = 1 + M`` fused expert inputs ``[V, B, M h]``: clean, then, for each modality j, the
        same with ``e_j`` replaced by ``randn_like(e_j)`` (one draw per modality, shared by all experts)."""
        pooled = [self._pool(e) for e in embeddings]
        out = [torch.cat(pooled, dim=-1)]
        for j, e in enumerate(embeddings):  # fixed loop over the M modalities
            noise = torch.randn(e.shape, generator=generator, device=e.device, dtype=e.dtype)
            out.append(torch.cat(pooled[:j] + [self._pool(noise)] + pooled[j + 1 :], dim=-1))
        return torch.stack(out)

    def forward(
        self,
        inputs: Sequence[Tensor],
        *,
        with_interaction_losses: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> I2MoEOutput:
        """``inputs``: one tensor per modality -> ``I2MoEOutput``.

        ``with_interaction_losses`` (default: ``self.training``) runs the ``M`` perturbed passes and
        returns the losses; ``generator`` seeds the random replacement embeddings.
        """
        embeddings = self.encode(inputs)
        clean = torch.cat([self._pool(e) for e in embeddings], dim=-1)  # [B, M h]
        # w = softmax(MLP(concat pool(e_j)) / tau)
        weights = torch.softmax(self.reweight(clean) / self.temperature, dim=-1)
        losses = None
        compute = self.training if with_interaction_losses is None else with_interaction_losses
        if compute:
            z, logits_all = self.run_experts(self.variants(embeddings, generator))  # [X, V, B, .]
            losses = interaction_losses(logits_all if self.interaction_space == "logits" else z, margin=self.margin)
        else:  # inference: the clean pass only
            _, logits_all = self.run_experts(clean.unsqueeze(0))
        expert_logits = logits_all[:, 0]  # o_i^0, [X, B, C]
        logits = torch.einsum("bx,xbc->bc", weights, expert_logits)  # y^ = sum_i w_i o_i^0
        return I2MoEOutput(logits, weights, expert_logits, losses)


@torch.no_grad()
def perturbation_sensitivity(
    model: InteractionMoE, inputs: Sequence[Tensor], *, generator: torch.Generator | None = None
) -> Tensor:
    """``[M + 2, M]``: for each expert and modality j, the fraction of samples whose predicted class
    (argmax of the expert's logits) changes when ``e_j`` is replaced by noise, the perturbation of the
    training losses. A uniqueness expert for modality j should flip often for j and rarely for the
    others; a redundancy expert rarely for any single j; a synergy expert often for every j."""
    _, logits = model.run_experts(model.variants(model.encode(inputs), generator))
    predicted = logits.argmax(-1)  # [X, V, B]
    return (predicted[:, 1:] != predicted[:, :1]).float().mean(-1)


def training_loss(
    out: I2MoEOutput, labels: Tensor, *, interaction_weight: float = 0.01, label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, float]]:
    """``CE(y^, y) + lambda_int * L_int`` (official ``interaction_loss_weight`` 0.01).

    ``label_smoothing`` (default 0, as the official code) is passed to the cross-entropy.
    Returns the loss and a dict of its parts as floats."""
    task = F.cross_entropy(out.logits, labels, label_smoothing=label_smoothing)
    parts = {"task": task.item()}
    if out.losses is None or interaction_weight == 0:
        return task, parts
    parts.update({k: v.item() for k, v in out.losses.items()})
    return task + interaction_weight * out.losses["interaction"], parts


class LateFusion(nn.Module):
    """Baseline: one classifier per modality, logits summed, ``y^ = sum_j g_j(x_j)``. It cannot
    represent synergy (an XOR across modalities) and gives no per-sample explanation."""

    def __init__(self, input_dims: Sequence[int], num_classes: int, *, hidden: int = 64):
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, num_classes)) for d in input_dims]
        )

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        pooled = [x.mean(dim=1) if x.dim() == 3 else x for x in inputs]
        return torch.stack([branch(x) for branch, x in zip(self.branches, pooled)]).sum(0)


__all__ = [
    "I2MoEOutput",
    "InteractionMoE",
    "LateFusion",
    "expert_names",
    "interaction_losses",
    "perturbation_sensitivity",
    "redundancy_loss",
    "synergy_loss",
    "training_loss",
    "uniqueness_loss",
]
