"""One process per run folder: a second ``finetune``/``pretrain`` on a folder in use is refused, not interleaved.

Before the lock, a second run on the same ``--out`` (started at the same moment, or with ``--resume`` while the
first still ran) passed the run-folder checks, wrote its checkpoints between the first's, and its start-up
clean-up of a killed run's temporary files deleted the first's checkpoint in the middle of its write.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from backend_cli import TINY_FINETUNE, backend, start

from voco_backend.errors import UsageError
from voco_backend.run_lock import run_folder_lock


def test_a_held_folder_is_refused_and_free_again_once_released(tmp_path):
    with run_folder_lock(tmp_path / "run"):
        with pytest.raises(UsageError, match="in use by another run") as refused, run_folder_lock(tmp_path / "run"):
            pass
        assert str(tmp_path / "run") in str(refused.value.file)
    with run_folder_lock(tmp_path / "run"):  # released at the end of the block
        pass


def test_the_lock_of_a_killed_process_needs_no_clean_up(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from pathlib import Path
                from voco_backend.run_lock import run_folder_lock
                with run_folder_lock(Path({str(tmp_path / "run")!r})):
                    print("held", flush=True)
                    time.sleep(600)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError), run_folder_lock(tmp_path / "run"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with run_folder_lock(tmp_path / "run"):
        pass
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no lock file left behind


def test_a_second_finetune_on_a_running_folder_exits_2_and_the_first_finishes_intact(shared_data, tmp_path):
    sts = shared_data / "ibsi_sts"
    args = [
        "finetune", "--images", str(sts / "STS_002_CT_image.nii.gz"), "--labels", str(sts / "STS_002_CT_mask.nii.gz"),
        "--classes", "tumour", "--steps", "4", "--val-every", "4", "--checkpoint-every", "1", *TINY_FINETUNE,
        "--out", str(tmp_path / "model"),
    ]  # fmt: skip
    first = start(*args)
    for line in first.stdout:  # the first step is done: its checkpoint is on disk, the run goes on
        if '"event": "progress"' in line and '"stage": "finetune"' in line:
            break
    second = backend(*args, "--resume")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2, second.stderr
    [error] = [e for e in second.events if e["event"] == "error"]
    assert error["file"] == str(tmp_path / "model") and "in use by another run" in error["message"]
    assert second.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'model'}: {error['message']}"
    state = torch.load(tmp_path / "model" / "checkpoint_last.pt", weights_only=True)
    assert state["progress"]["step"] == 4
    assert not [p for p in (tmp_path / "model").iterdir() if ".partial" in p.name]
