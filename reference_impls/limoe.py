"""LIMoE: one shared sparse-MoE transformer for images and text, trained contrastively.

Mustafa, Riquelme, Puigcerver, Jenatton, Houlsby. "Multimodal Contrastive Learning with LIMoE:
the Language-Image Mixture of Experts". NeurIPS 2022, arXiv 2206.02770.

What the paper does, and why
----------------------------
CLIP-style models encode images and captions with two separate towers. LIMoE uses **one tower**:
image patches and text tokens go through the *same* transformer, whose MLPs are sparse
mixture-of-experts layers in the V-MoE style (Riquelme et al. 2021). Only the input embeddings and
the pooled output heads are per modality. Training is the image-text contrastive loss. The expert
layers can then split their capacity between the modalities, and the paper reports that
**modality-specific experts emerge on their own**.

Sharing experts across modalities brings new challenges, which the abstract names as training
stability and balanced expert use. Image tokens outnumber text tokens (196 patches of a 224-pixel
image at patch size 16, against a caption of a few dozen tokens at most). Losses that balance the
*whole* token set, like V-MoE's importance and load losses, can then be satisfied while every text
token uses a single expert. LIMoE therefore adds entropy regularisers computed **per modality m**
over that modality's ``n_m`` tokens, with router distribution ``p_m(experts | x_i)``:

    local:   Omega_local(G_m)  = (1/n_m) sum_i H(p_m(experts | x_i))   # want: each token decisive
    global:  Omega_global(G_m) = -H(pbar_m),  pbar_m = (1/n_m) sum_i p_m(experts | x_i)
                                                                     # want: the modality uses many experts
    thresholded global: max(0, tau + Omega_global(G_m)),  tau = ln S  # "soft minimum" of S experts

Minimising the local term pushes each token towards one expert; minimising the global term spreads
the modality's *marginal* usage. The threshold stops the global pressure once the marginal entropy
reaches ln S, that is once the modality uses at least S experts, "multiple experts, but not all of
them" (the paper says this of text). Since H(pbar) <= ln E, choosing S = E gives the unthresholded
global loss shifted by the constant ln E, so one function covers both forms.

Routing is V-MoE's: a softmax router over E experts, top-k with a per-expert capacity
``C = ceil(k * tokens * capacity_factor / E)``, combine weights equal to the raw softmax gates (not
renormalised), and Batch Priority Routing (BPR). When capacity binds, BPR lets the tokens with the
largest maximum gate claim buffer slots first, instead of whichever came first in the batch. Routing
is done by the shared core, :class:`reference_impls.moe.SparseMoE`; this file adds only what is
specific to LIMoE.

Sources and what could be checked
---------------------------------
The full text of arXiv 2206.02770 could not be retrieved in the session that wrote this file (no
network; the stored copies hold the abstract and the "soft minimum" paragraph on the entropy
losses, quoted verbatim in a third-party file). That paragraph sits in the method section (Sec. 2 by
recollection; the section number was not checked). Checked against that text:

* one shared backbone for both modalities, contrastive image-text loss (abstract);
* the per-modality local and global entropy losses and the thresholded global form
  ``max{0, tau + Omega_global}``, ``tau = log(S)`` (the entropy-loss paragraph).

**Not checked** (from the V-MoE line LIMoE builds on, or from recollection of the paper). Each is
a :class:`LIMoEConfig` field, so a reader with the paper can set it:

* top-k = 1 and MoE layers in every second block ("Every-2"), as in V-MoE; the paper's B/16
  controlled study used 8 experts and its larger models 32 (recollection);
* capacity factor 1.0 and BPR on (V-MoE's routing code; LIMoE is built on it);
* which entropy terms apply to which modality, S, and the loss weights. The defaults here put the
  local and the global term on *both* modalities with weight 0.01 each. The thresholded global term
  uses S = E for images (unthresholded) and S = 4 for text (the "several but not all" case the quoted
  paragraph describes). Treat these as this implementation's choice, not the paper's table;
* per-modality pooling: mean pooling followed by a per-modality linear head is this
  implementation's choice;
* learned temperature initialised so that the logit scale is 10 (the Google LiT/big_vision
  convention; CLIP initialises 1/0.07). The scale is clamped at 100 as in CLIP.

Where this differs from V-MoE's routing code (google-research/vmoe ``vmoe/nn/routing.py``), because
the shared core does not do it: V-MoE rounds the capacity up to a multiple of 4, adds Gaussian noise
(std 1/E) to the router logits in training, and splits a batch into several routing groups. Here
the whole batch is one group, without noise or rounding. V-MoE's classic importance and load losses,
which the paper may keep alongside the entropy terms (recollection, unchecked), are not available
either. ``classic_aux_weight`` weighs the core's Switch-style load-balancing loss instead, and its
default of 0 leaves it out.

``notebooks/learner_limoe.ipynb`` trains this model on synthetic shapes and captions, with and without
the entropy losses, and plots each expert's share of image and text tokens.

Shapes: B pairs per batch, N_i patches per image, N_t tokens per caption, d model width, E experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from reference_impls.moe import FeedForward, MoEOutput, Priority, SparseMoE

MODALITIES = ("image", "text")


# ---------------------------------------------------------------------------------------------------
# Per-modality entropy regularisers (the paper's entropy-loss paragraph). Call them once per
# modality with that modality's tokens only: mixing modalities would let plentiful image tokens
# hide a collapsed text routing.
# ---------------------------------------------------------------------------------------------------


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats along the last axis, with 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def local_entropy_loss(router_probs: torch.Tensor) -> torch.Tensor:
    """Omega_local = (1/n) sum_i H(p(experts | x_i)): mean per-token router entropy, in [0, ln E].

    Args:
        router_probs: ``[tokens, num_experts]`` softmax router probabilities of *one* modality's
            tokens (leading axes are flattened).

    Returns:
        Scalar tensor. ``ln E`` for a uniform router, 0 for one-hot routing. An empty token set
        (the modality is absent from the batch) gives 0.
    """
    router_probs = router_probs.reshape(-1, router_probs.shape[-1])
    if router_probs.shape[0] == 0:
        return router_probs.new_zeros(())
    return _entropy(router_probs).mean()


def global_entropy_loss(router_probs: torch.Tensor, soft_min_experts: float) -> torch.Tensor:
    """Thresholded global entropy, max(0, ln S - H(pbar)), with pbar the mean router distribution.

    The paper's entropy-loss paragraph: ``Omega^tau_global(G_m) = max{0, tau + Omega_global(G_m)}`` with
    ``Omega_global = -H(pbar_m)`` and ``tau = ln S``. The loss is 0 once the modality's marginal
    expert usage has entropy of at least ln S, for instance uniform over S or more experts, and it is
    ``ln S`` when every token routes to the same expert. With ``S = E`` it is the unthresholded global
    loss plus the constant ``ln E``.

    Args:
        router_probs: ``[tokens, num_experts]`` router probabilities of *one* modality's tokens.
        soft_min_experts: S >= 1, the number of experts the modality should at least spread over
            (need not be an integer).

    Returns:
        Scalar tensor in ``[0, ln S]``; 0 for an empty token set.
    """
    if soft_min_experts < 1:
        raise ValueError(f"soft_min_experts must be >= 1, got {soft_min_experts}")
    router_probs = router_probs.reshape(-1, router_probs.shape[-1])
    if router_probs.shape[0] == 0:
        return router_probs.new_zeros(())
    mean_probs = router_probs.mean(dim=0)  # pbar_m, [num_experts]
    return F.relu(math.log(soft_min_experts) - _entropy(mean_probs))


# ---------------------------------------------------------------------------------------------------
# Contrastive objective (CLIP / ALIGN form, which LIMoE uses).
# ---------------------------------------------------------------------------------------------------


def contrastive_loss(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of B matched pairs.

    ``L = 1/2 [CE(s Z_img Z_txt^T, I) + CE(s Z_txt Z_img^T, I)]`` with L2-normalised embeddings
    and ``s = exp(log_scale) = 1/T`` (T the learned temperature). Pair j is the positive for row j;
    the other B-1 items of the batch are the negatives.

    Args:
        image_embeddings: ``[B, D]``.
        text_embeddings: ``[B, D]``, row j paired with image j.
        log_scale: scalar tensor, log of the inverse temperature.

    Returns:
        Scalar tensor; ``ln B`` when all logits are equal. Swapping the image and text arguments
        leaves it unchanged.
    """
    image_embeddings = F.normalize(image_embeddings, dim=-1)
    text_embeddings = F.normalize(text_embeddings, dim=-1)
    logits = log_scale.exp() * image_embeddings @ text_embeddings.T  # [B, B], image rows
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


