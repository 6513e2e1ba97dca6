"""The registry samples: pyradiomics' chest CTs straight from the package index, sha256-verified.

The first test fetches the real archive from the real index (PyPI, or ``$PIP_INDEX_URL``), the one download the
tests make besides the slicerio wheel. The others put a loopback server in the index's place (our stand-in for
PyPI, since the real index cannot be made to serve a tampered file or an HTML page): they check the mirror's
page forms and that a file whose sha256 is not the pinned one is refused with nothing kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from loopback import Quiet, serving

from voco_backend.data import samples
from voco_backend.data.io import read_image
from voco_backend.errors import DataError


def test_pyradiomics_chest_cts_come_from_the_index_as_the_shared_copies(tmp_path, shared_data, monkeypatch):
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    paths = samples.fetch_sample("pyradiomics", tmp_path)

    manifest = json.loads((shared_data / "manifest.json").read_text())
    for name, path in paths.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest[f"pyradiomics/{name}"]["sha256"]
    image = read_image(paths["lung1_image.nrrd"])
    assert image.GetSize() == (512, 512, 48)
    # A second call reads the verified cache and needs no index at all.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    assert samples.fetch_sample("pyradiomics", tmp_path) == paths


def _archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def mirror() -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """A loopback index: path → (content type, body); yields its base URL and the table to fill."""
    pages: dict[str, tuple[str, bytes]] = {}

    class Handler(Quiet, BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in pages:
                self.send_error(404)
                return
            content_type, body = pages[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as base:
        yield base, pages


def _package(monkeypatch, archive: bytes) -> samples.SamplePackage:
    real = samples.PACKAGES["pyradiomics"]
    package = dataclasses.replace(
        real, sha256=hashlib.sha256(archive).hexdigest(), members={"pyradiomics-3.1.0/data/a.nrrd": "a.nrrd"}
    )
    monkeypatch.setitem(samples.PACKAGES, "pyradiomics", package)
    return package


@pytest.mark.parametrize("form", ["json", "html"])
def test_a_mirror_in_pip_index_url_serves_the_archive(tmp_path, monkeypatch, mirror, form):
    base, pages = mirror
    archive = _archive({"pyradiomics-3.1.0/data/a.nrrd": b"scan"})
    package = _package(monkeypatch, archive)
    pages["/files/x/pyradiomics-3.1.0.tar.gz"] = ("application/octet-stream", archive)
    if form == "json":
        listing = {"files": [{"filename": package.filename, "url": "../../files/x/pyradiomics-3.1.0.tar.gz"}]}
        pages["/simple/pyradiomics/"] = ("application/vnd.pypi.simple.v1+json", json.dumps(listing).encode())
    else:
        link = '<a href="../../files/x/pyradiomics-3.1.0.tar.gz#sha256=00">pyradiomics-3.1.0.tar.gz</a>'
        pages["/simple/pyradiomics/"] = ("text/html", f"<html><body>{link}</body></html>".encode())
    monkeypatch.setenv("PIP_INDEX_URL", f"{base}/simple/")

    paths = samples.fetch_sample("pyradiomics", tmp_path)
    assert paths["a.nrrd"].read_bytes() == b"scan"


def test_an_archive_that_is_not_the_pinned_one_is_refused_and_nothing_kept(tmp_path, monkeypatch, mirror):
    base, pages = mirror
    _package(monkeypatch, _archive({"pyradiomics-3.1.0/data/a.nrrd": b"scan"}))
    tampered = _archive({"pyradiomics-3.1.0/data/a.nrrd": b"something else"})
    pages["/files/pyradiomics-3.1.0.tar.gz"] = ("application/octet-stream", tampered)
    pages["/simple/pyradiomics/"] = ("text/html", b'<a href="/files/pyradiomics-3.1.0.tar.gz">x</a>')
    monkeypatch.setenv("PIP_INDEX_URL", f"{base}/simple")

    with pytest.raises(DataError, match="sha256"):
        samples.fetch_sample("pyradiomics", tmp_path)
    assert not any((tmp_path / "pyradiomics").glob("*"))


def test_an_index_without_the_file_names_the_page(tmp_path, monkeypatch, mirror):
    base, pages = mirror
    pages["/simple/pyradiomics/"] = ("text/html", b'<a href="/files/pyradiomics-3.0.0.tar.gz">old</a>')
    monkeypatch.setenv("PIP_INDEX_URL", f"{base}/simple")

    with pytest.raises(DataError, match=r"lists no pyradiomics-3\.1\.0\.tar\.gz") as caught:
        samples.fetch_sample("pyradiomics", tmp_path)
    assert caught.value.file == f"{base}/simple/pyradiomics/"


def test_a_broken_json_page_is_a_one_line_data_error(tmp_path, monkeypatch, mirror):
    base, pages = mirror
    pages["/simple/pyradiomics/"] = ("application/vnd.pypi.simple.v1+json", b'{"files": [1, 2')
    monkeypatch.setenv("PIP_INDEX_URL", f"{base}/simple")

    with pytest.raises(DataError, match="not PEP 691 JSON") as caught:
        samples.fetch_sample("pyradiomics", tmp_path)
    assert "\n" not in str(caught.value)
