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
