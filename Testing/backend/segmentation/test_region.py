"""``segment --roi-box`` (RAS mm) and ``--body-crop``: which voxels a region holds on real grids of different
directions, that the body's box holds every reference label, and that the label map stays on the full grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from backend_cli import TINY_FINETUNE as TINY
from backend_cli import backend

from voco_backend.commands.segment import SegmentConfig
from voco_backend.data.io import ijk_to_lps, read_image
from voco_backend.errors import UsageError
from voco_backend.networks import SwinEncoder
from voco_backend.segmentation.evaluation import on_reference_grid
from voco_backend.segmentation.inference import Segmenter
from voco_backend.segmentation.model_folder import resolve_segmentation_model
from voco_backend.segmentation.region import (
    Region,
    SegmentRegion,
    body_region,
    box_region,
    image_extent_ras,
    segment_region,
)
from voco_backend.weights import export_encoder


def ras_centres(image: sitk.Image) -> np.ndarray:
    """The RAS-mm centre of every voxel, as an (X, Y, Z, 3) array indexed (i, j, k)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in image.GetSize()], indexing="ij"), axis=-1)
    lps = grid @ ijk_to_lps(image)[:3, :3].T + ijk_to_lps(image)[:3, 3]
    return lps * np.array([-1.0, -1.0, 1.0])


def flipped_copy(image: sitk.Image, axis: int) -> sitk.Image:
    """The same CT in the same physical place, stored with index ``axis`` (0 = i) running the other way."""
    array = sitk.GetArrayFromImage(image)
    copy = sitk.GetImageFromArray(np.flip(array, axis=2 - axis).copy())
    copy.SetSpacing(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3).copy()
    direction[:, axis] *= -1
    copy.SetDirection(direction.flatten().tolist())
    last = [0, 0, 0]
    last[axis] = image.GetSize()[axis] - 1
    copy.SetOrigin(image.TransformIndexToPhysicalPoint(last))
    return copy


GRIDS = {
    "CTChest4 (LPS direction diag(-1, -1, 1))": ("slicerio/CTChest4.nrrd", None),
    "TotalSegmentator DICOM (identity in LPS)": ("totalsegmentator/example_ct_dicom", None),
    "CTChest4 stored i-flipped": ("slicerio/CTChest4.nrrd", 0),
    "DICOM stored j-flipped": ("totalsegmentator/example_ct_dicom", 1),
}


@pytest.mark.parametrize("name", list(GRIDS))
def test_roi_box_in_ras_holds_exactly_the_voxels_whose_centres_lie_in_it(shared_data, name):
    path, flip = GRIDS[name]
    image = read_image(shared_data / path)
    if flip is not None:
        image = flipped_copy(image, flip)
    low, high = image_extent_ras(image)
    box = [*(low + 0.3 * (high - low)), *(low + 0.6 * (high - low))]
    region = box_region(image, box)
    centres = ras_centres(image)
    inside = np.all((centres >= box[:3]) & (centres <= box[3:]), axis=-1)
    i, j, k = np.nonzero(inside)
    assert region == Region.spanning((i.min(), j.min(), k.min()), (i.max(), j.max(), k.max()))
    assert region.voxels == inside.sum()  # an axis-aligned grid: the region is the box, not a box around it


def test_a_box_gives_the_same_physical_voxels_on_a_grid_stored_the_other_way(shared_data):
    image = read_image(shared_data / "totalsegmentator" / "example_ct_dicom")
    reference = read_image(shared_data / "totalsegmentator" / "example_seg_dicom.nii.gz")
    assert reference.GetDirection()[4] == -1.0  # the label really is stored y-flipped against the series
    low, high = image_extent_ras(image)
    box = [*(low + [0.3, 0.5, -1.0] * (high - low)), *(low + [0.6, 0.8, 2.0] * (high - low))]
    on_image = box_region(image, box).extract(image)
    on_reference = box_region(reference, box).extract(reference)
    assert on_image.GetSize() == on_reference.GetSize()
    np.testing.assert_allclose(image_extent_ras(on_image), image_extent_ras(on_reference), atol=1e-3)
    # the same anatomy: the reference's labels in the box fall on the image's bone and soft tissue
    labels = sitk.GetArrayFromImage(on_reference_grid(on_reference, on_image)) > 0
    assert labels.any() and np.median(sitk.GetArrayFromImage(on_image)[labels]) > -200


