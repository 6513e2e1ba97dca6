"""Real sample CT fetched from the Python package registry (no other internet), sha256-verified and cached.

Two public packages ship real CT: the ``slicerio`` wheel (a chest CT with 7 manual Slicer segments) and the
``totalsegmentator`` source archive (an abdomen CT and a DICOM series, with model-made labels). ``pip download``
fetches the archive, its sha256 is checked against the value pinned here, and the wanted members are extracted
into the cache folder. Nothing else is installed.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from voco_backend.atomic import atomic_path
from voco_backend.cache import cache_dir as default_cache
from voco_backend.download import file_digest
from voco_backend.errors import DataError


@dataclasses.dataclass(frozen=True)
class SamplePackage:
    """A registry archive and the member files taken from it (member path → local name)."""

    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]
    sdist: bool = False


PACKAGES: dict[str, SamplePackage] = {
    "slicerio": SamplePackage(
        requirement="slicerio==1.4.0",
        filename="slicerio-1.4.0-py3-none-any.whl",
        sha256="ae3432ee06386bfe3b2e8d2d07940411fcbaefab8ed89a3853ee9c5ac19e296b",
        members={
            "slicerio/data/CTChest4.nrrd": "CTChest4.nrrd",
            "slicerio/data/Segmentation.seg.nrrd": "Segmentation.seg.nrrd",
        },
    ),
    "totalsegmentator": SamplePackage(
        requirement="totalsegmentator==2.18.0",
        filename="totalsegmentator-2.18.0.tar.gz",
        sha256="5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        members={
            "totalsegmentator-2.18.0/tests/reference_files/example_ct.nii.gz": "example_ct.nii.gz",
            "totalsegmentator-2.18.0/tests/reference_files/example_ct_sm.nii.gz": "example_ct_sm.nii.gz",
            "totalsegmentator-2.18.0/tests/reference_files/example_seg.nii.gz": "example_seg.nii.gz",
        },
        sdist=True,
    ),
}


def _pip_download(package: SamplePackage, folder: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(folder),
        package.requirement,
    ]
    if package.sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    archive = folder / package.filename
    if done.returncode != 0 or not archive.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(
            f"pip download failed ({last}); the sample CT needs access to the package registry",
            file=package.requirement,
        )
    return archive


def _extract(package: SamplePackage, archive: Path, target: Path) -> None:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for member, name in package.members.items():
                with zf.open(member) as src, atomic_path(target / name) as tmp, tmp.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive, "r:gz") as tf:
        for member, name in package.members.items():
            src = tf.extractfile(member)
            if src is None:
                raise DataError(f"member {member} missing from the archive", file=archive)
            with src, atomic_path(target / name) as tmp, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst)


def fetch_sample(name: str, cache_dir: Path | None = None) -> dict[str, Path]:
    """Return the local paths of package ``name``'s sample files, fetching and verifying them once."""
    package = PACKAGES[name]
    target = (cache_dir or default_cache() / "samples") / name
    paths = {local: target / local for local in package.members.values()}
    stamp = target / ".verified"
    if stamp.exists() and stamp.read_text().strip() == package.sha256 and all(p.exists() for p in paths.values()):
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        archive = _pip_download(package, Path(tmp))
        actual = file_digest(archive, "sha256")
        if actual != package.sha256:
            raise DataError(
                f"sha256 mismatch: expected {package.sha256}, got {actual}; nothing was kept", file=package.filename
            )
        _extract(package, archive, target)
    stamp.write_text(package.sha256)
    return paths
