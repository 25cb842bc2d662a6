"""A tiny MoE-LLaVA: vision tower -> projector -> decoder LM with sparse-MoE FFNs, and MoE-tuning.

What the paper does (Lin et al. 2024, "MoE-LLaVA: Mixture of Experts for Large Vision-Language Models",
arXiv 2401.15947; official code PKU-YuanGroup/MoE-LLaVA)
--------------------------------------------------------------------------------------------------
A LLaVA-style model: a frozen CLIP image encoder turns an image into patch features, a two-layer MLP
projector maps them into the LM's embedding space, and the projected patches are fed to a decoder LM
as a prefix of "visual tokens" before the text. MoE-LLaVA trains it in three stages ("MoE-tuning"):

1. **Projector** (``scripts/v1/*/pretrain.sh``: ``--tune_mm_mlp_adapter True``, lr 1e-3): image-caption
   pairs; only the projector trains, the vision tower and the LM are frozen.
2. **Dense instruction tuning** (``finetune.sh``, lr 2e-5): multimodal instruction data only; the
   projector and the whole LM train, the vision tower stays frozen.
3. **MoE tuning** (``finetune_moe.sh``, lr 2e-5): multimodal instruction data plus text-only data (the
   official ``docs/TRAIN.md`` lists the text-only set for this stage, not for stage 2). The FFN of every
   other decoder layer is *upcycled* into E copies with a fresh router (``moe_mode="sparse"``: layers
   ``range(num_layers)[::2]``), and only the FFN weights and routers train (``--train_modules fc1 fc2 wg``
   for Phi-2: the FFNs of the dense layers too); attention, embeddings, projector and vision tower are
   frozen.
   Loss: ``L = L_CE + 0.01 * sum_{MoE layers} l_aux`` (``router_aux_loss_coef=0.01``; a sum over
   layers, not a mean; ``llava_phi_moe.py`` adds every layer's DeepSpeed ``l_aux``).

MoE defaults, all from the official scripts or ``moellava/train/train.py`` (see ``MoELLaVAConfig``):
E=4, top-2, capacity factor 1.5 in training (every ``finetune_moe.sh``), 2.0 in evaluation
(``train.py`` default ``eval_capacity_factor``), ``min_capacity=0``, ``use_residual=False``, aux
coefficient 0.01. The MoE layer is ``reference_impls.moe.SparseMoE`` with DeepSpeed v0.9.5 top-2
semantics (the version MoE-LLaVA pins); with E=4, k=2 the eval capacity ``ceil(2 * 2.0 * S / 4) = S``
makes evaluation dropless.

What is scaled down or differs, and why
---------------------------------------
* Sizes: a 16x16-pixel image in 4x4 patches (16 visual tokens), widths of 64, 4 decoder layers (MoE in
  layers 0 and 2), so that all three stages run on a laptop CPU in about a minute.
* The vision tower stands in for CLIP ViT-L/14-336: a 2-block ViT, frozen throughout as CLIP is, but
  randomly initialised (there is no pretrained CLIP at this size). As in LLaVA
  (``--mm_vision_select_layer -2``) the features are the patch tokens of the penultimate layer, no CLS.
* The projector is ``mlp2x_gelu`` (``--image_projector_type mlp2x_gelu``): Linear, GELU, Linear.
* The LM is a pre-LayerNorm GPT-style decoder with learned absolute positions and a GELU FFN named
  ``fc1``/``fc2`` like Phi-2's. Phi-2 itself uses parallel attention/FFN blocks and rotary positions;
  neither matters to the MoE mechanics. The LM here starts from random weights, not a pretrained LM.
* Second expert: DeepSpeed v0.9.5 samples it with Gumbel noise in training *and* evaluation. The default
  ``second_expert_sampling="train"`` keeps the training behaviour and makes evaluation deterministic;
  ``"always"`` reproduces DeepSpeed exactly.
* Learning rates are the caller's: the official 1e-3 / 2e-5 / 2e-5 fine-tune a pretrained 2.7B model;
  a 300k-parameter model from scratch needs larger steps (the notebook uses 1e-2 / 1e-3 / 1e-3, and
  3e-3 for a text-only "stage 0" that stands in for starting from a pretrained LM; ``set_stage(0)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference_impls.moe import FeedForward, MoEOutput, SparseMoE

IGNORE_INDEX = -100  # LLaVA's label for positions without loss (image tokens, prompts, padding)
MoEMode = Literal["sparse", "dense", "first_half", "second_half"]


@dataclass
class MoELLaVAConfig:
    # vision tower (CLIP ViT-L/14-336 in the paper)
    image_size: int = 16
    patch_size: int = 4
    channels: int = 3
    vision_width: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_select_layer: int = -2  # --mm_vision_select_layer -2
    # language model
    vocab_size: int = 64
    max_text_len: int = 16
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_hidden: int = 256
    # MoE (finetune_moe.sh and train.py defaults)
    moe_mode: MoEMode = "sparse"
    num_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.5
    eval_capacity_factor: float = 2.0
    min_capacity: int = 0
    router_aux_loss_coef: float = 0.01
    second_expert_sampling: Literal["off", "train", "always"] = "train"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def moe_layer_indices(mode: MoEMode, num_layers: int) -> list[int]:
    """Which decoder layers get an MoE FFN (``moe_mode`` in MoE-LLaVA's ``train.py``)."""
    return {
        "sparse": list(range(num_layers))[::2],
        "dense": list(range(num_layers)),
        "first_half": list(range(num_layers // 2)),
        "second_half": list(range(num_layers // 2, num_layers)),
    }[mode]


class Block(nn.Module):
    """Pre-LN transformer block; ``mlp`` is a ``FeedForward`` or, after upcycling, a ``SparseMoE``."""

    def __init__(self, d_model: int, n_heads: int, d_hidden: int, *, causal: bool):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.ln_1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp: FeedForward | SparseMoE = FeedForward(d_model, d_hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, MoEOutput | None]:
        B, S, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(B, S, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.proj(attn.transpose(1, 2).reshape(B, S, d))
        if isinstance(self.mlp, SparseMoE):
            moe = self.mlp(self.ln_2(x))  # all B*S tokens form one routing group, as in DeepSpeed
            return x + moe.output, moe
        return x + self.mlp(self.ln_2(x)), None


class VisionTower(nn.Module):
    """A small ViT standing in for CLIP; returns the patch features of ``vision_select_layer``."""

    def __init__(self, cfg: MoELLaVAConfig):
        super().__init__()
        self.select_layer = cfg.vision_select_layer
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.vision_width, cfg.patch_size, stride=cfg.patch_size)
        self.pos = nn.Parameter(0.02 * torch.randn(cfg.num_patches, cfg.vision_width))
        self.blocks = nn.ModuleList(
            Block(cfg.vision_width, cfg.vision_heads, 4 * cfg.vision_width, causal=False)
            for _ in range(cfg.vision_layers)
        )

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos  # [B, P, vision_width]
        hidden_states = [x]  # as HF's output_hidden_states: embeddings, then every block's output
        for block in self.blocks:
            x = block(x)[0]
            hidden_states.append(x)
        return hidden_states[self.select_layer]


@dataclass
class MoELLaVAOutput:
    logits: Tensor  # [B, P + L, vocab]
    loss: Tensor | None  # lm_loss + aux_loss
    lm_loss: Tensor | None  # next-token cross-entropy over labelled positions
    aux_loss: Tensor  # router_aux_loss_coef * sum over MoE layers of the load-balancing loss
    moe_outputs: dict[int, MoEOutput] = field(default_factory=dict)  # layer index -> routing details
    image_mask: Tensor | None = None  # [B, P + L] bool: which positions are visual tokens


class TinyMoELLaVA(nn.Module):
    """Vision tower + ``mlp2x_gelu`` projector + decoder LM; ``upcycle()`` turns it into MoE-LLaVA."""

    def __init__(self, cfg: MoELLaVAConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTower(cfg)
        self.projector = nn.Sequential(
            nn.Linear(cfg.vision_width, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, cfg.d_model)
        )
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(cfg.num_patches + cfg.max_text_len, cfg.d_model))
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.d_hidden, causal=True) for _ in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.vision.requires_grad_(False)  # frozen in every stage, as CLIP in LLaVA

    @property
    def moe_layers(self) -> list[int]:
        return [i for i, b in enumerate(self.blocks) if isinstance(b.mlp, SparseMoE)]

    def upcycle(self) -> "TinyMoELLaVA":
        """Stage 3's initialisation: every selected FFN becomes E identical experts plus a new router
        (DeepSpeed ``Experts`` deep-copies the dense MLP; MoE-LLaVA asserts the copies equal it)."""
        if self.moe_layers:
            raise RuntimeError("already upcycled")
        c = self.cfg
        for i in moe_layer_indices(c.moe_mode, c.n_layers):
            self.blocks[i].mlp = SparseMoE.from_dense(
                self.blocks[i].mlp,
                c.num_experts,
                c.top_k,
                capacity_factor=c.capacity_factor,
                eval_capacity_factor=c.eval_capacity_factor,
                min_capacity=c.min_capacity,
                second_expert_sampling=c.second_expert_sampling,
            )
        return self

    def set_stage(self, stage: int) -> list[str]:
        """Freeze everything, then unfreeze what the stage trains; returns the trainable names.
        Stage 3 on a model that was not upcycled trains its dense FFNs the same way: a control for
        what the experts add beyond more FFN training."""
        for name, p in self.named_parameters():
            p.requires_grad_(trainable_in_stage(name, stage))
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def forward(self, images: Tensor | None, input_ids: Tensor, labels: Tensor | None = None) -> MoELLaVAOutput:
        """``images [B, C, H, W]`` or None for a text-only batch, ``input_ids [B, L]``; ``labels [B, L]``
        with ``IGNORE_INDEX`` where no loss is taken. Visual tokens are prepended to the text (LLaVA
        splices them in at ``<image>``, which our prompts put first). MoE-LLaVA batches image and
        text-only samples separately (``--group_by_modality_length True``), and so do we."""
        text = self.embed(input_ids)
        visual = self.projector(self.vision(images)) if images is not None else text[:, :0]  # [B, P, d]
        # Text positions start after the image slot even in text-only batches, so that text-only
        # (pre)training and image batches share them (a toy-scale choice; LLaVA counts from 0).
        P = self.cfg.num_patches
        x = torch.cat([visual + self.pos[: visual.shape[1]], text + self.pos[P : P + text.shape[1]]], dim=1)
        moe_outputs = {}
        for i, block in enumerate(self.blocks):
            x, moe = block(x)
            if moe is not None:
                moe_outputs[i] = moe
        logits = self.lm_head(self.ln_f(x))
        aux = sum((m.aux_losses["load_balance"] for m in moe_outputs.values()), x.new_zeros(()))
        aux_loss = self.cfg.router_aux_loss_coef * aux
        image_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        image_mask[:, : visual.shape[1]] = True
        lm_loss = loss = None
        if labels is not None:
            full = torch.cat([labels.new_full(visual.shape[:2], IGNORE_INDEX), labels], dim=1)
            # next-token prediction: position s predicts token s+1
            lm_loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), full[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
            )
            loss = lm_loss + aux_loss
        return MoELLaVAOutput(logits, loss, lm_loss, aux_loss, moe_outputs, image_mask)


def trainable_in_stage(name: str, stage: int) -> bool:
    """MoE-tuning's freezing schedule by parameter name (see the module docstring for the scripts)."""
    if name.startswith("vision."):
        return False
    if stage == 0:  # not MoE-LLaVA's: stands in for starting from a pretrained LM (Phi-2 etc.)
        return not name.startswith("projector.")
    if stage == 1:
        return name.startswith("projector.")
    if stage == 2:
        return True
    if stage == 3:  # --train_modules fc1 fc2 wg: every FFN (dense and experts) and the routers
        return ".mlp." in name
    raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage}")


def cosine_with_warmup(step: int, total: int, warmup_ratio: float = 0.03) -> float:
    """LR multiplier of the official scripts (``--lr_scheduler_type cosine --warmup_ratio 0.03``)."""
    warmup = max(1, math.ceil(warmup_ratio * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_stage(
    model: TinyMoELLaVA,
    stage: int,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    *,
    steps: int,
    lr: float,
) -> list[dict[str, float]]:
    """Run one MoE-tuning stage: set the stage's trainable parameters, then AdamW (weight decay 0, as
    the scripts) with a cosine schedule. ``batches`` yields ``(images, input_ids, labels)``.
    Returns per-step ``lm_loss``, ``aux_loss`` and ``dropped`` (assignments dropped over MoE layers)."""
    trainable = model.set_stage(stage)
    params = [p for n, p in model.named_parameters() if n in set(trainable)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, steps))
    model.train()
    history = []
    for _, (images, input_ids, labels) in zip(range(steps), batches):
        out = model(images, input_ids, labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        history.append(
            {
                "lm_loss": out.lm_loss.item(),
                "aux_loss": out.aux_loss.item(),
                "dropped": sum(m.dropped for m in out.moe_outputs.values()),
            }
        )
    return history


__all__ = [
    "IGNORE_INDEX",
    "Block",
    "MoELLaVAConfig",
    "MoELLaVAOutput",
    "TinyMoELLaVA",
    "VisionTower",
    "cosine_with_warmup",
    "moe_layer_indices",
    "train_stage",
    "trainable_in_stage",
]