@torch.no_grad()
def retrieval_accuracy(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor
) -> tuple[float, float]:
    """Top-1 retrieval accuracy among B candidates: (image -> text, text -> image).

    Ties count as failures unless the true partner is the first maximum, so a collapsed encoder
    scores at most chance.
    """
    similarity = F.normalize(image_embeddings, dim=-1) @ F.normalize(text_embeddings, dim=-1).T
    targets = torch.arange(similarity.shape[0], device=similarity.device)
    image_to_text = (similarity.argmax(dim=1) == targets).float().mean().item()
    text_to_image = (similarity.argmax(dim=0) == targets).float().mean().item()
    return image_to_text, text_to_image


# ---------------------------------------------------------------------------------------------------
# The one-tower model.
# ---------------------------------------------------------------------------------------------------


@dataclass
class LIMoEConfig:
    """Sizes default to a CPU-sized model; routing and loss defaults are discussed in the module
    docstring (which of them could be checked against the paper, and which could not)."""

    # Inputs.
    image_size: int = 16
    patch_size: int = 4
    image_channels: int = 3
    vocab_size: int = 32
    max_text_len: int = 8
    # Shared transformer.
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    d_hidden: int = 128  # FFN width of the dense MLPs and of every expert
    embed_dim: int = 64  # width of the contrastive embeddings
    # Sparse MoE (V-MoE routing; values unchecked against the LIMoE text, see the module docstring).
    moe_every: int = 2  # blocks 1, 3, 5, ... (0-based) are MoE: V-MoE's "Every-2"
    num_experts: int = 8
    top_k: int = 1
    capacity_factor: float | None = 1.0  # None: dropless
    priority: Priority = "batch"  # "batch" = Batch Priority Routing; "position" = earlier tokens first
    renormalize: bool = False  # V-MoE combines with the raw softmax gates
    # Contrastive head.
    logit_scale_init: float = 10.0  # 1/T at initialisation
    max_logit_scale: float = 100.0  # CLIP's clamp on 1/T
    # Per-modality entropy losses; each weight multiplies a loss averaged over the MoE layers.
    local_weight: dict[str, float] = field(default_factory=lambda: {"image": 0.01, "text": 0.01})
    global_weight: dict[str, float] = field(default_factory=lambda: {"image": 0.01, "text": 0.01})
    soft_min_experts: dict[str, float] = field(default_factory=lambda: {"image": 8.0, "text": 4.0})
    # Weight on the core's Switch load-balancing loss over all tokens (0: not used).
    classic_aux_weight: float = 0.0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Block(nn.Module):
    """Pre-LN transformer block shared by both modalities.

    Attention runs within each sequence, so an image never attends to a caption: one tower,
    two separate encodings. The MLP, dense or sparse, takes every token of the batch in a
    single call, so the experts, their capacity and Batch Priority Routing are shared across
    modalities. Image tokens are concatenated first, which matters only for position priority.
    """

    def __init__(self, config: LIMoEConfig, *, sparse: bool):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = nn.MultiheadAttention(config.d_model, config.n_heads, batch_first=True)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        if sparse:
            self.mlp = SparseMoE(
                config.d_model,
                config.d_hidden,
                config.num_experts,
                config.top_k,
                config.capacity_factor,
                config.renormalize,
                priority=config.priority,
            )
        else:
            self.mlp = FeedForward(config.d_model, config.d_hidden)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_attn(x)
        return x + self.attn(h, h, h, need_weights=False)[0]

    def forward(
        self, tokens: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], MoEOutput | None]:
        """``tokens[m]``: ``[B_m, N_m, d]`` per present modality -> same shapes, and the MoE output."""
        tokens = {m: self._attend(x) for m, x in tokens.items()}
        flat = torch.cat([self.ln_mlp(x).flatten(0, 1) for x in tokens.values()])  # [sum B_m N_m, d]
        moe_out = self.mlp(flat) if isinstance(self.mlp, SparseMoE) else None
        mlp_out = moe_out.output if moe_out is not None else self.mlp(flat)
        sizes = [x.shape[0] * x.shape[1] for x in tokens.values()]
        pieces = mlp_out.split(sizes)
        return {m: x + y.view_as(x) for (m, x), y in zip(tokens.items(), pieces)}, moe_out


