"""Real pretraining runs on real CT (the registry sample chest CT) with the tiny model, through the CLI."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
import torch
from backend_cli import TINY_PRETRAIN, events
from monai.networks.nets import SwinUNETR

from voco_backend.cli import main
from voco_backend.pretrain.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

SMALL = TINY_PRETRAIN


def pretrain(*args: str) -> tuple[int, list[dict]]:
    """Run ``pretrain`` in this process; returns the exit code and the JSON events."""
    out = StringIO()
    with redirect_stdout(out):
        code = main(["pretrain", *SMALL, *args])
    return code, events(out.getvalue())


def step_losses(evts: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in evts if e["event"] == "progress" and e["stage"] == "pretrain"}


@pytest.fixture(scope="module")
def ct(sample_ct) -> str:
    return str(sample_ct["CTChest4.nrrd"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, ct, cache) -> tuple[Path, list[dict]]:
    """An uninterrupted 3-step run."""
    run_dir = tmp_path_factory.mktemp("full") / "run"
    code, evts = pretrain(
        "--data", ct, "--out", str(run_dir), "--steps", "3", "--cache-dir", cache, "--checkpoint-every", "2"
    )
    assert code == 0, evts[-1]
    return run_dir, evts


def test_three_steps_give_finite_loss_and_every_output(full_run):
    run_dir, evts = full_run
    losses = step_losses(evts)
    assert sorted(losses) == [1, 2, 3]
    assert all(math.isfinite(v) and v > 0 for v in losses.values())
    result = evts[-1]
    assert result["event"] == "result" and result["steps"] == 3
    for name in ("config.yaml", "checkpoint_last.pt", "encoder.pt", "log.jsonl", "loss.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert any((run_dir / "tensorboard").iterdir())
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 3
    assert not list(run_dir.glob("*.partial*"))


def test_exported_encoder_loads_strictly_into_monai_swinunetr_v2(full_run):
    state = torch.load(full_run[0] / "encoder.pt", map_location="cpu", weights_only=True)
    assert len(state) == 145
    assert {k.split(".")[0] for k in state} == {"swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10"}
    net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_v2=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected
    assert all(k.split(".")[0] in ("decoder1", "decoder2", "decoder3", "decoder4", "decoder5", "out") for k in missing)
    assert torch.equal(
        net.state_dict()["swinViT.layers1c.0.layer.conv1.conv.weight"],
        state["swinViT.layers1c.0.layer.conv1.conv.weight"],
    )


def test_resume_continues_to_the_same_next_step_loss(full_run, tmp_path, ct, cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(full_run[0] / "checkpoint_step2.pt", run_dir / "checkpoint_last.pt")
    code, evts = pretrain("--data", ct, "--out", str(run_dir), "--steps", "3", "--cache-dir", cache, "--resume")
    assert code == 0
    resumed = step_losses(evts)
    assert list(resumed) == [3]
    assert resumed[3] == pytest.approx(step_losses(full_run[1])[3], rel=1e-5, abs=1e-6)
    assert [h["step"] for h in load_checkpoint(run_dir / "checkpoint_last.pt")["history"]] == [1, 2, 3]


def test_existing_run_is_not_overwritten_without_resume(full_run, ct, cache):
    run_dir = full_run[0]
    before = (run_dir / "checkpoint_last.pt").read_bytes()
    code, evts = pretrain("--data", ct, "--out", str(run_dir), "--steps", "3", "--cache-dir", cache)
    assert code == 2
    assert "--resume" in evts[-1]["message"]
    assert (run_dir / "checkpoint_last.pt").read_bytes() == before


def _backend(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs
    )


def test_sigterm_mid_run_exits_130_with_a_resumable_checkpoint(tmp_path, ct, cache):
    run_dir = tmp_path / "run"
    proc = _backend(
        "-m",
        "voco_backend",
        "pretrain",
        *SMALL,
        "--data",
        ct,
        "--out",
        str(run_dir),
        "--steps",
        "50",
        "--cache-dir",
        cache,
    )
    for line in proc.stdout:
        if '"stage": "pretrain"' in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    last = events(rest)[-1]
    assert last["event"] == "error" and last["exit_code"] == 130
    state = load_checkpoint(run_dir / "checkpoint_last.pt")
    assert 1 <= state["step"] < 50
    assert (run_dir / "encoder.pt").exists()
    assert not [p for p in run_dir.rglob("*") if ".partial" in p.name]


def test_two_process_gloo_ddp_run_completes(tmp_path, ct, cache):
    run_dir = tmp_path / "run"
    proc = _backend(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "voco_backend",
        "pretrain",
        *SMALL,
        "--volumes-per-step",
        "1",
        "--threads",
        "1",
        "--data",
        ct,
        "--out",
        str(run_dir),
        "--steps",
        "2",
        "--cache-dir",
        cache,
        "--device",
        "cpu",
    )
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    evts = events(out)
    assert [e for e in evts if e["event"] == "result"] == [evts[-1]]  # rank 0 alone reports
    assert sorted(step_losses(evts)) == [1, 2]
    assert load_checkpoint(run_dir / "checkpoint_last.pt")["step"] == 2
    assert len(torch.load(run_dir / "encoder.pt", weights_only=True)) == 145


def test_init_from_an_official_ssl_file_says_what_starts_fresh(full_run, tmp_path, ct, cache):
    """The released SSL files are a bare flat 145-tensor encoder: heads and teacher start fresh, no resume claim."""
    official = tmp_path / "VoCo_tiny_SSL_head.pt"
    torch.save(torch.load(full_run[0] / "encoder.pt", map_location="cpu", weights_only=True), official)
    run_dir = tmp_path / "run"
    code, evts = pretrain(
        "--data", ct, "--out", str(run_dir), "--steps", "1", "--cache-dir", cache, "--init", str(official)
    )
    assert code == 0, evts[-1]
    logs = [e["message"] for e in evts if e["event"] == "log"]
    assert any(m.startswith("loaded 145/145 tensors (145 encoder)") for m in logs)
    fresh = next(m for m in logs if m.startswith(f"--init {official}"))
    assert "projection heads" in fresh and "start fresh" in fresh and "not a resumption" in fresh
    assert not any(m.startswith("resumed") for m in logs)
    assert evts[-1]["merge_order"] == "monai1.3"
    assert "merge_order: monai1.3" in (run_dir / "config.yaml").read_text()


def test_a_run_made_before_the_merge_order_record_resumes_in_its_own_order(full_run, tmp_path, ct, cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state = load_checkpoint(full_run[0] / "checkpoint_step2.pt")
    state["config"].pop("merge_order")
    torch.save(state, run_dir / "checkpoint_last.pt")
    code, evts = pretrain("--data", ct, "--out", str(run_dir), "--steps", "3", "--cache-dir", cache, "--resume")
    assert code == 0, evts[-1]
    warnings = [e["message"] for e in evts if e["event"] == "log" and e["level"] == "warning"]
    assert sum("records no merge order" in m and "MONAI 1.5" in m for m in warnings) == 1
    assert evts[-1]["merge_order"] == "monai1.5"


def test_a_step_too_large_for_the_memory_exits_4_with_advice_before_the_first_step(tmp_path, ct, cache, monkeypatch):
    monkeypatch.setenv("VOCO_MEMORY_LIMIT_GB", "0.5")
    run_dir = tmp_path / "run"
    code, evts = pretrain("--data", ct, "--out", str(run_dir), "--steps", "1", "--cache-dir", cache)
    assert code == 4
    error = evts[-1]
    assert error["event"] == "error" and error["exit_code"] == 4
    assert "\n" not in error["message"]
    assert "$VOCO_MEMORY_LIMIT_GB is 0.5 GB" in error["message"]
    for advice in ("--volumes-per-step", "--gradient-checkpointing"):
        assert advice in error["message"]
    assert not step_losses(evts)
    assert not (run_dir / "checkpoint_last.pt").exists()


def test_a_loss_that_is_no_longer_finite_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, ct, cache):
    # A learning rate of 1e30 breaks the weights with the first update: the real way a run's loss becomes nan.
    run_dir = tmp_path / "run"
    code, evts = pretrain(
        "--data", ct, "--out", str(run_dir), "--steps", "6", "--cache-dir", cache, "--checkpoint-every", "1",
        "--lr", "1e30", "--warmup-steps", "0",
    )  # fmt: skip
    assert code == 3
    error = evts[-1]
    assert error["event"] == "error" and error["exit_code"] == 3
    assert "\n" not in error["message"]
    assert "the loss became" in error["message"] and "lower --lr" in error["message"]
    saved = load_checkpoint(run_dir / "checkpoint_last.pt")
    broken = int(error["message"].split("at step ")[1].split(";")[0])
    assert saved["step"] == broken - 1 >= 1  # the last step whose loss was finite, not the broken one
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())
    encoder = torch.load(run_dir / "encoder.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in encoder.values())


def test_two_preprocess_only_processes_fill_one_cache_safely(tmp_path, ct):
    """Two processes at once on the same volumes: both succeed, each entry is whole and written once in place."""
    cache_dir = tmp_path / "cache"
    volumes = [tmp_path / f"ct{k}.nrrd" for k in range(2)]
    for volume in volumes:
        shutil.copy(ct, volume)
    args = [
        "-m",
        "voco_backend",
        "pretrain",
        *SMALL,
        "--preprocess-only",
        "--out",
        str(tmp_path / "unused"),
        "--cache-dir",
        str(cache_dir),
        "--data",
        *map(str, volumes),
    ]
    procs = [_backend(*args) for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        result = events(out)[-1]
        assert result["event"] == "result" and result["preprocessed"] == 2 and result["skipped"] == 0
    assert not (tmp_path / "unused").exists()  # no run folder: nothing was trained
    entries = sorted(cache_dir.rglob("*.pt"))
    assert len(entries) == 2
    assert not [p for p in cache_dir.rglob("*") if ".partial" in p.name]
    first, second = (torch.load(p, weights_only=True)["image"] for p in entries)
    assert first.dtype == torch.float16 and torch.equal(first, second)  # same CT, same recipe: same entry


def test_resume_with_dataloader_workers_continues_to_the_same_next_step_loss(full_run, tmp_path, ct, cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(full_run[0] / "checkpoint_step2.pt", run_dir / "checkpoint_last.pt")
    code, evts = pretrain(
        "--data", ct, "--out", str(run_dir), "--steps", "3", "--cache-dir", cache, "--resume", "--workers", "2"
    )
    assert code == 0, evts[-1]
    assert step_losses(evts)[3] == pytest.approx(step_losses(full_run[1])[3], rel=1e-5, abs=1e-6)


def test_10k_recipe_exports_the_ema_teacher_encoder_beside_the_student(tmp_path, ct, cache):
    """The released CVPR encoder may be the EMA teacher (VOCO.md §6b): a 10k run exports both, official layout."""
    run_dir = tmp_path / "run"
    code, evts = pretrain(
        "--data",
        ct,
        "--out",
        str(run_dir),
        "--steps",
        "1",
        "--cache-dir",
        cache,
        "--recipe",
        "10k",
        "--volumes-per-step",
        "1",
        "--crop-resize",
        "64",
    )
    assert code == 0, evts[-1]
    student = torch.load(run_dir / "encoder.pt", weights_only=True)
    teacher = torch.load(evts[-1]["teacher_encoder"], weights_only=True)
    assert Path(evts[-1]["teacher_encoder"]) == run_dir / "encoder_teacher.pt"
    assert sorted(student) == sorted(teacher) and len(teacher) == 145
    assert any(not torch.equal(student[k], teacher[k]) for k in student)  # independently initialised, then EMA
