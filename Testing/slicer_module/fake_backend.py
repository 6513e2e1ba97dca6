"""A stand-in backend process that speaks the protocol of docs/PROTOCOL.md, for the runner and logic tests.

Usage: ``python fake_backend.py SCENARIO <backend argv ...>``. Scenarios:
    ok        noise, progress, log, stderr, result (with the argv and the --color-table file's text);
              ``segment`` writes a two-class label on the input's grid and reports its classes.
    baddata   an ``error`` event naming the input file, exit 3.
    crash     a traceback on stderr and no event, exit 1.
    hang      starts a grandchild, reports its pid in a progress event, then waits; SIGTERM exits 130
              (a cooperative cancel).
    stubborn  like hang but ignores SIGTERM, so only SIGKILL stops it.
    garbage   lines that only look like events (broken JSON, invalid UTF-8, a JSON list, an unknown event, a
              megabyte-long line), then as ``ok``.
    killed    a progress event, then the process kills itself with SIGKILL (the kernel's OOM killer, a user).
    nooutput  reports a result and exits 0 but writes no output file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def writeLabel(inputPath: str, outputPath: str) -> None:
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(inputPath)
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    array[10:20, 30:60, 30:60] = 2
    array[5:8, 70:90, 70:90] = 7
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    sitk.WriteImage(label, outputPath)


def main() -> int:
    scenario, argv = sys.argv[1], sys.argv[2:]
    command = argv[0]
    print("a library's stray print, not JSON", flush=True)
    if scenario == "garbage":
        print('{"event": "progress", "step": 1,', flush=True)
        sys.stdout.buffer.write(b'{"event": "log", "message": "\xff\xfe bytes that are not UTF-8"}\n')
        sys.stdout.buffer.flush()
        print('["event", "progress"]', flush=True)
        emit("telemetry", step=5)
        print("{" + "x" * 1_000_000, flush=True)
        scenario = "ok"
    if scenario == "killed":
        emit("progress", stage=command, step=1, total=10, eta_s=None)
        os.kill(os.getpid(), signal.SIGKILL)
    if scenario == "nooutput":
        emit("result", argv=argv, classes=[{"name": "liver", "value": 2, "color": [1.0, 0.0, 0.0]}])
        return 0
    if scenario == "ok":
        for step in range(1, 4):
            emit("progress", stage=command, step=step, total=3, eta_s=None, loss=1.0 / step)
        emit("log", level="info", message="halfway there")
        print("plain progress on stderr", file=sys.stderr, flush=True)
        if command == "segment":
            writeLabel(flag(argv, "--input"), flag(argv, "--output"))
            emit(
                "result",
                argv=argv,
                classes=[
                    {"name": "liver", "value": 2, "color": [1.0, 0.0, 0.0]},
                    {"name": "right lung", "value": 7, "color": [0.0, 1.0, 0.0]},
                ],
            )
            return 0
        tables = {"colorTable": Path(flag(argv, "--color-table")).read_text()} if "--color-table" in argv else {}
        emit("result", argv=argv, **tables)
        return 0
    if scenario == "baddata":
        emit("error", message="cannot read the image (truncated file)\nsecond line", file="/data/ct.nrrd", exit_code=3)
        return 3
    if scenario == "crash":
        print("Traceback (most recent call last):\nZeroDivisionError: division by zero", file=sys.stderr)
        return 1
    if scenario == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(130))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    emit("progress", stage=command, step=1, total=1000, eta_s=None, child_pid=child.pid)
    while True:
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
