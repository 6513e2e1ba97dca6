"""VoCo losses (VOCO.md §5): position loss on overlap targets (intra- and inter-volume) and the base-crop
regulariser, as the authors' public code computes them."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

EPS = 1e-6
Negative = Literal["log", "l2"]


def overlap_logits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Predicted overlaps ReLU(cos(p_a, q_k)) of crops p (A, D) with bases q (K, D), shape (A, K)."""
    return F.relu(F.normalize(p, dim=1) @ F.normalize(q, dim=1).T)


def position_loss(targets: torch.Tensor, logits: torch.Tensor, negative: Negative = "log") -> torch.Tensor:
    """Overlap-weighted loss on the positive entries plus a mean loss on the entries whose target is 0.

    Args:
        targets: overlaps Y in [0, 1].
        logits: predicted overlaps L in [0, 1], same shape.
        negative: ``"log"`` −log(1 − L + ε) (TPAMI) or ``"l2"`` L² (10k) on the Y = 0 entries.
    """
    pos = (targets * -torch.log(1 - (targets - logits).abs() + EPS)).sum() / (targets.sum() + EPS)
    negatives = logits[targets == 0]
    if negatives.numel() == 0:
        return pos
    if negative == "log":
        return pos + (-torch.log(1 - negatives + EPS)).mean()
    if negative == "l2":
        return pos + negatives.square().mean()
    raise ValueError(f"negative must be 'log' or 'l2', got {negative!r}")


def regulariser(bases: torch.Tensor) -> torch.Tensor:
    """Mean squared positive cosine between distinct bases (K, D), the second of each pair stop-gradient."""
    k = bases.shape[0]
    if k < 2:
        raise ValueError(f"the regulariser needs at least 2 bases, got {k}")
    cos = F.normalize(bases, dim=1) @ F.normalize(bases.detach(), dim=1).T
    i, j = torch.triu_indices(k, k, offset=1, device=bases.device)
    return F.relu(cos[i, j]).square().sum() * (2.0 / (k * (k - 1)))


def voco_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    num_volumes: int,
    sw: int,
    num_bases: int,
    negative: Negative = "log",
    inter: bool = True,
    symmetric: bool = False,
) -> dict[str, torch.Tensor]:
    """Total VoCo loss of one forward batch and its parts (computed in float32).

    Args:
        student: student projections (V·sw + V·K, D), volume-major: all random crops of all volumes, then all
            base crops of all volumes.
        teacher: teacher projections in the same layout.
        targets: overlap targets (V, sw, K).
        num_volumes: V.
        sw: random crops per volume.
        num_bases: K = n².
        negative: loss on zero-target entries, see :func:`position_loss`.
        inter: add the inter-volume loss (TPAMI); skipped when V == 1. The 10k (CVPR) code has none.
        symmetric: the 10k (CVPR) code's prediction mean(L(student crops, teacher bases), L(teacher crops,
            student bases)) instead of TPAMI's L(student crops, teacher bases).

    Returns:
        ``total`` = mean(intra) + mean(inter) + mean(reg), and the three means ``intra``, ``inter``, ``reg``.
    """
    _check_layout(student, teacher, targets, num_volumes, sw, num_bases)
    s_crops, s_bases = _split(student.float(), num_volumes, sw)
    t_crops, t_bases = _split(teacher.float(), num_volumes, sw)
    targets = targets.to(device=student.device, dtype=torch.float32)
    volumes = range(num_volumes)

    def predicted(i: int) -> torch.Tensor:
        student_view = overlap_logits(s_crops[i], t_bases[i])
        if not symmetric:
            return student_view
        return (student_view + overlap_logits(t_crops[i], s_bases[i])) / 2

    intra = _mean([position_loss(targets[i], predicted(i), negative) for i in volumes])
    reg = _mean([regulariser(s_bases[i]) for i in volumes])
    inter_loss = intra.new_zeros(())
    if inter and num_volumes > 1:
        pairs = [(i, (i + 1) % num_volumes) for i in volumes]
        inter_loss = _mean([_inter(s_crops[i], s_bases[j], t_crops[i], t_bases[j], negative) for i, j in pairs])
    return {"total": intra + inter_loss + reg, "intra": intra, "inter": inter_loss, "reg": reg}


def _inter(
    student_crops: torch.Tensor,
    student_bases: torch.Tensor,
    teacher_crops: torch.Tensor,
    teacher_bases: torch.Tensor,
    negative: Negative,
) -> torch.Tensor:
    """Position loss of one volume's crops against another's bases; the teacher's overlaps are the targets."""
    targets = overlap_logits(teacher_crops, teacher_bases).detach()
    return position_loss(targets, overlap_logits(student_crops, student_bases), negative)


def _mean(losses: list[torch.Tensor]) -> torch.Tensor:
    """Mean of scalar losses."""
    return torch.stack(losses).mean()


def _check_layout(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    num_volumes: int,
    sw: int,
    num_bases: int,
) -> None:
    """Raise ``ValueError`` unless the batch and targets have the volume-major layout."""
    rows = num_volumes * (sw + num_bases)
    for name, value in (("student", student), ("teacher", teacher)):
        if value.ndim != 2 or value.shape[0] != rows:
            raise ValueError(f"{name} must have {rows} rows (V·sw + V·K), got shape {tuple(value.shape)}")
    expected = (num_volumes, sw, num_bases)
    if tuple(targets.shape) != expected:
        raise ValueError(f"targets must have shape {expected}, got {tuple(targets.shape)}")


def _split(projections: torch.Tensor, num_volumes: int, sw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a volume-major batch into random crops (V, sw, D) and base crops (V, K, D)."""
    width = projections.shape[1]
    crops = projections[: num_volumes * sw].reshape(num_volumes, sw, width)
    bases = projections[num_volumes * sw :].reshape(num_volumes, -1, width)
    return crops, bases
