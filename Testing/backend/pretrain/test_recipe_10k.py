"""``--recipe 10k`` is the CVPR code (Luffy03/VoCo), item by item (VOCO.md §6b).

Expected numbers come from the official equations written out here with plain tensor arithmetic (no call into
the loss module): symmetric logits L = (ReLU(cos(s_a, t_k)) + ReLU(cos(t_a, s_k))) / 2, position loss
pos = Σ Y·(−log(1 − |Y − L| + ε)) / (ΣY + ε), neg = mean over Y = 0 of L², no inter-volume loss, and the
regulariser 2/(K(K−1)) Σ_{i<j} ReLU(cos(q_i, sg(q_j)))².
"""

from __future__ import annotations

import math

import pytest
import torch

from voco_backend.pretrain.config import PretrainConfig
from voco_backend.pretrain.heads import VoCoModel
from voco_backend.pretrain.losses import voco_loss

EPS = 1e-6


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def _official_10k_total(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, v: int, sw: int, k: int) -> torch.Tensor:
    """The CVPR total loss, entry by entry, for a volume-major batch (crops of all volumes, then bases)."""
    intra, reg = [], []
    for i in range(v):
        s_crops, t_crops = s[i * sw : (i + 1) * sw], t[i * sw : (i + 1) * sw]
        s_bases, t_bases = s[v * sw + i * k : v * sw + (i + 1) * k], t[v * sw + i * k : v * sw + (i + 1) * k]
        logits = torch.stack(
            [
                torch.stack(
                    [
                        (torch.relu(_cos(s_crops[a], t_bases[b])) + torch.relu(_cos(t_crops[a], s_bases[b]))) / 2
                        for b in range(k)
                    ]
                )
                for a in range(sw)
            ]
        )
        targets = y[i]
        pos = (targets * -torch.log(1 - (targets - logits).abs() + EPS)).sum() / (targets.sum() + EPS)
        zero = [logits[a, b] ** 2 for a in range(sw) for b in range(k) if targets[a, b] == 0]
        intra.append(pos + torch.stack(zero).mean())
        pairs = [torch.relu(_cos(s_bases[p], s_bases[q].detach())) ** 2 for p in range(k) for q in range(p + 1, k)]
        reg.append(torch.stack(pairs).sum() * 2 / (k * (k - 1)))
    return torch.stack(intra).mean() + torch.stack(reg).mean()


def _batch(v: int = 2, sw: int = 2, k: int = 4, d: int = 8):
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(v * (sw + k), d, generator=gen, dtype=torch.float64).requires_grad_(True)
    t = torch.randn(v * (sw + k), d, generator=gen, dtype=torch.float64)
    y = torch.rand(v, sw, k, generator=gen, dtype=torch.float64)
    y[y < 0.4] = 0.0  # some zero-overlap entries: the L² negatives
    return s, t, y