BODIES = {
    "CTChest4 (-3024 outside the field of view)": ("slicerio/CTChest4.nrrd", "slicerio/Segmentation.seg.nrrd"),
    "TotalSegmentator abdomen": (
        "totalsegmentator/example_ct.nii.gz",
        "totalsegmentator/example_seg_fast_force_split.nii.gz",
    ),
    "TotalSegmentator DICOM (an arm apart from the trunk)": (
        "totalsegmentator/example_ct_dicom",
        "totalsegmentator/example_seg_dicom.nii.gz",
    ),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_body_region_holds_every_reference_label_voxel(shared_data, name):
    image_path, label_path = BODIES[name]
    image = read_image(shared_data / image_path)
    labels = sitk.GetArrayFromImage(on_reference_grid(read_image(shared_data / label_path), image)) > 0
    region = body_region(image)
    k, j, i = np.nonzero(labels)
    assert np.all(np.array([i.min(), j.min(), k.min()]) >= region.start)
    assert np.all(np.array([i.max(), j.max(), k.max()]) < region.stop)
    assert region.voxels < Region.whole(image).voxels  # the air, the table and the noise around the body are left out


def test_a_box_that_misses_the_image_or_holds_no_body_is_a_usage_error_naming_the_option(shared_data):
    image = read_image(shared_data / "slicerio" / "CTChest4.nrrd")
    with pytest.raises(UsageError, match=r"^field 'roi_box': the box \(1000\.0, .* misses the image, whose voxel"):
        segment_region(image, [1000, 0, 0, 1100, 10, 10], False, 50.0)
    low, _ = image_extent_ras(image)
    air = [*(low + 1), *(low + 20)]  # a corner outside the field of view (-3024 HU)
    assert segment_region(image, air, False, 50.0) is not None
    with pytest.raises(UsageError, match=r"^field 'roi_box': the box holds none of the body"):
        segment_region(image, air, True, 50.0)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([0, 0, 0, -1, 5, 5], r"empty or inverted along x; give the low corner"),
        ([0, 0, 0, 5, 5, 0], r"empty or inverted along z;"),
        ([0, 0, 0, 5, float("nan"), 5], r"needs 6 finite numbers"),
    ],
)
def test_an_empty_inverted_or_non_finite_box_is_refused_naming_the_field(box, message):
    with pytest.raises(UsageError, match=f"^field 'roi_box'.*{message}"):
        SegmentConfig(model="m", input=["ct.nii.gz"], output="seg.nii.gz", roi_box=box)


