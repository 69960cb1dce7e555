"""Losses of self-supervised MedLAM training (method.md 8.3).

Frames: patches are ``(B, 1, 64, 64, 64)`` on the 3 mm grid of one training volume, ``(z, y, x)``;
position grids ``(B, 3, 64, 64, 64)`` hold every voxel's physical position in millimetres on
that grid (after augmentation, for the augmented copies).

* :func:`rdr_loss`: relative distance regression (RDR / UAM). The published loss is the MSE, in
  mm^2, between ``[1500, 600, 600] * tanh(fc(p0) - fc(p1))`` and the true displacement
  ``pos(p0) - pos(p1)``, added to the MSS loss unweighted (method.md 10.2 item 6: the mm^2
  scale swamps MSS). Here the error is divided by ``unit_mm`` before squaring and the result is
  multiplied by ``weight``; ``unit_mm=1, weight=1`` is the published loss.
* :func:`mss_loss`: multi-scale similarity. For random anchor voxels of the un-augmented patch,
  the cosine similarity (x15, softmax over the voxels) of its feature with every feature of the
  augmented patch must be high within ``3 * f`` mm of the anchor's physical position and low
  beyond ``6 * f`` mm (``f = 4, 2, 1`` for ``feature0/1/2``). Departures: the anchor retries of
  the two patches are counted separately (the published counter is shared), and the distance
  map of a coarse scale is computed from the trilinearly down-scaled position grid rather than
  by down-scaling the full-resolution distance map (the same up to interpolation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: Scale of the relative displacement, mm along (z, y, x) (published ``distance_ratio``).
DISTANCE_RATIO = (1500.0, 600.0, 600.0)
#: Temperature of the MSS softmax (published).
MSS_TEMPERATURE = 15.0
#: Anchors per step, and draws per anchor before the last draw is kept (published).
MSS_ANCHORS = 20
ANCHOR_TRIES = 20
#: A voxel is foreground for anchor drawing when its normalised value is at least this.
ANCHOR_THRESHOLD = 1e-4
#: Down-scaling factor of each feature scale relative to the 64^3 patch.
SCALE_FACTOR = {"feature0": 4, "feature1": 2, "feature2": 1}


def predicted_distance(
    fc0: torch.Tensor, fc1: torch.Tensor, ratio: Sequence[float] = DISTANCE_RATIO
) -> torch.Tensor:
    """``ratio * tanh(fc0 - fc1)``: the predicted displacement ``(B, 3)`` in mm."""
    scale = torch.as_tensor(ratio, dtype=fc0.dtype, device=fc0.device)
    return scale * torch.tanh(fc0 - fc1)


def rdr_loss(
    fc0: torch.Tensor,
    fc1: torch.Tensor,
    target_mm: torch.Tensor,
    ratio: Sequence[float] = DISTANCE_RATIO,
    unit_mm: float = 1.0,
    weight: float = 1.0,
) -> torch.Tensor:
    """Relative distance regression: ``weight * mean(((pred - target) / unit_mm) ** 2)``.

    Args:
        fc0, fc1: ``(B, 3)`` position codes of the two un-augmented patches.
        target_mm: ``(B, 3)`` true displacement ``pos0 - pos1`` in mm ``(z, y, x)``.
    """
    error = (predicted_distance(fc0, fc1, ratio) - target_mm) / float(unit_mm)
    return float(weight) * (error**2).mean()


def draw_anchors(
    patch: torch.Tensor, rng: np.random.Generator, n: int = MSS_ANCHORS, tries: int = ANCHOR_TRIES
) -> np.ndarray:
    """Anchor voxels ``(n, 3)`` int64 in a batch of 64^3 patches ``(B, 1, D, H, W)``.

    Each anchor is a uniform random voxel that is foreground (>= 1e-4) in more than half of the
    batch, re-drawn up to ``tries`` times (the last draw is kept if none qualifies).
    """
    fg = (patch[:, 0] >= ANCHOR_THRESHOLD).float().mean(dim=0) > 0.5
    fg_np = fg.cpu().numpy()
    shape = np.array(fg_np.shape)
    anchors = np.empty((n, 3), dtype=np.int64)
    for a in range(n):
        for _ in range(tries):
            draw = rng.integers(0, shape)
            if fg_np[tuple(draw)]:
                break
        anchors[a] = draw
    return anchors


def _scale_term(
    ori_feature: torch.Tensor,
    aug_feature: torch.Tensor,
    anchors: np.ndarray,
    anchor_mm: torch.Tensor,
    aug_pos: torch.Tensor,
    factor: int,
) -> torch.Tensor:
    """Summed MSS term over the anchors at one scale (mean over the batch)."""
    b, c = aug_feature.shape[:2]
    size = aug_feature.shape[2:]
    idx = torch.as_tensor(anchors // factor, device=ori_feature.device)
    vec = ori_feature[:, :, idx[:, 0], idx[:, 1], idx[:, 2]]  # (B, C, A)
    vec = F.normalize(vec, dim=1)
    feats = F.normalize(aug_feature, dim=1).reshape(b, c, -1)  # (B, C, N)
    logits = MSS_TEMPERATURE * torch.einsum("bca,bcn->ban", vec, feats)
    logp = torch.log_softmax(logits, dim=-1)
    log_not_p = torch.log1p(-logp.exp().clamp(max=1.0 - 1e-6))
    pos = aug_pos if factor == 1 else F.interpolate(aug_pos, size=size, mode="trilinear")
    pos = pos.reshape(b, 3, 1, -1)
    dist = torch.linalg.vector_norm(pos - anchor_mm[:, :, :, None], dim=1)  # (B, A, N)
    positive = (dist <= 3.0 * factor).float()
    negative = (dist >= 6.0 * factor).float()
    pos_term = -(logp * positive).sum(-1) / positive.sum(-1).clamp(min=1.0)
    neg_term = -(log_not_p * negative).sum(-1) / negative.sum(-1).clamp(min=1.0)
    return (pos_term + neg_term).sum(dim=1).mean()


def mss_loss(
    ori_features: Sequence[Mapping[str, torch.Tensor]],
    aug_features: Sequence[Mapping[str, torch.Tensor]],
    ori_patches: Sequence[torch.Tensor],
    ori_pos: Sequence[torch.Tensor],
    aug_pos: Sequence[torch.Tensor],
    scales: Sequence[str],
    rng: np.random.Generator,
    n_anchors: int = MSS_ANCHORS,
) -> torch.Tensor:
    """Multi-scale similarity loss of the two patches of a pair, divided by scales x anchors.

    Args:
        ori_features, aug_features: per patch (2 entries), ``{scale: (B, C, s, s, s)}``.
        ori_patches: per patch, the un-augmented ``(B, 1, 64, 64, 64)`` inputs.
        ori_pos, aug_pos: per patch, ``(B, 3, 64, 64, 64)`` positions in mm.
        scales: which of ``feature0/1/2`` to use (published: all three).
        rng: draws the anchors.
    """
    if not scales:
        return ori_patches[0].new_zeros(())
    total = ori_patches[0].new_zeros(())
    for p in range(2):
        anchors = draw_anchors(ori_patches[p], rng, n_anchors)
        idx = torch.as_tensor(anchors, device=ori_pos[p].device)
        anchor_mm = ori_pos[p][:, :, idx[:, 0], idx[:, 1], idx[:, 2]]  # (B, 3, A)
        for scale in scales:
            total = total + _scale_term(
                ori_features[p][scale],
                aug_features[p][scale],
                anchors,
                anchor_mm,
                aug_pos[p],
                SCALE_FACTOR[scale],
            )
    return total / (len(scales) * n_anchors)
