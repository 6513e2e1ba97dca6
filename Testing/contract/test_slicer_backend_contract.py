"""The process boundary: what the Slicer panels send is what the backend accepts, and they start from its defaults.

Every ``...Parameters.toArgv()`` of ``VoCoSlicerLib/parameters.py``, at its defaults and at its bounds, goes through
the backend's real argument parser and configuration validation (``voco_backend.cli`` / ``config``); a value just
past a Slicer bound is refused by both sides. The panel's parameter-node defaults (``VoCoSlicer.py``) and the
``.ui``'s initial values are compared with the CLI's dataclass defaults. Only this test imports both packages:
``parameters.py`` is loaded from its file (it imports nothing of Slicer), ``VoCoSlicer.py`` is read as source.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from voco_backend.cli import COMMANDS, build_parser
from voco_backend.config import build_config
from voco_backend.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_PATH = REPO_ROOT / "VoCoSlicer" / "VoCoSlicer.py"
UI_PATH = REPO_ROOT / "VoCoSlicer" / "Resources" / "UI" / "VoCoSlicer.ui"


def _load_parameters() -> Any:
    spec = importlib.util.spec_from_file_location(
        "vocoContractParameters", MODULE_PATH.parent / "VoCoSlicerLib" / "parameters.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


P = _load_parameters()


def backend_config(argv: list[str]) -> Any:
    """The backend's configuration object for ``argv``, through its own parser and validation."""
    command = argv[0]
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as exc:  # argparse refused a flag or value: the contract is broken
        raise AssertionError(f"the backend's parser refuses {argv}") from exc
    values = {k: v for k, v in vars(args).items() if k not in ("command", "_config_file")}
    return build_config(importlib.import_module(COMMANDS[command][0]).CONFIG, values)


def cli_defaults(command: str) -> dict[str, Any]:
    """The dataclass defaults of ``command``'s configuration (what the CLI uses when a flag is left out)."""
    fields = dataclasses.fields(importlib.import_module(COMMANDS[command][0]).CONFIG)
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def _segment(**changes: Any) -> Any:
    return P.SegmentParameters(
        **{"model": "VoComni_B", "inputPath": "/t/in.nrrd", "outputPath": "/t/o.nrrd", **changes}
    )


def _finetune(**changes: Any) -> Any:
    base = {"images": ("/t/a.nrrd",), "labels": ("/t/la.nrrd",), "outputModelDir": "/m/new", "classes": {"liver": 1}}
    return P.FinetuneParameters(**{**base, **changes})


def _pretrain(**changes: Any) -> Any:
    return P.PretrainParameters(**{"data": ("/t/ct",), "outputRunDir": "/r/run", **changes})


SEGMENT_CASES = [
    {},
    {"overlap": 0.0},
    {"overlap": P.MAX_OVERLAP},
    {"tta": True},
    {"roiBox": (-120.5, -80.0, -300.0, 0.1, 33.25, 1e-3)},
    *({"device": d} for d in P.DEVICES),
    *({"outputPath": f"/t/o{suffix}"} for suffix in P.LABEL_SUFFIXES),
]
FINETUNE_CASES = [
    {},
    {"classes": None, "colorTable": "/t/classes.ctbl"},
    {"classes": {"a": 1, "b": 65535}},
    {"steps": 1},
    {"roi": P.ROI_MINIMUM},
    {"roi": 256},
    {"spacing": (0.1, 0.1, 0.1)},
    {"spacingFromFov": True},
    {"maxMinutes": 0.0},
    {"maxMinutes": 10080.0},
    {"init": "none"},
    {"init": "VoCo_B_SSL_head"},
    {"seed": 0},
    {"resume": True},
    *({"modelSize": s} for s in P.MODEL_SIZES),
    *({"device": d} for d in P.DEVICES),
]
PRETRAIN_CASES = [
    {},
    {"steps": 1},
    {"init": "/r/encoder.pt"},
    {"seed": 0},
    {"resume": True},
    *({"modelSize": s} for s in P.MODEL_SIZES),
    *({"device": d} for d in P.DEVICES),
]


@pytest.mark.parametrize("changes", SEGMENT_CASES, ids=str)
def test_every_segment_parameter_the_panel_allows_is_accepted_by_the_backend(changes):
    parameters = _segment(**changes)
    config = backend_config(parameters.toArgv())
    assert (config.model, config.input, config.output) == (
        parameters.model,
        [parameters.inputPath],
        parameters.outputPath,
    )
    assert (config.device, config.overlap, config.tta) == (parameters.device, parameters.overlap, parameters.tta)
    assert config.roi_box == (None if parameters.roiBox is None else list(parameters.roiBox))


@pytest.mark.parametrize("changes", FINETUNE_CASES, ids=str)
def test_every_finetune_parameter_the_panel_allows_is_accepted_by_the_backend(changes):
    parameters = _finetune(**changes)
    config = backend_config(parameters.toArgv())
    defaults = cli_defaults("finetune")
    assert (config.images, config.labels, config.out) == (
        list(parameters.images),
        list(parameters.labels),
        parameters.outputModelDir,
    )
    assert config.steps == (parameters.steps or defaults["steps"])
    assert config.model_size == (parameters.modelSize or defaults["model_size"])
    assert config.roi == (parameters.roi or (64 if config.model_size == "tiny" else 96))  # the backend's choice
    assert config.max_minutes == (parameters.maxMinutes or 0.0)
    assert config.spacing == (None if parameters.spacing is None else list(parameters.spacing))
    assert config.spacing_from_fov == parameters.spacingFromFov
    assert (config.device, config.resume) == (parameters.device, parameters.resume)
    assert config.init == (parameters.init or defaults["init"])
    if parameters.classes is not None:
        assert config.classes == [f"{name}={value}" for name, value in parameters.classes.items()]


