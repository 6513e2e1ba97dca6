"""Verified, resumable downloads from a loopback HTTP server, and ``models fetch`` end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import torch
from backend_cli import events
from loopback import Quiet, serving

from voco_backend.cancel import CancelToken
from voco_backend.download import download, part_path
from voco_backend.errors import Cancelled, DataError, UsageError
from voco_backend.networks import SwinEncoder, build_swinunetr
from voco_backend.protocol import Reporter
from voco_backend.weights import ENCODER_KEY_COUNT, load_pretrained

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGED_CATALOGUE = REPO_ROOT / "voco_backend" / "resources" / "models.json"


@dataclasses.dataclass
class ServerState:
    """What the loopback server serves and what it saw."""

    files: dict[str, bytes]
    ranges: bool = True
    cut_after: int | None = None
    range_headers: list[str | None] = dataclasses.field(default_factory=list)


def make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(Quiet, BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested = self.headers.get("Range")
            state.range_headers.append(requested)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if requested and state.ranges:
                start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if state.cut_after is not None:
                # Drop the connection part-way, once, as a flaky network would.
                self.wfile.write(body[start : start + state.cut_after])
                state.cut_after = None
                self.close_connection = True
                return
            self.wfile.write(body[start:])

    return Handler


@pytest.fixture(scope="module")
def payload() -> bytes:
    """A real checkpoint in the official 145-key layout, as bytes."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(SwinEncoder("tiny").state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture
def server(payload: bytes) -> Iterator[tuple[str, ServerState]]:
    state = ServerState(files={"/tiny.pt": payload, "/VoComni_B.pt": payload})
    with serving(make_handler(state)) as base:
        yield base, state


def recording_reporter() -> tuple[Reporter, io.StringIO]:
    stdout = io.StringIO()
    return Reporter(stdout=stdout, stderr=io.StringIO()), stdout


