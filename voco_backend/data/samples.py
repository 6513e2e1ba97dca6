"""Real sample CT fetched from the Python package registry (no other internet), sha256-verified and cached.

Three public packages ship real CT: the ``slicerio`` wheel (a chest CT with 7 manual Slicer segments), the
``totalsegmentator`` source archive (an abdomen CT and a DICOM series, with model-made labels) and the
``pyradiomics`` source archive (two chest CTs at 0.6 mm in-plane, each with a lung lesion outlined). ``pip
download`` fetches the first two; pyradiomics' archive cannot be prepared by pip (its ``setup.py`` needs
``versioneer`` and a numpy built from source), so that file is taken from the package index itself: its address
from the index's project page (``$PIP_INDEX_URL``, default PyPI), downloaded like the model weights. Each
archive's sha256 is checked against the value pinned here before the wanted members are extracted into the cache
folder. Nothing is installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from voco_backend.atomic import atomic_path
from voco_backend.cache import cache_dir as default_cache
from voco_backend.cancel import CancelToken
from voco_backend.download import download, file_digest, stall_timeout_s
from voco_backend.errors import DataError
from voco_backend.protocol import Reporter

DEFAULT_INDEX_URL = "https://pypi.org/simple"


@dataclasses.dataclass(frozen=True)
class SamplePackage:
    """A registry archive and the member files taken from it (member path → local name)."""

    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]
    sdist: bool = False
    from_index: bool = False  # the file straight from the index, for an archive that pip cannot prepare


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
    "pyradiomics": SamplePackage(
        requirement="pyradiomics==3.1.0",
        filename="pyradiomics-3.1.0.tar.gz",
        sha256="24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4",
        members={
            "pyradiomics-3.1.0/data/lung1_image.nrrd": "lung1_image.nrrd",
            "pyradiomics-3.1.0/data/lung2_image.nrrd": "lung2_image.nrrd",
        },
        sdist=True,
        from_index=True,
    ),
}


def index_url() -> str:
    """The package index that samples come from: ``$PIP_INDEX_URL`` (a mirror), else PyPI."""
    return (os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL).rstrip("/")


def _project_page(url: str) -> tuple[str, bytes]:
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=stall_timeout_s()) as response:
            return response.headers.get("Content-Type", ""), response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        message = f"the package index did not answer ({reason}); set PIP_INDEX_URL to a mirror"
        raise DataError(message, file=url) from exc


def index_file_url(package: SamplePackage) -> str:
    """The address of ``package``'s archive, read from its project page on the index (PEP 691 JSON or HTML)."""
    project = package.requirement.split("==")[0]
    page = f"{index_url()}/{project}/"
    content_type, body = _project_page(page)
    if "json" in content_type:
        try:
            files = json.loads(body).get("files", [])
            links = [f["url"] for f in files if f.get("filename") == package.filename]
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            raise DataError(f"the index's project page is not PEP 691 JSON ({exc})", file=page) from exc
    else:
        hrefs = re.findall(r'href="([^"]+)"', body.decode("utf-8", "replace"))
        links = [h for h in hrefs if urllib.parse.urlparse(h).path.rsplit("/", 1)[-1] == package.filename]
    if not links:
        raise DataError(f"the index lists no {package.filename}; use an index that has it", file=page)
    return urllib.parse.urljoin(page, links[0])


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


def fetch_sample(
    name: str, cache_dir: Path | None = None, reporter: Reporter | None = None, cancel: CancelToken | None = None
) -> dict[str, Path]:
    """Return the local paths of package ``name``'s sample files, fetching and verifying them once.

    ``reporter`` and ``cancel`` serve the downloads from the index (progress events; a cancel between chunks).
    """
    package = PACKAGES[name]
    target = (cache_dir or default_cache() / "samples") / name
    paths = {local: target / local for local in package.members.values()}
    stamp = target / ".verified"
    if stamp.exists() and stamp.read_text().strip() == package.sha256 and all(p.exists() for p in paths.values()):
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        if package.from_index:  # download() verifies the sha256 before the file is there
            archive = Path(tmp) / package.filename
            quiet = reporter or Reporter(enabled=False)
            download(index_file_url(package), archive, ("sha256", package.sha256), quiet, cancel or CancelToken())
        else:
            archive = _pip_download(package, Path(tmp))
            actual = file_digest(archive, "sha256")
            if actual != package.sha256:
                message = f"sha256 mismatch: expected {package.sha256}, got {actual}; nothing was kept"
                raise DataError(message, file=package.filename)
        _extract(package, archive, target)
    stamp.write_text(package.sha256)
    return paths
