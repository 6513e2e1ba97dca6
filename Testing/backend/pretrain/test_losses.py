"""VoCo losses on constructed embeddings (VOCO.md §5)."""

from __future__ import annotations

import math

import pytest
import torch

from voco_backend.pretrain.losses import overlap_logits, position_loss, regulariser, voco_loss

EYE = torch.eye(4)


def test_overlap_logits_are_rectified_cosines() -> None:
    p = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    logits = overlap_logits(p, EYE[:2])
    expected = torch.tensor([[1.0, 0.0], [1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, 0.0]])
    torch.testing.assert_close(logits, expected)


def test_perfect_prediction_costs_nothing_and_a_wrong_one_costs_more() -> None:
    targets = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    assert abs(position_loss(targets, targets.clone()).item()) < 1e-5
    wrong = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    assert position_loss(targets, wrong).item() > 1.0
    assert position_loss(targets, 0.5 * targets + 0.5 * wrong).item() < position_loss(targets, wrong).item()


@pytest.mark.parametrize(("negative", "neg_term"), [("log", math.log(2)), ("l2", 0.25)])
def test_position_loss_hand_checked(negative: str, neg_term: float) -> None:
    targets = torch.tensor([[1.0, 0.0]])
    logits = torch.tensor([[0.5, 0.5]])
    # pos = 1·(−log(1 − 0.5)) / 1; neg = −log(1 − 0.5) (log) or 0.5² (l2).
    assert position_loss(targets, logits, negative).item() == pytest.approx(math.log(2) + neg_term, abs=1e-5)


def test_position_loss_positive_part_is_overlap_weighted() -> None:
    targets = torch.tensor([[0.75, 0.25]])
    logits = torch.tensor([[0.25, 0.25]])
    # Only the first entry is wrong (|Y − L| = 0.5), weighted 0.75 of ΣY = 1; no zero-target entries.
    assert position_loss(targets, logits).item() == pytest.approx(0.75 * math.log(2), abs=1e-5)


def test_position_loss_without_negatives_is_finite() -> None:
    targets = torch.full((2, 4), 0.25)
    loss = position_loss(targets, targets.clone(), "l2")
    assert torch.isfinite(loss) and abs(loss.item()) < 1e-5


def test_position_loss_rejects_an_unknown_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        position_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), "hinge")  # type: ignore[arg-type]


def test_regulariser_is_zero_for_orthogonal_or_opposite_and_one_for_identical_bases() -> None:
    assert regulariser(EYE).item() == pytest.approx(0.0, abs=1e-7)
    assert regulariser(torch.stack([EYE[0], -EYE[0]])).item() == pytest.approx(0.0, abs=1e-7)
    assert regulariser(torch.ones(5, 4)).item() == pytest.approx(1.0, abs=1e-6)
    half = torch.stack([EYE[0], EYE[0] + EYE[1], EYE[1]])  # cosines 1/√2, 0, 1/√2 over 3 pairs
    assert regulariser(half).item() == pytest.approx((0.5 + 0.0 + 0.5) / 3, abs=1e-6)


def test_regulariser_stops_the_gradient_of_the_second_base_of_each_pair() -> None:
    bases = torch.tensor([[1.0, 1.0], [1.0, 0.0]], requires_grad=True)
    regulariser(bases).backward()
    assert bases.grad[0].abs().sum() > 0
    assert bases.grad[1].abs().sum() == 0


def _batch(crops: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """Volume-major forward batch from crops (V, sw, D) and bases (V, K, D)."""
    return torch.cat([crops.flatten(0, 1), bases.flatten(0, 1)])


def test_voco_loss_is_zero_for_a_perfect_student_and_teacher() -> None:
    targets = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 1.0, 0]], [[0, 1.0, 0, 0], [0, 0, 0, 1.0]]])
    crops = torch.cat([targets, torch.zeros(2, 2, 3)], dim=2)  # each crop = the embedding of its base
    bases = torch.eye(4, 7).expand(2, 4, 7)
    batch = _batch(crops, bases)
    losses = voco_loss(batch, batch.clone(), targets, num_volumes=2, sw=2, num_bases=4)
    assert set(losses) == {"total", "intra", "inter", "reg"}
    for name, value in losses.items():
        assert value.shape == () and abs(value.item()) < 1e-5, name


