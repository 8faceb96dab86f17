"""MindEye's contrastive losses: MixCo augmentation, BiMixCo, SoftCLIP, and the low-level soft_cont_loss.

Notation (batch of ``N``): ``p_i`` brain embeddings (projector outputs), ``t_i`` target (CLIP)
embeddings, both flattened to vectors and L2-normalised inside every loss here; ``tau`` is the
temperature; ``S_ij = p_i . t_j / tau`` is the brain-to-image similarity matrix.
``log softmax_j`` means a log-softmax over the index ``j`` with the other index fixed.

Conventions shared by every loss (they follow MindEye's released code, which produced the paper's
numbers, and differ from the paper's equations (2) and (3) as written):

- **Per-row normalisers.** Each log-probability is normalised over the row it belongs to
  (``sum_m exp(p_i . t_m / tau)`` for brain->image, ``sum_m exp(p_m . t_j / tau)`` for
  image->brain). Equation (2) prints ``sum_m exp(p*_m . t_m / tau)`` in the first term, a typo.
- **Batch means, directions averaged.** Each direction is a *mean* over rows (the paper writes sums)
  and the two directions are averaged (the paper adds them): ``loss = (forward + backward) / 2``.

Deviation from the official code, deliberately: in ``mixco_nce`` the soft target of a sample mixed
with itself (``perm[i] == i``) is ``beta_i + (1 - beta_i) = 1`` on the diagonal. The official code
builds the target matrix with an assignment that overwrites the diagonal with ``1 - beta_i`` (and with
0 for unmixed samples, so those rows silently drop out of the loss). Mixing a sample with itself
leaves it unchanged, so its target must be the one-hot row; we accumulate the two weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mixco", "mixco_nce", "soft_clip_loss", "soft_cont_loss", "clip_loss_targets"]


def _flat_norm(x: torch.Tensor, name: str) -> torch.Tensor:
    """``(N, ...)`` -> ``(N, D)`` L2-normalised rows (computed in float32 or wider)."""
    if x.ndim < 2:
        raise ValueError(f"{name} must be (batch, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    x = x.flatten(1)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return F.normalize(x, dim=-1)


def _check_pair(preds: torch.Tensor, targets: torch.Tensor, temp: float) -> None:
    if preds.shape[0] != targets.shape[0]:
        raise ValueError(f"preds and targets need the same batch size, got {preds.shape[0]} and {targets.shape[0]}")
    if preds.shape[1:].numel() != targets.shape[1:].numel():
        raise ValueError(
            f"preds and targets need the same embedding size, got {tuple(preds.shape[1:])} and {tuple(targets.shape[1:])}"
        )
    if not temp > 0:
        raise ValueError(f"temperature must be positive, got {temp}")


def mixco(
    voxels: torch.Tensor,
    beta: float = 0.15,
    s_thresh: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MixCo augmentation of a batch of voxels (paper eq. 1).

    ``x_mix_i = lambda_i x_i + (1 - lambda_i) x_{k_i}`` for the selected samples, where ``k = perm`` is
    a random permutation of the batch, ``lambda_i ~ Beta(beta, beta)`` and each sample is selected
    with probability ``s_thresh``. Unselected samples are left unchanged and get ``lambda_i = 1``.

    Args:
        voxels: ``(N, ...)`` batch (not modified; the official code mixes in place).
        beta: Beta distribution parameter (alpha = beta = 0.15 in the paper).
        s_thresh: probability that a sample is mixed (0.5).
        generator: optional ``torch.Generator`` making ``perm``, ``betas`` and ``select`` reproducible.

    Returns:
        ``(mixed (N, ...), perm (N,) long, betas (N,) float, select (N,) bool)``, all on
        ``voxels.device``; ``betas[~select] == 1``.
    """
    if voxels.ndim < 1 or voxels.shape[0] < 1:
        raise ValueError(f"mixco needs a non-empty batch, got shape {tuple(voxels.shape)}")
    if not beta > 0:
        raise ValueError(f"mixco: beta must be positive, got {beta}")
    n = voxels.shape[0]
    device = voxels.device
    rng = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=rng).to(device)
    if generator is None:
        betas = torch.distributions.Beta(beta, beta).sample((n,))
    else:  # Beta sampling has no generator argument: derive a seed from the generator, isolate the global RNG
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=rng))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            betas = torch.distributions.Beta(beta, beta).sample((n,))
    select = torch.rand(n, generator=generator, device=rng) <= s_thresh
    betas = betas.to(device=device, dtype=voxels.dtype if voxels.is_floating_point() else torch.float32)
    select = select.to(device)
    betas = torch.where(select, betas, torch.ones_like(betas))
    shape = (-1,) + (1,) * (voxels.ndim - 1)
    b = betas.reshape(shape)
    mixed = b * voxels + (1 - b) * voxels[perm]  # unselected rows: 1 * x + 0 * x_perm == x
    mixed = torch.where(select.reshape(shape), mixed, voxels)
    return mixed, perm, betas, select