class CancelAfter(CancelToken):
    """A token that asks to cancel after ``checks`` calls of :meth:`check` (a user pressing Cancel)."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.remaining = checks

    def check(self) -> None:
        self.remaining -= 1
        if self.remaining < 0:
            self.cancel()
        super().check()


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_right_checksum_is_accepted_and_loads(server, payload, tmp_path, algorithm):
    base, _ = server
    reporter, out = recording_reporter()
    dest = tmp_path / "models" / "tiny.pt"
    checksum = (algorithm, hashlib.new(algorithm, payload).hexdigest())

    assert download(f"{base}/tiny.pt", dest, checksum, reporter, CancelToken()) == dest

    assert dest.read_bytes() == payload
    assert not part_path(dest).exists()
    progress = [e for e in events(out.getvalue()) if e["event"] == "progress"]
    assert progress and progress[-1]["stage"] == "download"
    assert progress[-1]["step"] == progress[-1]["total"] == len(payload)
    assert len(load_pretrained(SwinEncoder("tiny"), dest).loaded) == ENCODER_KEY_COUNT


def test_wrong_checksum_is_rejected_and_nothing_is_left(server, tmp_path):
    base, _ = server
    reporter, _ = recording_reporter()
    dest = tmp_path / "tiny.pt"
    with pytest.raises(DataError, match="md5 checksum mismatch") as info:
        download(f"{base}/tiny.pt", dest, ("md5", "0" * 32), reporter, CancelToken())
    assert info.value.file == f"{base}/tiny.pt"
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_from_the_part_file(server, payload, tmp_path):
    base, state = server
    reporter, out = recording_reporter()
    dest = tmp_path / "tiny.pt"
    checksum = ("sha256", hashlib.sha256(payload).hexdigest())
    state.cut_after = len(payload) // 3

    with pytest.raises(DataError, match="run the command again to resume"):
        download(f"{base}/tiny.pt", dest, checksum, reporter, CancelToken())
    assert part_path(dest).stat().st_size == len(payload) // 3
    assert not dest.exists()

    download(f"{base}/tiny.pt", dest, checksum, reporter, CancelToken())
    assert state.range_headers == [None, f"bytes={len(payload) // 3}-"]
    assert dest.read_bytes() == payload and not part_path(dest).exists()
    assert any("resuming" in e.get("message", "") for e in events(out.getvalue()))


def test_cancel_keeps_the_part_file_for_a_resume(server, payload, tmp_path):
    base, state = server
    reporter, _ = recording_reporter()
    dest = tmp_path / "tiny.pt"
    checksum = ("md5", hashlib.md5(payload).hexdigest())

    with pytest.raises(Cancelled):
        download(f"{base}/tiny.pt", dest, checksum, reporter, CancelAfter(checks=3))
    kept = part_path(dest).stat().st_size
    assert 0 < kept < len(payload)

    download(f"{base}/tiny.pt", dest, checksum, reporter, CancelToken())
    assert state.range_headers[-1] == f"bytes={kept}-"
    assert dest.read_bytes() == payload


def test_server_without_range_support_restarts(server, payload, tmp_path):
    base, state = server
    state.ranges = False
    dest = tmp_path / "tiny.pt"
    part_path(dest).write_bytes(b"stale bytes of another file")
    reporter, _ = recording_reporter()

    download(f"{base}/tiny.pt", dest, ("md5", hashlib.md5(payload).hexdigest()), reporter, CancelToken())
    assert dest.read_bytes() == payload


def test_complete_part_file_answered_416_restarts(server, payload, tmp_path):
    base, state = server
    dest = tmp_path / "tiny.pt"
    part_path(dest).write_bytes(payload + b"extra")
    reporter, _ = recording_reporter()

    download(f"{base}/tiny.pt", dest, ("md5", hashlib.md5(payload).hexdigest()), reporter, CancelToken())
    assert state.range_headers == [f"bytes={len(payload) + 5}-", None]
    assert dest.read_bytes() == payload


def test_missing_checksum_warns(server, payload, tmp_path):
    base, _ = server
    reporter, out = recording_reporter()
    dest = download(f"{base}/tiny.pt", tmp_path / "tiny.pt", None, reporter, CancelToken())
    assert dest.read_bytes() == payload
    warnings = [e for e in events(out.getvalue()) if e["event"] == "log" and e["level"] == "warning"]
    assert len(warnings) == 1 and "could not be verified" in warnings[0]["message"]


def test_http_errors_and_bad_urls(server, tmp_path):
    base, _ = server
    reporter, _ = recording_reporter()
    with pytest.raises(DataError, match="HTTP 404"):
        download(f"{base}/absent.pt", tmp_path / "absent.pt", None, reporter, CancelToken())
    with pytest.raises(UsageError, match="only http"):
        download(f"file://{tmp_path}/x.pt", tmp_path / "x.pt", None, reporter, CancelToken())
    with pytest.raises(UsageError, match="algorithm"):
        download(f"{base}/tiny.pt", tmp_path / "tiny.pt", ("sha1", "00"), reporter, CancelToken())
    assert list(tmp_path.iterdir()) == []


def run_backend(*args: str, env: dict[str, str]) -> tuple[int, list[dict]]:
    done = subprocess.run(
        [sys.executable, "-m", "voco_backend", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, events(done.stdout)


def test_models_fetch_end_to_end(server, payload, tmp_path):
    base, _ = server
    catalogue = json.loads(PACKAGED_CATALOGUE.read_text())
    entry = dict(
        catalogue["models"][0],
        name="Tiny_SSL",
        file="tiny.pt",
        url=f"{base}/tiny.pt",
        checksum={"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
    )
    catalogue["models"] = [entry]
    (tmp_path / "catalogue.json").write_text(json.dumps(catalogue))
    env = {"VOCO_CATALOGUE": str(tmp_path / "catalogue.json"), "VOCO_CACHE_DIR": str(tmp_path / "cache")}

    code, out = run_backend("models", "fetch", "Tiny_SSL", env=env)

    assert code == 0, out
    result = out[-1]
    cached = tmp_path / "cache" / "models" / "tiny.pt"
    assert result == {"event": "result", "name": "Tiny_SSL", "path": str(cached), "downloaded": True, "verified": True}
    assert cached.read_bytes() == payload
    assert any(e["event"] == "progress" and e["stage"] == "download" for e in out)

    code, out = run_backend("models", "list", "--json", env=env)
    assert code == 0 and len(out) == 1
    assert out[0]["models"][0]["available"] is True and out[0]["models"][0]["path"] == str(cached)


def _vocomni_style_checkpoint() -> bytes:
    """A checkpoint written as the official VoComni trainer writes it: ``best_acc`` is a numpy float64."""
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in build_swinunetr("tiny", 3).state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"epoch": 12, "best_acc": np.mean([0.71, 0.8]), "state_dict": state}, buffer)
    return buffer.getvalue()


def test_vocomni_style_checkpoint_through_a_catalogue_entry_loads(server, tmp_path):
    base, state = server
    vocomni = _vocomni_style_checkpoint()
    state.files["/omni_tiny.pt"] = vocomni
    catalogue = json.loads(PACKAGED_CATALOGUE.read_text())
    packaged = next(m for m in catalogue["models"] if m["name"] == "VoComni_B")
    entry = dict(
        packaged,
        name="Omni_tiny",
        file="omni_tiny.pt",
        url=f"{base}/omni_tiny.pt",
        bytes=None,
        checksum={"algorithm": "sha256", "value": hashlib.sha256(vocomni).hexdigest()},
        feature_size=12,
        out_channels=3,
        classes=packaged["classes"][:2],
    )
    catalogue["models"] = [entry]
    (tmp_path / "catalogue.json").write_text(json.dumps(catalogue))
    env = {"VOCO_CATALOGUE": str(tmp_path / "catalogue.json"), "VOCO_CACHE_DIR": str(tmp_path / "cache")}

    code, out = run_backend("models", "fetch", "Omni_tiny", env=env)

    assert code == 0, out
    assert out[-1]["verified"] is True
    cached = tmp_path / "cache" / "models" / "omni_tiny.pt"
    report = load_pretrained(build_swinunetr("tiny", 3), cached, require=("swinViT", "out"))
    assert len(report.loaded) == 167 and not report.missing
    code, out = run_backend("models", "list", "--json", env=env)
    assert code == 0
    assert [c["name"] for c in out[0]["models"][0]["classes"]] == ["spleen", "right kidney"]


def test_packaged_vocomni_from_a_mirror_is_verified_by_sha256(server, payload, tmp_path):
    """The mirror serves another file under VoComni_B's name: the authors' sha256 refuses it."""
    base, _ = server
    env = {"VOCO_MODEL_BASE_URL": base + "/", "VOCO_CACHE_DIR": str(tmp_path)}

    code, out = run_backend("models", "fetch", "VoComni_B", env=env)

    assert code == 3, out
    assert "sha256 checksum mismatch for VoComni_B.pt" in out[-1]["message"]
    assert not (tmp_path / "models" / "VoComni_B.pt").exists()
