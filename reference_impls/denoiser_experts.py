"""eDiff-I: an ensemble of expert denoisers, each specialised to an interval of noise levels.

Balaji et al. "eDiff-I: Text-to-Image Diffusion Models with an Ensemble of Expert Denoisers",
arXiv 2211.01324.

What the paper does, and why
----------------------------
A diffusion model uses one denoiser ``D(x; sigma, c)`` for every noise level ``sigma``. eDiff-I observes
that the denoiser's job changes along the sampling trajectory. At high noise it relies on the text
conditioning ``c`` to decide what the image will show; at low noise it mostly ignores the text and
refines detail. It therefore trains **experts specialised to noise-level intervals** and calls, at
each sampling step, only the expert whose interval contains the current ``sigma``::

    D(x; sigma, c) = D_{e(sigma)}(x; sigma, c),    e(sigma) = the expert whose interval holds sigma

Each expert is trained with the usual denoising loss on ``sigma`` drawn from its own interval. The
experts are not trained from scratch. One model is trained on all noise levels and then **split
along a binary tree**: a child is initialised from its parent and fine-tuned on half of its parent's
interval. Since one expert runs per step, **sampling costs what one model costs**; only the parameter
count grows (notes section 13.1). Conditioning in the paper is T5 and CLIP text embeddings plus a CLIP
image embedding; paint-with-words is a separate feature.

Which equations and defaults this follows
-----------------------------------------
The research notes found no official code and could not check the number of experts, the sigma
boundaries, the noise-sampling parameters or the training steps per branch (section 13.1). What is
implemented:

* the expert selection ``e(sigma)`` and the binary-tree branching (:func:`split_expert`), restated
  in the notes (section 13.1);
* the **EDM parameterisation** (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
  Generative Models", Table 1). The notes' experiment asks for an "EDM-style sigma-parameterisation"
  (section 13.2); the constants below are EDM's, quoted from that paper and not checked against a
  stored source here:

      D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
      c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),   c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)
      c_in   = 1 / sqrt(sigma^2 + sigma_d^2),       c_noise = ln(sigma) / 4
      loss   = lambda(sigma) |D(x + sigma n; sigma) - x|^2,   lambda = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2
      ln sigma ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2;  sigma_d = 0.5

  and EDM's deterministic Heun sampler on ``sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) -
  s_max^(1/rho)))^rho`` with ``rho = 7``, ``sigma_min = 0.002``, ``sigma_max = 80`` and a final
  ``sigma_N = 0`` (Euler on the last step);
* **classifier-free guidance applied inside each expert** (notes 13.3):
  ``D_w = D(x; sigma, empty) + w (D(x; sigma, c) - D(x; sigma, empty))``, with the conditioning dropped
  to the empty token for a fraction ``cond_drop`` of training samples.

Where it simplifies
-------------------
* The "text" is a class token from a small vocabulary plus an empty token, embedded by a table; the
  denoiser is an MLP on 2-D points (with optional random Fourier features of the input), not a U-Net
  on images.
* A sampler step may cross an interval boundary between its Euler and its Heun evaluation. Each
  evaluation uses the expert of *its own* sigma, as ``D(x; sigma)`` is defined, which includes the
  last step (notes 13.3: map every sigma to the correct expert).
* Interval boundaries are arguments. The notebook splits at the median of the training sigma
  distribution, so that both experts see the same number of training samples; eDiff-I's boundaries
  were not found.
* Dispatch by sigma uses the shared core's ``sort_by_expert`` and ``combine_by_token`` with gates of
  1: the "routing" is a deterministic partition, so no router, no top-k and no balance loss.

Shapes: ``B`` samples, ``D`` data width (2 in the notebook), ``E`` experts, ``K`` classes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reference_impls.moe import combine_by_token, sort_by_expert


@dataclass(frozen=True)
class EDMConfig:
    """EDM's defaults (Karras et al. 2022, Table 1; see the module docstring)."""

    sigma_data: float = 0.5
    p_mean: float = -1.2  # ln sigma ~ N(p_mean, p_std^2) in training
    p_std: float = 1.2
    sigma_min: float = 0.002  # sampler schedule
    sigma_max: float = 80.0
    rho: float = 7.0


