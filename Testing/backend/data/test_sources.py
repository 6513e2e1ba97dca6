"""Dataset sources: files, folders, DICOM series folders, globs and list files; bad paths get one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from voco_backend.data.sources import resolve_sources
from voco_backend.errors import DataError


@pytest.fixture()
def tree(tmp_path: Path, sample_ct, shared_data) -> Path:
    """A folder with a NRRD, a nested NIfTI and a DICOM series subfolder."""
    shutil.copy(sample_ct["CTChest4.nrrd"], tmp_path / "chest.nrrd")
    (tmp_path / "nested").mkdir()
    shutil.copy(shared_data / "ibsi_sts" / "STS_019_CT_image.nii.gz", tmp_path / "nested" / "sts.nii.gz")
    shutil.copytree(shared_data / "totalsegmentator" / "example_ct_dicom", tmp_path / "nested" / "series")
    (tmp_path / "notes.md").write_text("not an image")
    return tmp_path


def test_folder_finds_images_and_dicom_series(tree: Path):
    found = resolve_sources([str(tree)])
    assert found == [tree / "chest.nrrd", tree / "nested" / "sts.nii.gz", tree / "nested" / "series"]


def test_dicom_series_folder_is_one_source(tree: Path):
    assert resolve_sources([str(tree / "nested" / "series")]) == [tree / "nested" / "series"]


def test_glob_and_list_file_with_relative_entries_and_dedup(tree: Path):
    listing = tree / "train.txt"
    listing.write_text("# pool\nchest.nrrd\nnested/sts.nii.gz\n\nnested/series\n")
    found = resolve_sources([str(tree / "**" / "*.nii.gz"), str(listing)])
    assert found == [tree / "nested" / "sts.nii.gz", tree / "chest.nrrd", tree / "nested" / "series"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("missing.nii.gz", "no such file or folder"),
        ("*.mha", "the pattern matches no file"),
        ("empty", "folder holds no image files"),
    ],
)
def test_bad_sources_are_one_line_errors_naming_the_path(tmp_path: Path, entry: str, message: str):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        resolve_sources([str(tmp_path / entry)])
    assert message in info.value.message
    assert entry.split("/")[-1] in str(info.value.file)
    assert "\n" not in str(info.value)


def test_list_file_with_a_missing_entry_names_that_entry(tmp_path: Path):
    listing = tmp_path / "pool.txt"
    listing.write_text("gone.nrrd\n")
    with pytest.raises(DataError, match="no such file"):
        resolve_sources([str(listing)])