@dataclass
class LIMoEOutput:
    image_embeddings: torch.Tensor | None  # [B, embed_dim], not normalised
    text_embeddings: torch.Tensor | None  # [B, embed_dim]
    log_scale: torch.Tensor  # scalar, log(1/T) after clamping
    # One dict per MoE layer: router probabilities of each present modality's tokens, [B*N_m, E].
    router_probs: list[dict[str, torch.Tensor]]
    # One entry per MoE layer, for kept/dropped counts and the core's aux losses.
    moe_outputs: list[MoEOutput]


class LIMoE(nn.Module):
    """One transformer for image patches and text tokens; per-modality embeddings and heads.

    ``forward(images [B, C, H, W], text [B, N_t] long)`` returns a :class:`LIMoEOutput`. Either input
    may be None, to encode one modality alone (for a retrieval index). Captions have a fixed length
    here; there is no padding mask.
    """

    def __init__(self, config: LIMoEConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        # Modality-specific input embeddings: patchify + project, and a token table.
        self.patch_embed = nn.Conv2d(config.image_channels, d, config.patch_size, stride=config.patch_size)
        self.image_pos = nn.Parameter(torch.randn(config.num_patches, d) * 0.02)
        self.token_embed = nn.Embedding(config.vocab_size, d)
        self.text_pos = nn.Parameter(torch.randn(config.max_text_len, d) * 0.02)
        sparse = [i % config.moe_every == config.moe_every - 1 for i in range(config.n_layers)]
        self.blocks = nn.ModuleList(Block(config, sparse=s) for s in sparse)
        self.ln_final = nn.LayerNorm(d)
        # Modality-specific output heads after mean pooling.
        self.heads = nn.ModuleDict({m: nn.Linear(d, config.embed_dim, bias=False) for m in MODALITIES})
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))

    def embed_inputs(
        self, images: torch.Tensor | None, text: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        tokens = {}
        if images is not None:
            patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, N_i, d]
            tokens["image"] = patches + self.image_pos
        if text is not None:
            tokens["text"] = self.token_embed(text) + self.text_pos[: text.shape[1]]  # [B, N_t, d]
        if not tokens:
            raise ValueError("give images, text, or both")
        return tokens

    def forward(self, images: torch.Tensor | None = None, text: torch.Tensor | None = None) -> LIMoEOutput:
        tokens = self.embed_inputs(images, text)
        router_probs, moe_outputs = [], []
        for block in self.blocks:
            tokens, moe_out = block(tokens)
            if moe_out is not None:
                sizes = [x.shape[0] * x.shape[1] for x in tokens.values()]
                router_probs.append(dict(zip(tokens, moe_out.routing.router_probs.split(sizes))))
                moe_outputs.append(moe_out)
        pooled = {m: self.ln_final(x).mean(dim=1) for m, x in tokens.items()}
        embeddings = {m: self.heads[m](x) for m, x in pooled.items()}
        log_scale = self.log_scale.clamp(max=math.log(self.config.max_logit_scale))
        return LIMoEOutput(
            embeddings.get("image"), embeddings.get("text"), log_scale, router_probs, moe_outputs
        )


