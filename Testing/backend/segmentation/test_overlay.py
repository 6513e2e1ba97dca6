"""Overlay PNGs: every class in its own colour (the colours Slicer shows), a legend naming the classes drawn."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from matplotlib.image import imread

from voco_backend.segmentation.labels import SegmentClass, read_seg_nrrd_classes
from voco_backend.segmentation.overlay import FILL_ALPHA, label_rgba, write_overlay

LUNG_R = SegmentClass("right lung", 5, (0.8, 0.2, 0.2))
LUNG_L = SegmentClass("left lung", 6, (0.1, 0.3, 0.9))


def test_each_value_takes_its_class_colour_and_the_rest_stays_transparent():
    label = np.array([[0, 5], [6, 9]])
    rgba = label_rgba(label, [LUNG_R, LUNG_L])
    assert np.allclose(rgba[0, 1], [*LUNG_R.color, FILL_ALPHA])
    assert np.allclose(rgba[1, 0], [*LUNG_L.color, FILL_ALPHA])
    assert rgba[0, 0, 3] == 0 and rgba[1, 1, 3] == 0  # background and a value of no class


def label_image(blocks: dict[int, tuple[slice, slice, slice]]) -> sitk.Image:
    array = np.zeros((8, 64, 64), dtype=np.uint8)
    for value, where in blocks.items():
        array[where] = value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 4.0))
    return image


def near(pixels: np.ndarray, colour: np.ndarray, tolerance: float = 0.03) -> int:
    return int((np.abs(pixels - colour).max(axis=-1) < tolerance).sum())


def test_png_shows_each_predicted_class_in_its_colour_over_the_grey_background(tmp_path):
    pred = label_image({5: np.s_[:, 8:56, 4:28], 6: np.s_[:, 8:56, 36:60]})
    png = write_overlay(None, pred, tmp_path / "o.png", "unseen scan", count=2, classes=[LUNG_R, LUNG_L])
    pixels = imread(png)[..., :3]
    grey = 0.2
    for cls in (LUNG_R, LUNG_L):
        blended = FILL_ALPHA * np.asarray(cls.color) + (1 - FILL_ALPHA) * grey
        # Two 48×24-voxel blocks per slice, two slices, drawn at ~3 px per voxel: far above 500 pixels each.
        assert near(pixels, blended) > 500, cls.name
    # A class not in the table is not invented: no third fill colour beside the two.
    other = FILL_ALPHA * np.asarray((0.502, 0.682, 0.502)) + (1 - FILL_ALPHA) * grey
    assert near(pixels, other) == 0


def test_legend_names_the_segments_of_a_slicer_segmentation_in_its_colours(tmp_path, sample_ct, monkeypatch):
    """The sample's own .seg.nrrd header decides names and colours (slicerio reads it, as Slicer does)."""
    import matplotlib.figure

    classes = read_seg_nrrd_classes(sample_ct["Segmentation.seg.nrrd"])
    ref = sitk.ReadImage(str(sample_ct["Segmentation.seg.nrrd"]))
    legends = []
    original = matplotlib.figure.Figure.legend

    def spy(self, *args, **kwargs):
        legends.append([(h.get_label(), tuple(h.get_facecolor()[:3])) for h in kwargs["handles"]])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "legend", spy)
    write_overlay(ref, ref, tmp_path / "chest.png", "chest", count=3, classes=classes)
    assert (tmp_path / "chest.png").stat().st_size > 0
    drawn = legends[0]
    assert [name for name, _ in drawn] == [c.name for c in classes]
    for (_, colour), cls in zip(drawn, classes, strict=True):
        assert np.allclose(colour, cls.color, atol=1e-6)


def test_a_label_stored_with_flipped_axes_is_drawn_as_the_same_picture(tmp_path):
    """Slicer's axial view does not depend on the file's axis order: neither does the overlay."""
    lps = label_image({5: np.s_[:, 8:40, 4:20]})
    array = sitk.GetArrayFromImage(lps)[:, ::-1, ::-1].copy()  # the same voxels stored right-to-left, back-to-front
    flipped = sitk.GetImageFromArray(array)
    flipped.SetSpacing(lps.GetSpacing())
    flipped.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    flipped.SetOrigin(lps.TransformIndexToPhysicalPoint((63, 63, 0)))
    a = imread(write_overlay(None, lps, tmp_path / "a.png", "t", count=1, classes=[LUNG_R]))
    b = imread(write_overlay(None, flipped, tmp_path / "b.png", "t", count=1, classes=[LUNG_R]))
    assert np.array_equal(a, b)
