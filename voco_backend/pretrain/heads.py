"""VoCo's projection heads and the student/teacher model around the SwinUNETR-v2 encoder (VOCO.md §4)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from voco_backend.config import check_choice, check_range
from voco_backend.networks import MERGE_MONAI13, SwinEncoder

Teacher = Literal["head", "network"]


class ProjectionHead(nn.Sequential):
    """Linear → BN → ReLU → Linear → BN → ReLU → Linear; BN always normalises with the current batch.

    Args:
        in_dim: width of the encoder embedding (24·fs).
        hidden: width of every layer of the head (1024 TPAMI, 2048 10k).
    """

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden, affine=False, track_running_stats=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden, affine=False, track_running_stats=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
        )


class VoCoModel(nn.Module):
    """The shared encoder with a student head and an EMA teacher (head only, or whole network for 10k).

    Args:
        model_size: ``tiny``, ``B``, ``L`` or ``H``.
        hidden: width of the projection heads.
        teacher: ``"head"`` (TPAMI: EMA head on the shared encoder) or ``"network"`` (10k: EMA encoder too).
        dropout: probability of zeroing a whole crop embedding before the student head.
        gradient_checkpointing: trade compute for memory in the Swin encoder.
        merge_order: PatchMerging order of the encoders (``monai1.3``: the official VoCo network).
    """

    def __init__(
        self,
        model_size: str,
        hidden: int = 1024,
        teacher: Teacher = "head",
        dropout: float = 0.2,
        gradient_checkpointing: bool = False,
        merge_order: str = MERGE_MONAI13,
    ) -> None:
        super().__init__()
        check_choice("teacher", teacher, ("head", "network"))
        check_range("dropout", dropout, 0.0, 1.0)
        self.encoder = SwinEncoder(model_size, gradient_checkpointing=gradient_checkpointing, merge_order=merge_order)
        dim = self.encoder.embedding_dim
        self.dropout = nn.Dropout1d(dropout)
        self.student_head = ProjectionHead(dim, hidden)
        self.teacher_head = ProjectionHead(dim, hidden).requires_grad_(False)
        # The 10k (CVPR) code builds its teacher network separately: initialised independently, not copied.
        self.teacher_encoder = (
            SwinEncoder(model_size, merge_order=merge_order).requires_grad_(False) if teacher == "network" else None
        )

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher projections (N, hidden) of crops (N, C, X, Y, Z); N >= 2 for batch norm."""
        embedding = self.encoder(crops)
        # On a 2-D (N, D) input Dropout1d sees one sample with N channels, so it zeroes whole crop embeddings.
        student = self.student_head(self.dropout(embedding))
        with torch.no_grad():
            source = embedding if self.teacher_encoder is None else self.teacher_encoder(crops)
            teacher = self.teacher_head(source.detach())
        return student, teacher

    @torch.no_grad()
    def update_teacher(self, momentum: float = 0.9) -> None:
        """EMA step θ_t ← m·θ_t + (1 − m)·θ_s of the teacher head (and teacher encoder, if any)."""
        check_range("momentum", momentum, 0.0, 1.0)
        pairs = [(self.teacher_head, self.student_head)]
        if self.teacher_encoder is not None:
            pairs.append((self.teacher_encoder, self.encoder))
        for teacher, student in pairs:
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.mul_(momentum).add_(s, alpha=1.0 - momentum)