def edm_scalings(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` for ``sigma [B]``, each ``[B]``."""
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM's ``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2``: the weighted loss equals
    ``c_out^-2 |D - x|^2``, an unweighted loss on ``F``'s target."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


# ---------------------------------------------------------------------------------------------------
# One denoiser
# ---------------------------------------------------------------------------------------------------


class Denoiser(nn.Module):
    """``D(x; sigma, c) = c_skip x + c_out F(c_in x, c_noise, emb(c))``, with ``F`` an MLP.

    Args:
        data_dim: ``D``.
        num_classes: ``K`` conditioning tokens; token ``K`` is the empty (unconditional) token.
        width: hidden width of ``F``.
        depth: hidden layers of ``F``.
        embed_dim: width of the class embedding and of the Fourier features of ``c_noise``.
        sigma_data: EDM's ``sigma_d``.
        input_fourier: ``m`` random Fourier features of the noisy input, ``sin``/``cos`` of
            ``2 pi x B`` with a fixed ``B [D, m] ~ N(0, input_fourier_scale^2)`` drawn at construction
            (Tancik et al. 2020's trick for low-dimensional inputs; 0 = off). A plain MLP on 2-D points
            cannot fit the fine structure that low-noise denoising needs; these features let it. They
            read the *raw* noisy ``x``, so at high noise they are aliased noise the network must learn
            to ignore: the two regimes want different things from the same weights.
        input_fourier_scale: standard deviation of ``B``.
    """

    def __init__(self, data_dim: int = 2, num_classes: int = 8, *, width: int = 64, depth: int = 3,
                 embed_dim: int = 16, sigma_data: float = 0.5, input_fourier: int = 0,
                 input_fourier_scale: float = 1.5):
        super().__init__()
        self.num_classes, self.sigma_data = num_classes, sigma_data
        self.embed = nn.Embedding(num_classes + 1, embed_dim)
        self.register_buffer("frequencies", torch.arange(1, embed_dim // 2 + 1).float())
        self.register_buffer("input_projection", input_fourier_scale * torch.randn(data_dim, input_fourier))
        layers, width_in = [], data_dim + 2 * embed_dim + 2 * input_fourier
        for _ in range(depth):
            layers += [nn.Linear(width_in, width), nn.SiLU()]
            width_in = width
        self.net = nn.Sequential(*layers, nn.Linear(width_in, data_dim))

    @property
    def empty_token(self) -> int:
        return self.num_classes

    def forward(self, x: Tensor, sigma: Tensor, label: Tensor) -> Tensor:
        """``x [B, D]``, ``sigma [B]`` (> 0), ``label [B]`` long in ``[0, K]`` -> ``D(x; sigma, c) [B, D]``."""
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        angle = c_noise.unsqueeze(-1) * self.frequencies  # Fourier features of c_noise = ln(sigma)/4
        phase = 2 * math.pi * x @ self.input_projection  # [B, m] random Fourier features of x (m may be 0)
        features = torch.cat([c_in.unsqueeze(-1) * x, angle.sin(), angle.cos(), self.embed(label),
                              phase.sin(), phase.cos()], -1)
        return c_skip.unsqueeze(-1) * x + c_out.unsqueeze(-1) * self.net(features)


# ---------------------------------------------------------------------------------------------------
# The ensemble: one expert per noise interval
# ---------------------------------------------------------------------------------------------------


class NoiseLevelExperts(nn.Module):
    """eDiff-I's ensemble. Expert ``e`` covers ``[boundaries[e-1], boundaries[e])`` (expert 0 the lowest
    noise, the last one up to infinity), and ``D(x; sigma, c) = D_{e(sigma)}(x; sigma, c)``.

    Args:
        experts: ``E`` denoisers, ordered from low to high noise.
        boundaries: ``E - 1`` increasing sigma thresholds.
    """

    def __init__(self, experts: list[Denoiser], boundaries: list[float] = ()):
        super().__init__()
        if len(boundaries) != len(experts) - 1 or list(boundaries) != sorted(boundaries):
            raise ValueError("need E - 1 increasing boundaries for E experts")
        self.experts = nn.ModuleList(experts)
        self.register_buffer("boundaries", torch.tensor(list(boundaries), dtype=torch.float32))

    @classmethod
    def from_denoiser(cls, denoiser: Denoiser) -> "NoiseLevelExperts":
        """The root of the branching tree: one expert for every noise level."""
        return cls([denoiser], [])

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def empty_token(self) -> int:
        return self.experts[0].empty_token

    def expert_index(self, sigma: Tensor) -> Tensor:
        """``e(sigma)``: ``[B]`` long, the number of boundaries at or below sigma."""
        return torch.bucketize(sigma.float().contiguous(), self.boundaries, right=True)

    def forward(self, x: Tensor, sigma: Tensor, label: Tensor) -> Tensor:
        """Each sample is denoised by the expert of its own sigma; one expert call per sample."""
        if self.num_experts == 1:
            return self.experts[0](x, sigma, label)
        index = self.expert_index(sigma)
        dispatch = sort_by_expert(index.unsqueeze(-1), torch.ones_like(index.unsqueeze(-1), dtype=torch.bool),
                                  self.num_experts)
        rows = dispatch.token_index
        outs = [expert(x[r], sigma[r], label[r])
                for expert, r in zip(self.experts, rows.split(dispatch.counts.tolist())) if len(r)]
        gates = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)  # a partition: weight 1
        return combine_by_token(torch.cat(outs), dispatch, gates, x.shape[0])


def split_expert(ensemble: NoiseLevelExperts, index: int, boundary: float) -> NoiseLevelExperts:
    """Binary-tree branching: expert ``index`` (interval ``[lo, hi)``) becomes two children, both
    initialised as copies of it, covering ``[lo, boundary)`` and ``[boundary, hi)``. The other experts
    are carried over (shared, not copied). At the moment of the split the ensemble computes exactly
    what it computed before."""
    lows = [0.0, *ensemble.boundaries.tolist()]
    highs = [*ensemble.boundaries.tolist(), math.inf]
    if not lows[index] < boundary < highs[index]:
        raise ValueError(f"boundary {boundary} is not inside expert {index}'s interval [{lows[index]}, {highs[index]})")
    parent = ensemble.experts[index]
    experts = [*ensemble.experts[:index], copy.deepcopy(parent), copy.deepcopy(parent), *ensemble.experts[index + 1 :]]
    boundaries = sorted([*ensemble.boundaries.tolist(), boundary])
    return NoiseLevelExperts(experts, boundaries).to(ensemble.boundaries.device)


# ---------------------------------------------------------------------------------------------------
# Training and sampling
# ---------------------------------------------------------------------------------------------------


def sample_sigma(n: int, config: EDMConfig = EDMConfig(), *, generator: torch.Generator | None = None) -> Tensor:
    """``ln sigma ~ N(P_mean, P_std^2)``, ``[n]``."""
    return (config.p_mean + config.p_std * torch.randn(n, generator=generator)).exp()


def denoising_loss(model: nn.Module, x: Tensor, label: Tensor, *, sigma: Tensor | None = None,
                   config: EDMConfig = EDMConfig(), cond_drop: float = 0.1,
                   generator: torch.Generator | None = None, reduce: bool = True) -> Tensor:
    """EDM loss ``lambda(sigma) |D(x + sigma n; sigma, c) - x|^2`` (summed over ``D``, mean over ``B``).

    Args:
        model: a :class:`Denoiser` or :class:`NoiseLevelExperts`.
        x: ``[B, D]`` clean data; label: ``[B]`` class tokens.
        sigma: ``[B]`` noise levels; drawn from the training distribution when None.
        cond_drop: fraction of labels replaced by the empty token (for classifier-free guidance).
        reduce: False returns the per-sample loss ``[B]``.
    """
    if sigma is None:
        sigma = sample_sigma(x.shape[0], config, generator=generator)
    if cond_drop > 0:
        drop = torch.rand(x.shape[0], generator=generator) < cond_drop
        label = torch.where(drop, torch.full_like(label, model.empty_token), label)
    noisy = x + sigma.unsqueeze(-1) * torch.randn(x.shape, generator=generator)
    per_sample = loss_weight(sigma, config.sigma_data) * (model(noisy, sigma, label) - x).square().sum(-1)
    return per_sample.mean() if reduce else per_sample


def karras_sigmas(steps: int, config: EDMConfig = EDMConfig()) -> Tensor:
    """EDM's schedule ``sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min``, then ``sigma_N = 0``: ``[N + 1]``."""
    ramp = torch.linspace(0, 1, steps)
    lo, hi = config.sigma_min ** (1 / config.rho), config.sigma_max ** (1 / config.rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** config.rho, torch.zeros(1)])


def guided(model: nn.Module, x: Tensor, sigma: Tensor, label: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance, inside whichever expert ``sigma`` selects:
    ``D(x; empty) + w (D(x; c) - D(x; empty))``; ``w = 1`` is the plain conditional denoiser."""
    if guidance == 1.0:
        return model(x, sigma, label)
    empty = torch.full_like(label, model.empty_token)
    unconditional = model(x, sigma, empty)
    return unconditional + guidance * (model(x, sigma, label) - unconditional)


@torch.no_grad()
def sample(model: nn.Module, label: Tensor, *, steps: int = 18, guidance: float = 1.0,
           config: EDMConfig = EDMConfig(), data_dim: int = 2,
           generator: torch.Generator | None = None) -> Tensor:
    """EDM's deterministic Heun sampler (2 denoiser calls per step, Euler on the last): ``[B, D]``.

    Each call goes to the expert of that call's sigma, so per-step compute equals one model's.
    """
    sigmas = karras_sigmas(steps, config)
    x = sigmas[0] * torch.randn(label.shape[0], data_dim, generator=generator)
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - guided(model, x, s.expand(x.shape[0]), label, guidance)) / s  # dx/dsigma = (x - D) / sigma
        x_next = x + (s_next - s) * d
        if s_next > 0:  # Heun correction, evaluated at sigma_{i+1} (by that sigma's expert)
            d_next = (x_next - guided(model, x_next, s_next.expand(x.shape[0]), label, guidance)) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return x


# ---------------------------------------------------------------------------------------------------
# Sample quality
# ---------------------------------------------------------------------------------------------------


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.05, 0.2, 1.0)) -> Tensor:
    """Unbiased estimate of the squared maximum mean discrepancy (Gretton et al. 2012, the U-statistic),
    with the kernel ``sum_h exp(-|a - b|^2 / (2 h^2))``. ``x [n, D]``, ``y [m, D]``, ``n, m >= 2``.

    The diagonal terms ``k(x_i, x_i)`` are left out, so the estimate has mean 0 when ``x`` and ``y``
    come from the same distribution (it can then be slightly negative); the biased V-statistic would
    add about ``len(bandwidths) * (1/n + 1/m)``, which at 250 samples swamps the differences of interest.
    """

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy = k(x, x), k(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * k(x, y).mean()


__all__ = [
    "Denoiser",
    "EDMConfig",
    "NoiseLevelExperts",
    "denoising_loss",
    "edm_scalings",
    "guided",
    "karras_sigmas",
    "loss_weight",
    "mmd_rbf",
    "sample",
    "sample_sigma",
    "split_expert",
]
