"""``models import NAME FILE``: offline weights, verified against the catalogue's checksum, placed where
``models fetch`` would put them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from voco_backend import catalogue
from voco_backend.cache import CACHE_ENV
from voco_backend.cli import main
from voco_backend.networks import SwinEncoder
from voco_backend.weights import export_encoder

RESOURCES = Path(__file__).resolve().parents[1].parent / "voco_backend" / "resources"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(catalogue.CATALOGUE_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def weights(tmp_path) -> Path:
    """A real encoder file in the official layout (a stand-in for a downloaded release file)."""
    torch.manual_seed(0)
    return export_encoder(SwinEncoder("tiny"), tmp_path / "downloads" / "VoCo_B_SSL_head.pt")


def last_event(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_wrong_file_is_refused_against_the_packaged_checksum_and_nothing_is_kept(weights, isolated_cache, capsys):
    assert main(["models", "import", "VoCo_B_SSL_head", str(weights)]) == 3
    error = last_event(capsys)
    assert error["event"] == "error" and error["file"] == str(weights)
    assert "is not the catalogue's 06664b629e73a25aacfaf9e0dd3f2df36f93a9f60f0bf8cf4d8b5cc95cd01298" in error["message"]
    assert "\n" not in error["message"]
    models = isolated_cache / "models"
    assert not models.exists() or list(models.iterdir()) == []


def test_the_published_file_is_placed_where_fetch_puts_it(weights, tmp_path, monkeypatch, capsys):
    site = json.loads((RESOURCES / "models.json").read_text())
    entry = next(m for m in site["models"] if m["name"] == "VoCo_B_SSL_head")
    entry["checksum"] = {"algorithm": "sha256", "value": hashlib.sha256(weights.read_bytes()).hexdigest()}
    (tmp_path / "site.json").write_text(json.dumps(site))
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(tmp_path / "site.json"))  # a site's own catalogue

    assert main(["models", "import", "VoCo_B_SSL_head", str(weights)]) == 0
    result = last_event(capsys)
    cached = catalogue.get_entry("VoCo_B_SSL_head").cached_path
    assert result["path"] == str(cached) and result["verified"] is True
    assert cached.read_bytes() == weights.read_bytes()
    assert catalogue.resolve_model("VoCo_B_SSL_head").weights == cached  # segment/finetune --init find it by name
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary left beside it


def test_import_usage_errors(weights, tmp_path, capsys):
    assert main(["models", "import", "VoCo_B_SSL_head"]) == 2
    assert main(["models", "fetch", "VoCo_B_SSL_head", str(weights)]) == 2
    assert main(["models", "import", "NoSuchModel", str(weights)]) == 2
    assert main(["models", "import", "VoCo_B_SSL_head", str(tmp_path / "missing.pt")]) == 3
    assert "no such weights file" in last_event(capsys)["message"]
