"""The CLI side of the protocol: one-line errors, exit codes, config files and flags."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import types

import pytest

from voco_backend.cancel import CancelToken
from voco_backend.cli import COMMANDS, _run, build_parser, main
from voco_backend.config import REQUIRED_TITLE, build_config, flag_name, is_required
from voco_backend.errors import Cancelled, UsageError
from voco_backend.pretrain.config import PretrainConfig
from voco_backend.protocol import Reporter


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voco_backend", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_missing_data_is_exit_3_with_one_line_naming_the_file(tmp_path):
    done = run_cli("pretrain", "--data", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "run"))
    assert done.returncode == 3
    assert done.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nope.nii.gz'}: no such file or folder"
    event = json.loads(done.stdout.strip().splitlines()[-1])
    assert event == {
        "event": "error",
        "message": "no such file or folder",
        "file": str(tmp_path / "nope.nii.gz"),
        "exit_code": 3,
    }
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--steps", "0"], "steps"),
        (["--dropout", "1.5"], "dropout"),
        (["--window", "500", "-500"], "window"),
        (["--region-xy", "100"], "region_xy"),
    ],
)
def test_invalid_values_fail_with_one_line_naming_the_field(tmp_path, capsys, flags, field):
    code = main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *flags])
    captured = capsys.readouterr()
    assert code == 2
    assert f"'{field}'" in captured.err.strip().splitlines()[-1]


def test_config_file_fills_fields_and_flags_win(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data: [a.nii.gz, b.nii.gz]\nout: runs/x\nmodel-size: tiny\nsteps: 50\nspacing: [2, 2, 2]\n")
    config = build_config(PretrainConfig, {"steps": 7}, cfg)
    assert config.data == ["a.nii.gz", "b.nii.gz"] and config.model_size == "tiny"
    assert config.steps == 7 and config.spacing == [2.0, 2.0, 2.0]
    assert config.warmup_steps == 0 and config.grid == 3 and config.head_hidden == 1024


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: [a]\nout: r\nstepz: 3\n", "unknown field(s) stepz"),
        ("data: [a]\nout: r\nsteps: many\n", "field 'steps' must be int"),
        ("data: [a\n", "not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
    ],
)
def test_bad_config_files_are_usage_errors(tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(PretrainConfig, {}, cfg)


def test_missing_required_flags_name_them():
    with pytest.raises(UsageError, match="--data, --out"):
        build_config(PretrainConfig, {}, None)


def test_10k_recipe_defaults():
    config = PretrainConfig(data=["x"], out="r", recipe="10k")
    assert (config.region_xy, config.region_depth, config.grid, config.crop_resize) == (384, 96, 4, 64)
    assert (config.head_hidden, config.negative, config.teacher, config.region_mode) == (
        2048,
        "l2",
        "network",
        "resize",
    )


def _flag_or_name(f) -> str:
    return f.name.upper() if f.metadata.get("positional") else flag_name(f)


@pytest.mark.parametrize("columns", ["60", "80", "200"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_names_every_default_and_the_required_arguments(command, columns, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)  # a terminal's width decides where argparse wraps
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    assert "::" not in text and "``" not in text and "NOT_GIVEN" not in text  # plain text, no parser sentinel
    fields = [f for f in dataclasses.fields(importlib.import_module(COMMANDS[command][0]).CONFIG)]
    for f in fields:
        help_text = " ".join(f.metadata["help"].split())
        if "(default" in help_text or is_required(f):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = (
            {True: "on", False: "off", None: "none"}.get(default) if isinstance(default, (bool, type(None))) else None
        )
        shown = shown or (" ".join(map(str, default)) if isinstance(default, list) else str(default)) or "none"
        assert f"{help_text} (default: {shown})" in flat, f"{command} {_flag_or_name(f)}: default {shown} not shown"
    required = [f for f in fields if is_required(f) and not f.metadata.get("positional")]
    if required:
        section = text.split(REQUIRED_TITLE + ":", 1)[1]
        listed = [line.split()[0] for line in section.splitlines() if line.startswith("  --")]
        assert listed == [flag_name(f) for f in required]
    else:
        assert REQUIRED_TITLE not in text


def test_flags_left_out_leave_the_config_file_in_charge(tmp_path):
    """The help shows the defaults, yet a flag left out still takes the config file's value, not the default."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("steps: 7\nmodel_size: tiny\n")
    args = build_parser("pretrain").parse_args(["pretrain", "--data", "a", "--out", "r", "--seed", "3"])
    values = {k: v for k, v in vars(args).items() if k not in ("command", "_config_file")}
    config = build_config(PretrainConfig, values, cfg)
    assert (config.steps, config.model_size, config.seed) == (7, "tiny", 3)


@pytest.mark.parametrize("cancel_first", [False, True])
def test_a_cancel_wrapped_by_a_library_still_exits_130(capsys, cancel_first):
    """MONAI re-raises a transform's exception as a RuntimeError: a Cancelled inside is still a cancel."""

    def run(config, reporter, cancel):
        if cancel_first:  # a signal broke a blocking call: what is raised need not be Cancelled at all
            cancel.cancel()
            raise OSError("Interrupted system call")
        try:
            raise Cancelled()
        except Cancelled as exc:
            raise RuntimeError("applying transform <RandCropByLabelClassesd>") from exc

    module = types.SimpleNamespace(CONFIG=PretrainConfig, run=run)
    values = {"data": ["ct.nii.gz"], "out": "run"}
    assert _run(module, values, None, Reporter(), CancelToken()) == 130
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert event == {"event": "error", "message": "cancelled", "file": None, "exit_code": 130}