def test_voco_loss_follows_the_volume_major_layout() -> None:
    v, sw, k, d = 3, 2, 4, 6
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(v * (sw + k), d, generator=generator, requires_grad=True)
    teacher = torch.randn(v * (sw + k), d, generator=generator)
    targets = torch.softmax(torch.randn(v, sw, k, generator=generator), dim=2)
    targets[:, :, 0] = 0.0
    losses = voco_loss(student, teacher, targets, v, sw, k)

    def crops(x: torch.Tensor, i: int) -> torch.Tensor:
        return x[i * sw : (i + 1) * sw]

    def bases(x: torch.Tensor, i: int) -> torch.Tensor:
        return x[v * sw + i * k : v * sw + (i + 1) * k]

    intra = [position_loss(targets[i], overlap_logits(crops(student, i), bases(teacher, i))) for i in range(v)]
    inter = [
        position_loss(
            overlap_logits(crops(teacher, i), bases(teacher, (i + 1) % v)),
            overlap_logits(crops(student, i), bases(student, (i + 1) % v)),
        )
        for i in range(v)
    ]
    reg = [regulariser(bases(student, i)) for i in range(v)]
    for name, parts in (("intra", intra), ("inter", inter), ("reg", reg)):
        torch.testing.assert_close(losses[name], torch.stack(parts).mean(), msg=name)
    torch.testing.assert_close(losses["total"], losses["intra"] + losses["inter"] + losses["reg"])
    losses["total"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_inter_volume_loss_is_skipped_for_one_volume_or_when_disabled() -> None:
    generator = torch.Generator().manual_seed(1)
    targets = torch.softmax(torch.randn(2, 2, 4, generator=generator), dim=2)
    student = torch.randn(12, 5, generator=generator)
    teacher = torch.randn(12, 5, generator=generator)
    one = voco_loss(student[:6], teacher[:6], targets[:1], num_volumes=1, sw=2, num_bases=4)
    assert one["inter"].item() == 0.0
    torch.testing.assert_close(one["total"], one["intra"] + one["reg"])
    two = voco_loss(student, teacher, targets, num_volumes=2, sw=2, num_bases=4)
    assert two["inter"].item() > 0.01
    off = voco_loss(student, teacher, targets, num_volumes=2, sw=2, num_bases=4, inter=False)
    assert off["inter"].item() == 0.0
    torch.testing.assert_close(off["total"], two["total"] - two["inter"])


def test_voco_loss_uses_the_l2_negative_when_asked() -> None:
    generator = torch.Generator().manual_seed(2)
    targets = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    batch = torch.randn(5, 3, generator=generator)
    log = voco_loss(batch, batch, targets, 1, 1, 4, negative="log")
    l2 = voco_loss(batch, batch, targets, 1, 1, 4, negative="l2")
    logits = overlap_logits(batch[:1], batch[1:])
    torch.testing.assert_close(l2["intra"], position_loss(targets[0], logits, "l2"))
    assert l2["intra"].item() != pytest.approx(log["intra"].item())


def test_voco_loss_rejects_a_batch_of_the_wrong_layout() -> None:
    with pytest.raises(ValueError, match="student must have 12 rows"):
        voco_loss(torch.zeros(11, 3), torch.zeros(11, 3), torch.zeros(2, 2, 4), 2, 2, 4)
    with pytest.raises(ValueError, match="targets must have shape"):
        voco_loss(torch.zeros(12, 3), torch.zeros(12, 3), torch.zeros(2, 4), 2, 2, 4)


def test_inter_volume_targets_carry_no_gradient_to_the_teacher() -> None:
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(12, 5, generator=generator, requires_grad=True)
    teacher = torch.randn(12, 5, generator=generator, requires_grad=True)
    targets = torch.softmax(torch.randn(2, 2, 4, generator=generator), dim=2)
    voco_loss(student, teacher, targets, 2, 2, 4)["inter"].backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
