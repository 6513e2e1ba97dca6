"""Class tables and the label checks, on real labels where geometry is claimed."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from voco_backend.data.io import read_image
from voco_backend.errors import DataError, UsageError
from voco_backend.segmentation.labels import (
    check_same_space,
    class_table,
    label_on_image_grid,
    parse_classes,
    read_color_table,
    read_seg_nrrd_classes,
    to_class_indices,
)


@pytest.fixture(scope="module")
def sts(shared_data):
    folder = shared_data / "ibsi_sts"
    return read_image(folder / "STS_002_CT_image.nii.gz"), read_image(folder / "STS_002_CT_mask.nii.gz")


def test_classes_flag_is_parsed_and_sorted_by_value():
    classes = parse_classes(["edema=2", "tumour core=1"])
    assert [(c.name, c.value) for c in classes] == [("tumour core", 1), ("edema", 2)]


def test_bare_class_names_take_values_one_two_in_order():
    classes = parse_classes(["tumour", "edema", "necrosis"])
    assert [(c.name, c.value) for c in classes] == [("tumour", 1), ("edema", 2), ("necrosis", 3)]
    assert [(c.name, c.value) for c in parse_classes(["tumour"])] == [("tumour", 1)]


@pytest.mark.parametrize(
    "spec", [["tumour", "edema=2"], ["tumour=0"], ["tumour=x"], ["a=1", "b=1"], ["=1"], ["a", "a"]]
)
def test_bad_classes_flag_is_a_usage_error_naming_the_field(spec):
    with pytest.raises(UsageError, match="'classes'"):
        parse_classes(spec)


def test_slicer_colour_table_is_read(tmp_path):
    table = tmp_path / "labels.ctbl"
    table.write_text("# Color table file\n0 Background 0 0 0 0\n1 tumour 255 0 0 255\n\n7 edema 0 128 255 255\n")
    classes = read_color_table(table)
    assert [(c.name, c.value) for c in classes] == [("tumour", 1), ("edema", 7)]
    assert classes[1].color == pytest.approx((0.0, 128 / 255, 1.0))


def test_slicer_csv_colour_table_keeps_names_with_spaces(tmp_path):
    table = tmp_path / "classes.csv"
    table.write_text(
        '"LabelValue","Name","Color_R","Color_G","Color_B","Color_A"\n0,"background",0,0,0,0\n'
        '5,"right lung",128,51,26,255\n2,"left lung",26,230,26,255\n'
    )
    classes = read_color_table(table)
    assert [(c.name, c.value) for c in classes] == [("left lung", 2), ("right lung", 5)]
    assert classes[1].color == pytest.approx((128 / 255, 51 / 255, 26 / 255))


def test_csv_without_the_slicer_columns_is_one_line_naming_the_file(tmp_path):
    table = tmp_path / "classes.csv"
    table.write_text("value,label\n1,tumour\n")
    with pytest.raises(DataError, match=r"not a Slicer \.csv colour table") as error:
        read_color_table(table)
    assert error.value.file == str(table)


def test_malformed_colour_table_names_file_and_line(tmp_path):
    table = tmp_path / "bad.txt"
    table.write_text("1 tumour 255 0\n")
    with pytest.raises(DataError, match="line 1") as error:
        read_color_table(table)
    assert error.value.file == str(table)


def test_seg_nrrd_header_gives_names_values_and_colours(shared_data):
    classes = read_seg_nrrd_classes(shared_data / "slicerio" / "Segmentation.seg.nrrd")
    assert [c.value for c in classes] == list(range(1, 8))
    assert classes[0].name == "ribs"
    assert classes[0].color == pytest.approx((0.992157, 0.909804, 0.619608))


def test_without_a_table_the_label_values_become_classes(sts):
    classes, source = class_table([], None, [sts[1]], ["STS_002_CT_mask.nii.gz"])
    assert [(c.name, c.value) for c in classes] == [("label_1", 1)]
    assert source == "label values"


def test_label_cropped_to_a_block_of_the_image_is_pasted_back_exactly(sts):
    image, label = sts
    cropped = label[20:120, 10:130, 5:40]
    restored = label_on_image_grid(cropped, image, "cropped.nrrd")
    assert restored.GetSize() == image.GetSize()
    expected = np.zeros(image.GetSize()[::-1], dtype=np.int32)
    expected[5:40, 10:130, 20:120] = sitk.GetArrayViewFromImage(label)[5:40, 10:130, 20:120]
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(restored), expected)


def test_label_flipped_in_array_terms_but_aligned_in_physical_space_is_accepted(sts):
    image, label = sts
    flipped = sitk.Flip(label, [False, True, False])  # flips the array and the direction: same physical label
    restored = label_on_image_grid(flipped, image, "flipped.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(restored), sitk.GetArrayViewFromImage(label))


@pytest.mark.parametrize("change", ["origin", "spacing", "direction", "extent"])
def test_label_on_another_grid_is_a_data_error_naming_the_label(sts, change):
    image, label = sts
    moved = sitk.Image(label)
    if change == "origin":
        moved.SetOrigin(np.add(label.GetOrigin(), (0.5 * label.GetSpacing()[0], 0, 0)).tolist())
    elif change == "spacing":
        moved.SetSpacing(np.multiply(label.GetSpacing(), (1, 1, 2)).tolist())
    elif change == "direction":
        c, s = np.cos(0.2), np.sin(0.2)
        moved.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    else:
        moved.SetOrigin(label.TransformIndexToPhysicalPoint((10, 0, 0)))
    with pytest.raises(DataError, match="physical space") as error:
        check_same_space(moved, image, "moved.nii.gz")
    assert error.value.file == "moved.nii.gz"


def test_values_outside_the_classes_and_empty_labels_are_data_errors():
    classes = parse_classes(["tumour=1"])
    np.testing.assert_array_equal(to_class_indices(np.array([0, 1, 1]), classes, "a"), [0, 1, 1])
    with pytest.raises(DataError, match="value\\(s\\) 3 not among the classes"):
        to_class_indices(np.array([0, 1, 3]), classes, "a")
    with pytest.raises(DataError, match="empty"):
        to_class_indices(np.zeros(4, dtype=np.uint8), classes, "a")
