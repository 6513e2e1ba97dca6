"""Helpers of the hostile-input and fault-injection suites: the CLI in this process, and the one-line promise."""

from __future__ import annotations

import dataclasses
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

from voco_backend.cli import main


@dataclasses.dataclass
class Outcome:
    """A finished command: exit code, protocol events and stderr."""

    code: int
    events: list[dict]
    stderr: str

    @property
    def error(self) -> dict:
        """The command's (single, last) error event."""
        errors = [e for e in self.events if e["event"] == "error"]
        assert len(errors) == 1, self.events
        return errors[0]


def parse_events(text: str) -> list[dict]:
    """The JSON-object lines of a stdout."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def cli(*args: str, env: dict[str, str] | None = None) -> Outcome:
    """Run ``voco-backend ARGS`` in this process (fast: no interpreter start, torch already imported)."""
    out, err = StringIO(), StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse usage errors
                code = int(exc.code)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Outcome(code, parse_events(out.getvalue()), err.getvalue())


def assert_one_line_error(outcome: Outcome, code: int, *fragments: str) -> dict:
    """The promise for a user error: exit ``code``, one error event of one line, no traceback."""
    assert outcome.code == code, (outcome.code, outcome.events[-3:], outcome.stderr[-2000:])
    error = outcome.error
    assert error["exit_code"] == code
    assert "\n" not in error["message"] and error["message"], error
    assert "Traceback" not in outcome.stderr, outcome.stderr[-2000:]
    assert not error["message"].startswith("internal error"), error
    text = f"{error.get('file')}: {error['message']}"
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return error