def test_cli_refuses_an_inverted_box_with_exit_2_and_one_line():
    run = backend(
        "segment", "--model", "m", "--input", "ct.nii.gz", "--output", "s.nii.gz",
        "--roi-box", "0", "0", "0", "-1", "5", "5",
    )  # fmt: skip
    assert run.returncode == 2
    (error,) = run.of("error")
    assert error["message"].startswith("field 'roi_box': the box [0.0, 0.0, 0.0, -1.0, 5.0, 5.0] is empty or inverted")
    assert "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory, shared_data):
    """A 1-step tiny model trained on the chest CT's 7 manual segments (accuracy is not the point: geometry is)."""
    work = tmp_path_factory.mktemp("region_model")
    torch.manual_seed(0)
    encoder = export_encoder(SwinEncoder("tiny"), work / "encoder.pt")
    chest = shared_data / "slicerio"
    run = backend(
        "finetune", "--images", str(chest / "CTChest4.nrrd"), "--labels", str(chest / "Segmentation.seg.nrrd"),
        "--init", str(encoder), "--steps", "1", "--val-every", "1", *TINY, "--out", str(work / "model"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return work / "model"


@pytest.mark.slow
def test_a_region_is_labelled_as_in_the_full_run_and_pasted_on_the_full_grid(model, shared_data):
    """With the whole image as context the network sees what a full run sees: inside the box the labels are
    exactly the full run's, outside they are background, on the input's grid (CTChest4: LPS direction flips).

    The network's label maps are compared (``postprocess=False``): a largest-component cut, where the model
    chose one, is judged inside the box, so a component the box cuts may rank differently there."""
    image = read_image(shared_data / "slicerio" / "CTChest4.nrrd")
    info, weights = resolve_segmentation_model(str(model))
    segmenter = Segmenter(info, weights, torch.device("cpu"), "fp32")
    full = segmenter.segment(image, overlap=0.25, postprocess=False)
    low, high = image_extent_ras(image)
    labelled = box_region(image, [*(low + 0.25 * (high - low)), *(low + 0.7 * (high - low))])
    part = segmenter.segment(
        image, overlap=0.25, region=SegmentRegion(labelled, Region.whole(image)), postprocess=False
    )
    assert part.GetSize() == image.GetSize() and part.GetDirection() == image.GetDirection()
    assert part.GetOrigin() == image.GetOrigin() and part.GetSpacing() == image.GetSpacing()
    full_array, part_array = sitk.GetArrayFromImage(full), sitk.GetArrayFromImage(part)
    inside = np.zeros(full_array.shape, dtype=bool)
    (i0, j0, k0), (i1, j1, k1) = labelled.start, labelled.stop
    inside[k0:k1, j0:j1, i0:i1] = True
    assert len(np.unique(full_array[inside])) > 1  # the comparison is between real, varied labels
    np.testing.assert_array_equal(part_array[inside], full_array[inside])
    assert not part_array[~inside].any()


@pytest.mark.slow
def test_cli_roi_box_and_body_crop_write_the_full_grid_and_log_the_share_segmented(model, shared_data, tmp_path):
    """A box on the RAS chest, given as Slicer shows it, with the body crop: the label map on the full grid,
    background outside the box and the body, the share labelled in the log."""
    ct = shared_data / "slicerio" / "CTChest4.nrrd"
    image = read_image(ct)
    low, high = image_extent_ras(image)
    box = [*(low + 0.2 * (high - low)), *(low + 0.8 * (high - low))]
    outputs = {}
    for name, extra in (("full", []), ("box", ["--roi-box", *[str(v) for v in box], "--body-crop"])):
        outputs[name] = tmp_path / f"{name}.nii.gz"
        run = backend("segment", "--model", str(model), "--input", str(ct), "--output", str(outputs[name]), *extra)
        assert run.returncode == 0, run.stderr[-2000:]
    (share,) = [e["message"] for e in run.of("log") if e["message"].startswith("segmenting ")]
    labelled = box_region(image, box).intersect(body_region(image).grow(image, 10.0))
    assert share.startswith(f"segmenting {labelled.voxels / Region.whole(image).voxels:.0%} of the voxels")
    full, part = (sitk.ReadImage(str(outputs[n])) for n in ("full", "box"))
    assert part.GetSize() == image.GetSize() and part.GetOrigin() == pytest.approx(image.GetOrigin())
    full_array, part_array = sitk.GetArrayFromImage(full), sitk.GetArrayFromImage(part)
    inside = np.zeros(full_array.shape, dtype=bool)
    (i0, j0, k0), (i1, j1, k1) = labelled.start, labelled.stop
    inside[k0:k1, j0:j1, i0:i1] = True
    assert not part_array[~inside].any() and len(np.unique(part_array[inside])) > 1
    # Inside, the labels differ from the full run's only where the windows fall differently: this 1-step model's
    # flat probabilities flip many argmax labels (69% agree); benchmarks/segment_speed.py measures a trained one.
    assert (part_array[inside] == full_array[inside]).mean() > 0.5


@pytest.mark.slow
def test_a_box_that_misses_the_input_exits_2_alone_and_fails_that_volume_in_a_batch(model, shared_data, tmp_path):
    chest, dicom = shared_data / "slicerio" / "CTChest4.nrrd", shared_data / "totalsegmentator" / "example_ct_dicom"
    far = ["--roi-box", "5000", "5000", "5000", "5100", "5100", "5100"]
    run = backend("segment", "--model", str(model), "--input", str(chest), "--output", str(tmp_path / "s.nii.gz"), *far)
    assert run.returncode == 2
    (error,) = run.of("error")
    assert error["message"].startswith("field 'roi_box': the box (5000.0, 5000.0, 5000.0)..(5100.0, 5100.0, 5100.0)")
    assert "misses the image" in error["message"] and not (tmp_path / "s.nii.gz").exists()
    out = tmp_path / "batch"
    run = backend("segment", "--model", str(model), "--input", str(chest), str(dicom), "--output-dir", str(out), *far)
    assert run.returncode == 3  # the same box for each volume: those it misses fail, the others would be done
    (summary,) = run.of("result")
    assert summary["outputs"] == [] and [f["input"] for f in summary["failed"]] == [str(chest), str(dicom)]
    assert all(f["message"].startswith("field 'roi_box': the box") for f in summary["failed"])