def test_10k_loss_value_and_gradients_equal_the_official_formula():
    config = PretrainConfig(data=["x"], out="r", recipe="10k")
    s, t, y = _batch()
    ours = voco_loss(
        s.float(),
        t.float(),
        y.float(),
        2,
        2,
        4,
        negative=config.negative,
        inter=config.inter,
        symmetric=config.symmetric,
    )
    (ours_grad,) = torch.autograd.grad(ours["total"], s)
    expected = _official_10k_total(s, t, y, 2, 2, 4)
    (expected_grad,) = torch.autograd.grad(expected, s)
    assert math.isclose(ours["total"].item(), expected.item(), rel_tol=1e-5)
    assert ours["inter"].item() == 0.0  # no inter-volume loss in the CVPR code
    torch.testing.assert_close(ours_grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


def test_symmetric_logits_differ_from_tpami_student_view():
    s, t, y = _batch()
    sym = voco_loss(s.float(), t.float(), y.float(), 2, 2, 4, negative="l2", inter=False, symmetric=True)
    one_sided = voco_loss(s.float(), t.float(), y.float(), 2, 2, 4, negative="l2", inter=False)
    assert abs(sym["intra"].item() - one_sided["intra"].item()) > 1e-3


def test_10k_recipe_defaults_and_tpami_unchanged():
    ten_k = PretrainConfig(data=["x"], out="r", recipe="10k")
    assert (ten_k.dropout, ten_k.inter, ten_k.symmetric, ten_k.negative, ten_k.teacher) == (
        0.0,
        False,
        True,
        "l2",
        "network",
    )
    tpami = PretrainConfig(data=["x"], out="r")
    assert (tpami.dropout, tpami.inter, tpami.symmetric) == (0.2, True, False)
    assert PretrainConfig(data=["x"], out="r", recipe="10k", dropout=0.1).dropout == 0.1  # the user's flag wins


def test_10k_teacher_network_is_initialised_independently():
    torch.manual_seed(0)
    model = VoCoModel("tiny", hidden=16, teacher="network", dropout=0.0)
    student = model.encoder.state_dict()
    teacher = model.teacher_encoder.state_dict()
    weights = [k for k in student if k.endswith("weight") and student[k].ndim > 1]
    assert weights and all(not torch.equal(student[k], teacher[k]) for k in weights)


def test_10k_crop_resize_is_trilinear_with_align_corners():
    """On a linear ramp, align_corners=True resizing maps output index j of m to input position j·(n−1)/(m−1)."""
    import numpy as np

    from voco_backend.pretrain.geometry import CropGrid, extract_crops

    grid = CropGrid(128, 32, 2, crop_resize=64)
    ramp = torch.arange(128, dtype=torch.float32)[:, None, None].expand(128, 128, 32)[None].contiguous()
    _, bases = extract_crops(ramp, grid, np.array([[64, 64]]))
    side = 128 // 2  # base crop side along x before resizing
    expected = torch.arange(64, dtype=torch.float32) * (side - 1) / 63
    torch.testing.assert_close(bases[0, 0, :, 0, 0], expected, rtol=0, atol=1e-4)


def test_10k_intensity_shift_probability_is_one_tenth():
    from voco_backend.pretrain.augment import CropAugment

    crops = torch.full((4000, 1, 2, 2, 2), 0.5)
    shifted = (
        (CropAugment(seed=1, shift_prob=PretrainConfig(data=["x"], out="r", recipe="10k").shift_prob)(crops) != 0.5)
        .flatten(1)
        .any(1)
        .float()
        .mean()
        .item()
    )
    assert abs(shifted - 0.1) < 0.02
    assert PretrainConfig(data=["x"], out="r").shift_prob == 0.5


def test_10k_keeps_each_scans_spacing_and_crops_the_foreground_above_03_of_the_abdomen_window(tmp_path):
    """CVPR code: window −175…250, foreground x > 0.3 (≈ −47.5 HU), no resampling; TPAMI keeps its own rules."""
    import numpy as np
    import SimpleITK as sitk

    from voco_backend.data.recipe import deterministic_transforms
    from voco_backend.pretrain.loop import recipe_of

    hu = np.full((20, 30, 40), -1000.0, dtype=np.float32)  # SimpleITK order z, y, x: 40 × 30 × 20 voxels (x y z)
    hu[2:18, 5:25, 5:35] = -100.0  # fat-like: above the TPAMI floor (−1000), below the 10k threshold (−47.5)
    hu[5:15, 10:20, 12:28] = 40.0  # soft tissue (x 16, y 10, z 10 voxels): above both
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.8, 0.9, 2.5))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))

    config = PretrainConfig(data=[str(path)], out=str(tmp_path / "run"), recipe="10k")
    assert (config.window, config.resample, config.foreground_threshold) == ([-175.0, 250.0], False, 0.3)
    recipe = recipe_of(config)
    out = deterministic_transforms(recipe)({"image": str(path)})["image"]
    assert tuple(float(s) for s in out.pixdim) == pytest.approx((0.8, 0.9, 2.5))  # the scan's own spacing
    # The soft-tissue box alone is the foreground (the fat around it is cut away), padded to the minimum size.
    assert tuple(out.shape[1:]) == (32, 32, 16)
    assert int((np.asarray(out[0]) > 0.3).sum()) == 16 * 10 * 10
    assert int((np.asarray(out[0]) > 0).sum()) == 16 * 10 * 10
    assert float(np.asarray(out[0]).max()) == pytest.approx((40.0 + 175.0) / 425.0, rel=1e-5)

    tpami = PretrainConfig(data=[str(path)], out=str(tmp_path / "run"))
    assert (tpami.window, tpami.resample, tpami.foreground_threshold) == ([-1000.0, 1000.0], True, 0.0)
    assert recipe_of(tpami).spacing == (1.5, 1.5, 1.5)
