"""The backend on another machine over SSH, for real: a loopback Debian sshd (conftest), the system's ssh/scp,
this checkout's ``python -m voco_backend`` on the "host", real CT."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from backend_cli import TINY_FINETUNE as TINY
from backend_cli import backend
from VoCoSlicerLib.remoteBackend import RemoteBackendRunner

from voco_backend.networks import SwinEncoder
from voco_backend.weights import export_encoder


def finetuneArgs(sts: Path, encoder: Path, steps: int) -> list[str]:
    return [
        "finetune",
        "--images",
        str(sts / "STS_002_CT_image.nii.gz"),
        "--labels",
        str(sts / "STS_002_CT_mask.nii.gz"),
        "--classes",
        "tumour=1",
        "--init",
        str(encoder),
        "--steps",
        str(steps),
        "--val-every",
        str(steps),
        "--checkpoint-every",
        "1",
        *TINY,
    ]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_encoder(SwinEncoder("tiny"), tmp_path_factory.mktemp("encoder") / "encoder.pt")


@pytest.fixture(scope="module")
def tinyModel(tmp_path_factory, shared_data, encoder) -> Path:
    """A 2-step tiny model folder trained here (locally)."""
    folder = tmp_path_factory.mktemp("model") / "model"
    run = backend(*finetuneArgs(shared_data / "ibsi_sts", encoder, 2), "--out", str(folder))
    assert run.returncode == 0, run.stderr[-3000:]
    return folder


def runDirs(sshd) -> list[Path]:
    return sorted(p for p in sshd.runsDir.iterdir() if p.is_dir())


def test_unknown_host_key_is_refused_in_one_line(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = sshd.remoteHost(sshOptions=(f"UserKnownHostsFile={empty}", "IdentitiesOnly=yes"))
    outcome = RemoteBackendRunner(host).start(["models", "list", "--json"]).wait()
    assert outcome.exitCode == 255
    assert "host key verification failed" in outcome.message and "\n" not in outcome.message
    assert f"ssh {host.host}" in outcome.message


def test_missing_remote_python_is_named(sshd):
    outcome = RemoteBackendRunner(sshd.remoteHost(python="/nonexistent/python3")).start(["models", "list"]).wait()
    assert outcome.exitCode == 127
    assert "'/nonexistent/python3' was not found" in outcome.message
    assert runDirs(sshd) == []  # nothing of the failed run is left on the host


@pytest.mark.slow
def test_remote_segment_on_real_ct_matches_a_local_run(sshd, tinyModel, shared_data, tmp_path):
    ct = shared_data / "ibsi_sts" / "STS_003_CT_image.nii.gz"
    local = tmp_path / "local.nrrd"
    assert backend("segment", "--model", str(tinyModel), "--input", str(ct), "--output", str(local)).returncode == 0
    remoteOut = tmp_path / "out" / "remote.seg.nrrd"
    progress, logs = [], []
    outcome = (
        RemoteBackendRunner(sshd.remoteHost())
        .start(
            ["segment", "--model", str(tinyModel), "--input", str(ct), "--output", str(remoteOut)],
            onProgress=progress.append,
            onLog=logs.append,
        )
        .wait()
    )
    assert outcome.ok, outcome.message
    assert outcome.result["output"] == str(remoteOut)  # the host's path rewritten to the local one
    statistics = remoteOut.parent / "remote.statistics.csv"  # written beside the output there, copied back
    assert outcome.result["statistics_csv"] == str(statistics) and statistics.read_text().startswith("name,value")
    assert progress and progress[-1]["stage"] == "segment" and progress[-1]["step"] == progress[-1]["total"]
    got, want, image = (sitk.ReadImage(str(p)) for p in (remoteOut, local, ct))
    assert got.GetSize() == image.GetSize() and got.GetOrigin() == image.GetOrigin()
    assert np.array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want))
    assert sorted(p.name for p in remoteOut.parent.iterdir()) == ["remote.seg.nrrd", "remote.statistics.csv"]
    assert runDirs(sshd) == []  # the run folder on the host is removed


@pytest.mark.slow
def test_a_remote_batch_with_one_broken_volume_brings_the_others_back(sshd, tinyModel, shared_data, tmp_path):
    ct = shared_data / "ibsi_sts" / "STS_003_CT_image.nii.gz"
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["segment", "--model", str(tinyModel), "--input", str(ct), str(broken), "--output-dir", str(out)]
    outcome = RemoteBackendRunner(sshd.remoteHost()).start(argv).wait()
    assert outcome.exitCode == 3 and "1 of 2 volumes failed, the others are done" in outcome.message
    assert outcome.result["outputs"] == [str(out / "STS_003_CT_image_seg.nii.gz")]  # the host's path mapped here
    got, image = sitk.ReadImage(str(out / "STS_003_CT_image_seg.nii.gz")), sitk.ReadImage(str(ct))
    assert got.GetSize() == image.GetSize()
    assert runDirs(sshd) == []


@pytest.mark.slow
def test_remote_finetune_cancel_leaves_a_resumable_checkpoint_on_the_host(sshd, shared_data, encoder, tmp_path):
    out = tmp_path / "remote_model"
    argv = [*finetuneArgs(shared_data / "ibsi_sts", encoder, 3), "--out", str(out)]
    runner = RemoteBackendRunner(sshd.remoteHost(), cancelGraceSeconds=600)  # a step may take long on a busy CPU
    steps: list[int] = []
    run = runner.start(argv, onProgress=lambda e: steps.append(e["step"]) if e.get("stage") == "finetune" else None)
    while run.poll() and not steps:
        time.sleep(0.1)
    run.cancel()
    outcome = run.wait()
    assert outcome.exitCode == 130, outcome.message
    assert "resumable checkpoint stays on" in outcome.message and "\n" not in outcome.message
    assert not out.exists()
    (folder,) = runDirs(sshd)
    checkpoint = torch.load(folder / "out" / f"0_{out.name}" / "checkpoint_last.pt", weights_only=True)
    assert 1 <= checkpoint["progress"]["step"] < 3
    resumed = runner.start([*argv, "--resume"]).wait()
    assert resumed.ok, resumed.message
    assert (out / "model.pt").exists() and (out / "model.json").exists()
    assert resumed.result["model"] == str(out)
    assert runDirs(sshd) == []


@pytest.mark.slow
def test_dropped_connection_is_one_line_and_the_run_goes_on_on_the_host(sshd, shared_data, encoder, tmp_path):
    out = tmp_path / "dropped_model"
    argv = [*finetuneArgs(shared_data / "ibsi_sts", encoder, 2), "--out", str(out)]
    run = RemoteBackendRunner(sshd.remoteHost()).start(argv)
    while run.poll() and run.remotePid is None:
        time.sleep(0.1)
    sshd.dropConnections()
    outcome = run.wait()
    assert outcome.exitCode == 255
    assert "connection to" in outcome.message and "was lost" in outcome.message and "\n" not in outcome.message
    (folder,) = runDirs(sshd)
    assert str(folder) in outcome.message
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the host's run outlives the connection
        try:
            os.kill(run.remotePid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    assert (folder / "out" / f"0_{out.name}" / "checkpoint_last.pt").exists()
    assert (folder / "out" / f"0_{out.name}" / "model.pt").exists()


def test_logic_runs_through_the_remote_host_and_back(sshd):
    from VoCoSlicerLib.logic import VoCoSlicerLogic
    from VoCoSlicerLib.remoteBackend import RemoteBackendRunner as Runner

    logic = VoCoSlicerLogic()
    local = logic.runner
    logic.setRemoteHost(sshd.remoteHost())
    assert isinstance(logic.runner, Runner) and logic.catalogue.runner is local  # registrations stay local
    names = [row["name"] for row in logic.runner.run(["models", "list", "--json"]).result["models"]]
    assert "VoComni_B" in names
    logic.setRemoteHost(None)
    assert type(logic.runner) is type(local)