def clip_loss_targets(
    n: int,
    perm: torch.Tensor | None = None,
    betas: torch.Tensor | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Soft target matrix ``P (N, N)`` of BiMixCo: ``P_ii += beta_i``, ``P_{i, perm_i} += 1 - beta_i``.

    Rows sum to 1. Without ``perm``/``betas`` it is the identity (plain CLIP loss).
    """
    if perm is None or betas is None:
        return torch.eye(n, device=device, dtype=dtype)
    if perm.shape != (n,) or betas.shape != (n,):
        raise ValueError(f"perm and betas must have shape ({n},), got {tuple(perm.shape)} and {tuple(betas.shape)}")
    betas = betas.to(device=device, dtype=dtype)
    probs = torch.diag(betas)
    rows = torch.arange(n, device=device)
    # index_put_ with accumulate=True: perm[i] == i adds (1 - beta_i) to beta_i on the diagonal
    probs.index_put_((rows, perm.to(device)), 1 - betas, accumulate=True)
    return probs


def mixco_nce(
    preds: torch.Tensor,
    targets: torch.Tensor,
    temp: float = 0.006,
    perm: torch.Tensor | None = None,
    betas: torch.Tensor | None = None,
    select: torch.Tensor | None = None,
    bidirectional: bool = True,
) -> torch.Tensor:
    """BiMixCo (paper eq. 2) or, without mixing information, the bidirectional CLIP loss.

    With ``S_ij = p_i . t_j / tau`` and the soft targets ``P = clip_loss_targets(perm, betas)``::

        forward  = mean_i [ - sum_j P_ij log softmax_j(S_ij) ]          (brain -> image)
        backward = mean_j [ - sum_i P_ij log softmax_i(S_ij) ]          (image -> brain)
        loss     = (forward + backward) / 2      (forward only if bidirectional=False)

    ``p_i`` are the embeddings of the *mixed* voxels. Without ``perm``/``betas`` ``P`` is the
    identity and this is the standard symmetric CLIP (InfoNCE) loss. ``select`` is accepted for API
    symmetry with :func:`mixco`; it is implied by ``betas`` (unselected samples have ``beta = 1``).

    Args:
        preds: ``(N, ...)`` brain embeddings, flattened and L2-normalised here.
        targets: ``(N, ...)`` target embeddings, same number of elements per sample.
        temp: temperature ``tau`` (0.006 during MindEye's BiMixCo phase).

    Returns:
        Scalar loss (float32).
    """
    _check_pair(preds, targets, temp)
    if (perm is None) != (betas is None):
        raise ValueError("mixco_nce: give both perm and betas (from mixco) or neither")
    p = _flat_norm(preds, "preds")
    t = _flat_norm(targets, "targets")
    sim = p @ t.T / temp
    probs = clip_loss_targets(sim.shape[0], perm, betas, device=sim.device, dtype=sim.dtype)
    forward = -(sim.log_softmax(-1) * probs).sum(-1).mean()
    if not bidirectional:
        return forward
    backward = -(sim.T.log_softmax(-1) * probs.T).sum(-1).mean()
    return (forward + backward) / 2


def soft_clip_loss(preds: torch.Tensor, targets: torch.Tensor, temp: float = 0.005) -> torch.Tensor:
    """SoftCLIP (paper eq. 3): cross-entropy against the targets' own similarity distribution.

    With ``S_ij = p_i . t_j / tau`` and the teacher ``T_ij = t_i . t_j / tau`` (symmetric)::

        forward  = mean_i [ - sum_j softmax_j(T_ij) log softmax_j(S_ij) ]
        backward = mean_j [ - sum_i softmax_i(T_ij) log softmax_i(S_ij) ]
        loss     = (forward + backward) / 2

    Args:
        preds: ``(N, ...)`` brain embeddings (flattened, L2-normalised here).
        targets: ``(N, ...)`` CLIP embeddings.
        temp: temperature (cosine-annealed 0.004 -> 0.0075 in MindEye's SoftCLIP phase).
    """
    _check_pair(preds, targets, temp)
    p = _flat_norm(preds, "preds")
    t = _flat_norm(targets, "targets")
    sim = p @ t.T / temp
    teacher = t @ t.T / temp
    forward = -(sim.log_softmax(-1) * teacher.softmax(-1)).sum(-1).mean()
    backward = -(sim.T.log_softmax(-1) * teacher.T.softmax(-1)).sum(-1).mean()
    return (forward + backward) / 2


def soft_cont_loss(
    student: torch.Tensor, teacher: torch.Tensor, teacher_aug: torch.Tensor, temp: float = 0.075
) -> torch.Tensor:
    """Soft contrastive distillation loss of the low-level pipeline (per-location features).

    All leading dimensions are flattened into a set of ``M`` tokens (e.g. ``(B, 256, 512)`` ->
    ``(B*256, 512)``) and each token is L2-normalised. With student ``s``, teacher ``u`` and the
    teacher's features of an augmented image ``a``::

        forward  = mean_i [ - sum_j softmax_j(u_i . a_j / tau) log softmax_j(s_i . a_j / tau) ]
        backward = mean_i [ - sum_j softmax_j(a_i . u_j / tau) log softmax_j(a_i . s_j / tau) ]
        loss     = (forward + backward) / 2

    Used with ``temp = 0.075`` and weight 0.1 next to the L1 latent loss (official code; the paper
    does not give these numbers).

    Args:
        student: ``(..., D)`` brain-derived features.
        teacher: ``(..., D)`` teacher (VICRegL) features of the image, same shape.
        teacher_aug: ``(..., D)`` teacher features of an augmented view, same shape.
    """
    if not (student.shape == teacher.shape == teacher_aug.shape):
        raise ValueError(
            "soft_cont_loss: student, teacher and teacher_aug must have the same shape, got "
            f"{tuple(student.shape)}, {tuple(teacher.shape)}, {tuple(teacher_aug.shape)}"
        )
    if student.ndim < 2:
        raise ValueError(f"soft_cont_loss: expected (..., D) features with >= 2 dims, got {tuple(student.shape)}")
    if not temp > 0:
        raise ValueError(f"temperature must be positive, got {temp}")

    def tokens(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1])
        return F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=-1)

    s, u, a = tokens(student), tokens(teacher), tokens(teacher_aug)
    forward = -((s @ a.T / temp).log_softmax(-1) * (u @ a.T / temp).softmax(-1)).sum(-1).mean()
    backward = -((a @ s.T / temp).log_softmax(-1) * (a @ u.T / temp).softmax(-1)).sum(-1).mean()
    return (forward + backward) / 2
