"""Shared fixtures: where the real CT lies.

``../shared/data`` (or ``$VOCO_SHARED_DATA``) holds the project's real CT. A newcomer's clone has no such folder:
tests that need it skip with a visible reason there, but under CI (``CI=true``) its absence is a failure. The
registry samples (slicerio's chest CT) are always available: fetched once through pip, sha256-verified, cached.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    return Path(os.environ.get("VOCO_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real CT described in its README (``ibsi_sts/``, ``pyradiomics/``, ...)."""
    folder = _shared_data_dir()
    if not (folder / "manifest.json").exists():
        message = f"real CT folder {folder} is missing (set VOCO_SHARED_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + ": CI must have ../shared/data")
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def sample_ct() -> dict[str, Path]:
    """The registry sample CT: ``CTChest4.nrrd`` and its manual ``Segmentation.seg.nrrd`` (slicerio wheel)."""
    from voco_backend.data.samples import fetch_sample

    return fetch_sample("slicerio")


@pytest.fixture(scope="session")
def sample_segment_names() -> list[str]:
    """The 7 manual segments of the registry sample's ``Segmentation.seg.nrrd``, in label-value order."""
    return [
        "ribs",
        "cervical vertebral column",
        "thoracic vertebral column",
        "lumbar vertebral column",
        "right lung",
        "left lung",
        "tissue",
    ]