def entropy_losses(output: LIMoEOutput, config: LIMoEConfig) -> dict[str, torch.Tensor]:
    """Unweighted per-modality losses averaged over the MoE layers.

    Keys ``"{modality}_local"`` and ``"{modality}_global"`` for each modality present in the batch.
    Each is computed over that modality's tokens only, as in the paper.
    """
    losses: dict[str, torch.Tensor] = {}
    num_layers = len(output.router_probs)
    for layer_probs in output.router_probs:
        for m, probs in layer_probs.items():
            local = local_entropy_loss(probs) / num_layers
            glob = global_entropy_loss(probs, config.soft_min_experts[m]) / num_layers
            losses[f"{m}_local"] = losses.get(f"{m}_local", 0) + local
            losses[f"{m}_global"] = losses.get(f"{m}_global", 0) + glob
    return losses


def training_loss(output: LIMoEOutput, config: LIMoEConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Contrastive loss plus the weighted entropy (and optional classic) auxiliary losses.

    Returns the scalar to minimise and its unweighted parts as floats, for logging.
    """
    contrastive = contrastive_loss(output.image_embeddings, output.text_embeddings, output.log_scale)
    total = contrastive
    parts = {"contrastive": contrastive.item()}
    for name, value in entropy_losses(output, config).items():
        modality, kind = name.split("_")
        weight = config.local_weight[modality] if kind == "local" else config.global_weight[modality]
        total = total + weight * value
        parts[name] = value.item()
    if config.classic_aux_weight and output.moe_outputs:
        balance = torch.stack([o.aux_losses["load_balance"] for o in output.moe_outputs]).mean()
        total = total + config.classic_aux_weight * balance
        parts["load_balance"] = balance.item()
    return total, parts


@torch.no_grad()
def expert_modality_counts(output: LIMoEOutput) -> torch.Tensor:
    """``[num_moe_layers, num_modalities_present, E]``: tokens of each modality whose first choice
    is each expert (counted before capacity dropping), for plotting modality specialisation."""
    counts = []
    for layer_probs in output.router_probs:
        E = next(iter(layer_probs.values())).shape[-1]
        counts.append(
            torch.stack([torch.bincount(p.argmax(-1), minlength=E) for p in layer_probs.values()])
        )
    return torch.stack(counts)


__all__ = [
    "LIMoE",
    "LIMoEConfig",
    "LIMoEOutput",
    "contrastive_loss",
    "entropy_losses",
    "expert_modality_counts",
    "global_entropy_loss",
    "local_entropy_loss",
    "retrieval_accuracy",
    "training_loss",
]