@pytest.mark.parametrize("changes", PRETRAIN_CASES, ids=str)
def test_every_pretrain_parameter_the_panel_allows_is_accepted_by_the_backend(changes):
    parameters = _pretrain(**changes)
    config = backend_config(parameters.toArgv())
    defaults = cli_defaults("pretrain")
    assert (config.data, config.out) == (list(parameters.data), parameters.outputRunDir)
    assert config.steps == (parameters.steps or defaults["steps"])
    assert config.model_size == (parameters.modelSize or defaults["model_size"])
    assert (config.init, config.device, config.resume) == (parameters.init, parameters.device, parameters.resume)


@pytest.mark.parametrize(
    ("build", "changes", "flag", "value"),
    [
        (_segment, {"overlap": 0.96}, "--overlap", "0.96"),
        (_segment, {"outputPath": "/t/o.png"}, "--output", "/t/o.png"),
        (_finetune, {"roi": 80}, "--roi", "80"),
        (_finetune, {"roi": 32}, "--roi", "32"),
        (_finetune, {"steps": 0}, "--steps", "0"),
    ],
    ids=lambda v: str(v) if not callable(v) else v.__name__,
)
def test_a_value_past_a_panel_bound_is_refused_by_both_sides(build, changes, flag, value):
    with pytest.raises(P.ParameterError):
        build(**changes)
    argv = build().toArgv()
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    with pytest.raises(UsageError):
        backend_config(argv)


@pytest.mark.parametrize("box", [(9.0, 0.0, 0.0, 5.0, 5.0, 5.0), (0.0, 0.0, 5.0, 5.0, 5.0, 5.0)])
def test_an_empty_or_inverted_roi_box_is_refused_by_both_sides(box):
    with pytest.raises(P.ParameterError, match=r"^roiBox .* is empty or inverted"):
        _segment(roiBox=box)
    with pytest.raises(UsageError, match=r"^field 'roi_box': the box .* is empty or inverted"):
        backend_config([*_segment().toArgv(), "--roi-box", *(str(v) for v in box)])


def _panel_defaults() -> dict[str, Any]:
    """The parameter-node fields' defaults of ``VoCoSlicer.py`` (module-level constants resolved)."""
    tree = ast.parse(MODULE_PATH.read_text(encoding="utf-8"))
    constants = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }
    (wrapped,) = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)
    ]
    return {
        item.target.id: constants[item.value.id] if isinstance(item.value, ast.Name) else ast.literal_eval(item.value)
        for item in wrapped.body
        if isinstance(item, ast.AnnAssign) and item.value is not None
    } | {"ROI_AUTO": constants["ROI_AUTO"]}


def test_the_panels_start_from_the_cli_defaults():
    panel = _panel_defaults()
    finetune, pretrain, segment = cli_defaults("finetune"), cli_defaults("pretrain"), cli_defaults("segment")
    assert panel["finetuneSteps"] == finetune["steps"]
    assert panel["finetuneModelSize"] == finetune["model_size"]
    assert panel["finetuneMaxMinutes"] == finetune["max_minutes"]
    assert panel["finetuneSpacingFromFov"] == finetune["spacing_from_fov"]
    assert panel["finetuneInit"] == finetune["init"]
    assert panel["pretrainSteps"] == pretrain["steps"]
    assert panel["pretrainModelSize"] == pretrain["model_size"]
    assert panel["pretrainResume"] == pretrain["resume"]
    assert panel["device"] == finetune["device"] == pretrain["device"] == segment["device"]
    # The crop size starts at "auto": left to the backend, which picks 64 for tiny and 96 otherwise.
    assert finetune["roi"] is None and panel["finetuneRoi"] == panel["ROI_AUTO"]
    with pytest.raises(UsageError):  # so ROI_AUTO can never be meant as a crop size
        backend_config([*_finetune().toArgv(), "--roi", str(panel["ROI_AUTO"])])


def test_the_ui_shows_the_parameter_node_defaults_before_binding():
    panel = _panel_defaults()
    shown = {}
    for widget in ET.parse(UI_PATH).getroot().iter("widget"):
        name = widget.findtext("property[@name='SlicerParameterName']/string")
        value = widget.findtext("property[@name='value']/number") or widget.findtext("property[@name='value']/double")
        if name and value is not None:
            shown[name] = float(value)
    assert {"finetuneSteps", "finetuneRoi", "pretrainSteps", "finetuneMaxMinutes"} <= set(shown)
    for name, value in shown.items():
        assert value == panel[name], f"{name}: the .ui shows {value}, the parameter node starts at {panel[name]}"
    roi = next(w for w in ET.parse(UI_PATH).getroot().iter("widget") if w.get("name") == "finetuneRoiSpinBox")
    assert roi.findtext("property[@name='specialValueText']/string") == "auto"
    assert float(roi.findtext("property[@name='minimum']/number")) == panel["ROI_AUTO"]
