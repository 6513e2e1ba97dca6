"""Projection heads and the student/teacher VoCo model (VOCO.md §4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from voco_backend.errors import UsageError
from voco_backend.networks import ENCODER_PREFIXES
from voco_backend.pretrain.heads import ProjectionHead, VoCoModel
from voco_backend.weights import encoder_state

HIDDEN = 16


class _FixedEmbedding(nn.Module):
    """Stand-in encoder returning a fixed (N, D) embedding, so head logic is tested without the Swin cost."""

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Parameter(embedding)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.embedding[: crops.shape[0]]


@pytest.fixture(scope="module")
def model() -> VoCoModel:
    torch.manual_seed(0)
    return VoCoModel("tiny", hidden=HIDDEN)


def test_forward_gives_projections_and_trains_only_the_student(model: VoCoModel) -> None:
    model.zero_grad(set_to_none=True)
    crops = torch.randn(2, 1, 64, 64, 32, generator=torch.Generator().manual_seed(0))
    student, teacher = model(crops)
    assert student.shape == teacher.shape == (2, HIDDEN)
    assert student.requires_grad and not teacher.requires_grad
    student.square().sum().backward()
    assert all(p.grad is not None for p in model.student_head.parameters())
    assert model.encoder.swinViT.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.teacher_head.parameters())


def test_the_exported_encoder_is_the_official_layout(model: VoCoModel) -> None:
    state = encoder_state(model.encoder)  # what pretraining writes to encoder.pt
    assert len(state) == 145
    assert all(key.startswith(ENCODER_PREFIXES) for key in state)
    assert {key.split(".")[0] for key in state} == set(ENCODER_PREFIXES)


def test_teacher_head_is_initialised_independently(model: VoCoModel) -> None:
    student, teacher = model.student_head[0].weight, model.teacher_head[0].weight
    assert student.shape == teacher.shape and not torch.equal(student, teacher)


def test_head_layout_and_batch_statistics() -> None:
    head = ProjectionHead(8, 6)
    kinds = [type(layer) for layer in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert all(not bn.affine and not bn.track_running_stats for bn in head if isinstance(bn, nn.BatchNorm1d))
    x = torch.randn(5, 8)
    head.train()
    trained = head(x)
    head.eval()
    torch.testing.assert_close(head(x), trained)  # BN uses the current batch in both modes


def _stub_model(teacher: str = "head", dropout: float = 0.5) -> tuple[VoCoModel, torch.Tensor]:
    """A tiny model whose encoder(s) return a fixed embedding (N=40, D=24·12)."""
    model = VoCoModel("tiny", hidden=HIDDEN, teacher=teacher, dropout=dropout)  # type: ignore[arg-type]
    embedding = torch.randn(40, model.encoder.embedding_dim, generator=torch.Generator().manual_seed(1)) + 3
    model.encoder = _FixedEmbedding(embedding)
    if teacher == "network":
        model.teacher_encoder = _FixedEmbedding(-embedding).requires_grad_(False)
    return model, embedding


def _head_inputs(model: VoCoModel, crops: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inputs the student and teacher heads receive in one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        head.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0].detach()))
        for name, head in (("student", model.student_head), ("teacher", model.teacher_head))
    ]
    model(crops)
    for hook in hooks:
        hook.remove()
    return seen


def test_dropout_zeroes_whole_crop_embeddings_for_the_student_only() -> None:
    torch.manual_seed(2)
    model, embedding = _stub_model(dropout=0.5)
    crops = torch.zeros(40, 1, 1, 1, 1)
    model.train()
    seen = _head_inputs(model, crops)
    zeroed = (seen["student"] == 0).all(dim=1)
    assert 5 <= zeroed.sum() <= 35
    torch.testing.assert_close(seen["student"][~zeroed], embedding[~zeroed].detach() * 2)
    torch.testing.assert_close(seen["teacher"], embedding.detach())
    model.eval()
    torch.testing.assert_close(_head_inputs(model, crops)["student"], embedding.detach())


def test_network_teacher_embeds_with_its_own_encoder() -> None:
    model, embedding = _stub_model(teacher="network", dropout=0.0)
    seen = _head_inputs(model, torch.zeros(40, 1, 1, 1, 1))
    torch.testing.assert_close(seen["teacher"], -embedding.detach())
    torch.testing.assert_close(seen["student"], embedding.detach())


@pytest.mark.parametrize("teacher", ["head", "network"])
def test_update_teacher_is_an_exact_ema(teacher: str) -> None:
    model = VoCoModel("tiny", hidden=HIDDEN, teacher=teacher)  # type: ignore[arg-type]
    pairs = [(model.teacher_head, model.student_head)]
    if teacher == "network":
        assert model.teacher_encoder is not None
        assert all(not p.requires_grad for p in model.teacher_encoder.parameters())
        with torch.no_grad():
            for p in model.encoder.parameters():
                p.add_(1.0)  # the copy starts equal; move the student so the EMA is visible
        pairs.append((model.teacher_encoder, model.encoder))
    else:
        assert model.teacher_encoder is None
    before = [[p.clone() for p in t.parameters()] for t, _ in pairs]
    model.update_teacher(0.9)
    for (t, s), old in zip(pairs, before, strict=True):
        for new, start, source in zip(t.parameters(), old, s.parameters(), strict=True):
            torch.testing.assert_close(new, 0.9 * start + 0.1 * source, rtol=0, atol=1e-6)
            assert not torch.equal(new, start)


def test_invalid_options_name_the_field() -> None:
    with pytest.raises(UsageError, match="field 'teacher'"):
        VoCoModel("tiny", teacher="momentum")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="field 'dropout'"):
        VoCoModel("tiny", dropout=1.5)
    with pytest.raises(UsageError, match="field 'model_size'"):
        VoCoModel("XL")
