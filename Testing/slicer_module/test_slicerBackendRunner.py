"""The backend runner against real child processes speaking the protocol (``fake_backend.py``)."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from VoCoSlicerLib.backendRunner import BackendError, BackendRunner, describeProgress, exitMessage, parseEventLine


def waitUntil(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"event": "progress", "step": 1}', {"event": "progress", "step": 1}),
        ("Downloading weights: 10%", None),
        ('["event", "progress"]', None),
        ('{"step": 1}', None),
        ("", None),
    ],
)
def test_only_json_event_objects_are_events(line: str, expected: dict | None) -> None:
    assert parseEventLine(line) == expected


@pytest.mark.parametrize(
    ("code", "event", "expected"),
    [
        (0, None, ""),
        (
            2,
            {"message": "field 'steps' must be >= 1", "file": None},
            "bad usage or configuration: field 'steps' must be >= 1",
        ),
        (3, {"message": "cannot read", "file": "/d/ct.nrrd"}, "bad input data: /d/ct.nrrd: cannot read"),
        (4, {"message": "out of memory: use a smaller --model-size"}, "out of memory: use a smaller --model-size"),
        (130, {"message": "cancelled"}, "cancelled"),
        (1, None, "internal error in the backend (see the log)"),
        (-9, None, "the backend was stopped by signal 9 (see the log)"),
        (7, None, "the backend failed with exit code 7 (see the log)"),
    ],
)
def test_exit_codes_map_to_one_line_messages(code: int, event: dict | None, expected: str) -> None:
    assert exitMessage(code, event) == expected


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {"stage": "finetune", "step": 40, "total": 400, "loss": 0.4123, "eta_s": 310},
            "finetune 40/400 · loss 0.412 · 5 min left",
        ),
        ({"stage": "segment", "step": 3, "total": 8, "eta_s": 12.4}, "segment 3/8 · 12 s left"),
        ({"stage": "download", "step": 1, "total": 9, "eta_s": None}, "download 1/9"),
    ],
)
def test_progress_reads_as_one_status_line(event: dict, expected: str) -> None:
    assert describeProgress(event) == expected


def test_progress_log_and_result_reach_the_callbacks_in_order(fakeBackend) -> None:
    progress: list[dict[str, Any]] = []
    logs: list[str] = []
    finished = []
    run = BackendRunner(fakeBackend("ok")).start(
        ["finetune", "--steps", "3"], progress.append, logs.append, finished.append
    )
    outcome = run.wait()
    assert outcome.ok and finished == [outcome]
    assert [(e["stage"], e["step"], e["total"]) for e in progress] == [("finetune", s, 3) for s in (1, 2, 3)]
    assert progress[-1]["loss"] == pytest.approx(1 / 3)
    assert "[info] halfway there" in logs and "plain progress on stderr" in logs
    assert not any("stray print" in line for line in logs)
    assert outcome.result == {"argv": ["finetune", "--steps", "3"]}


def test_bad_data_becomes_one_line_naming_the_file(fakeBackend) -> None:
    with pytest.raises(BackendError) as error:
        BackendRunner(fakeBackend("baddata")).run(["segment"])
    assert error.value.outcome.exitCode == 3
    assert str(error.value) == "bad input data: /data/ct.nrrd: cannot read the image (truncated file)"


def test_a_crash_without_error_event_reports_its_last_stderr_line(fakeBackend) -> None:
    outcome = BackendRunner(fakeBackend("crash")).start(["segment"]).wait()
    assert (outcome.exitCode, outcome.message) == (
        1,
        "internal error in the backend: ZeroDivisionError: division by zero",
    )


def test_a_missing_python_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises(BackendError, match=r"^cannot start the backend '.*nopython'.*check the Python path"):
        BackendRunner([str(tmp_path / "nopython"), "-m", "voco_backend"]).start(["models", "list"])


def test_the_launcher_gets_an_argv_list_in_its_own_session(fakeBackend) -> None:
    calls = []

    def launcher(args, **kwargs):
        calls.append((args, kwargs))
        return subprocess.Popen(args, **kwargs)

    BackendRunner(fakeBackend("ok"), launcher=launcher).run(["pretrain", "--data", "a b.nrrd", "--out", "r"])
    ((args, kwargs),) = calls
    assert args[-5:] == ["pretrain", "--data", "a b.nrrd", "--out", "r"]
    assert kwargs["start_new_session"] is True and not kwargs.get("shell")


@pytest.mark.parametrize("scenario", ["hang", "stubborn"])
def test_cancel_ends_the_whole_process_tree(fakeBackend, pidAlive, scenario: str) -> None:
    progress: list[dict[str, Any]] = []
    run = BackendRunner(fakeBackend(scenario), cancelGraceSeconds=1.0).start(["finetune"], progress.append)
    assert waitUntil(lambda: run.poll() and progress), "the backend reported no progress"
    pids = [run.pid, progress[0]["child_pid"]]
    assert all(pidAlive(pid) for pid in pids)
    run.cancel()
    outcome = run.wait()
    assert (outcome.exitCode, outcome.message) == (130 if scenario == "hang" else -9, "cancelled")
    assert waitUntil(lambda: not any(pidAlive(pid) for pid in pids)), "a process of the tree survived"
