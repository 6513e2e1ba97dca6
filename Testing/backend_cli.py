"""Test helpers shared across Testing/: run the real ``python -m voco_backend`` and parse its protocol events.

``Testing/conftest.py`` puts this folder on ``sys.path``, so every test imports it as ``backend_cli``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

# The small networks the real-run tests train (seconds a step on 2 cores): fine-tuning and pretraining flags.
TINY_FINETUNE = [
    "--model-size", "tiny", "--roi", "64", "--spacing", "4", "4", "4", "--batch-size", "1", "--device", "cpu",
]  # fmt: skip
TINY_PRETRAIN = [
    "--model-size", "tiny", "--region-xy", "128", "--region-depth", "32", "--grid", "2", "--random-crops", "1",
    "--volumes-per-step", "2", "--seed", "7",
]  # fmt: skip


def sts_pairs(shared_data, cases: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The CT images and tumour masks of the IBSI STS ``cases`` (e.g. ``"STS_002"``) in ``../shared/data``."""
    folder = shared_data / "ibsi_sts"
    return (
        [str(folder / f"{case}_CT_image.nii.gz") for case in cases],
        [str(folder / f"{case}_CT_mask.nii.gz") for case in cases],
    )


def loop_schedule(**fields):
    """A fine-tuning loop's ``Schedule`` for in-process tests: 1 step, 1 crop, fp32, no warm-up; ``fields`` win."""
    from voco_backend.segmentation.finetune import Schedule

    defaults = {"steps": 1, "batch_size": 1, "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0}
    defaults |= {"val_every": 100, "checkpoint_every": 100, "seed": 0, "amp": False}
    return Schedule(**(defaults | fields))


@dataclasses.dataclass
class CliRun:
    """A finished backend process."""

    returncode: int
    events: list[dict]
    stderr: str

    def of(self, kind: str) -> list[dict]:
        """The events of one kind (``progress``, ``log``, ``result``, ``error``)."""
        return [e for e in self.events if e["event"] == kind]


def events(stdout: str) -> list[dict]:
    """The JSON-object lines of a stdout (other lines are ignored, as the protocol says)."""
    found = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m voco_backend ARGS`` with unbuffered output (and extra environment variables)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "voco_backend", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def backend(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> CliRun:
    """Run ``python -m voco_backend ARGS`` to the end."""
    proc = start(*args, env=env)
    stdout, stderr = proc.communicate(timeout=timeout)
    return CliRun(proc.returncode, events(stdout), stderr)
