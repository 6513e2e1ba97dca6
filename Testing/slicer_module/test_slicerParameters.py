"""The panels' parameter objects: the exact backend argv, and one-line errors naming the field."""

from __future__ import annotations

import pytest
from VoCoSlicerLib.parameters import FinetuneParameters, ParameterError, PretrainParameters, SegmentParameters


def test_segment_argv_names_model_input_output_and_device() -> None:
    parameters = SegmentParameters(
        model="/m/chest", inputPath="/t/in.nrrd", outputPath="/t/out.nrrd", device="cuda", overlap=0.5, tta=True
    )
    assert parameters.toArgv() == [
        "segment",
        "--model",
        "/m/chest",
        "--input",
        "/t/in.nrrd",
        "--output",
        "/t/out.nrrd",
        "--device",
        "cuda",
        "--overlap",
        "0.5",
        "--tta",
    ]


def test_finetune_argv_keeps_class_names_with_spaces_as_single_arguments() -> None:
    parameters = FinetuneParameters(
        images=("/t/a.nrrd", "/t/b.nrrd"),
        labels=("/t/la.nrrd", "/t/lb.nrrd"),
        outputModelDir="/m/new",
        classes={"right lung": 5, "ribs": 1},
        init="VoCo_B_SSL_head",
        steps=3,
        modelSize="tiny",
        roi=64,
        spacing=(6.0, 6.0, 6.0),
        seed=1,
    )
    assert parameters.toArgv() == [
        "finetune",
        "--images",
        "/t/a.nrrd",
        "/t/b.nrrd",
        "--labels",
        "/t/la.nrrd",
        "/t/lb.nrrd",
        "--out",
        "/m/new",
        "--classes",
        "right lung=5",
        "ribs=1",
        "--init",
        "VoCo_B_SSL_head",
        "--steps",
        "3",
        "--model-size",
        "tiny",
        "--roi",
        "64",
        "--spacing",
        "6.0",
        "6.0",
        "6.0",
        "--device",
        "auto",
        "--seed",
        "1",
    ]


def test_finetune_with_colour_table_and_defaults_left_to_the_backend() -> None:
    parameters = FinetuneParameters(
        images=("a.nrrd",), labels=("la.nrrd",), outputModelDir="m", colorTable="c.ctbl", resume=True
    )
    assert parameters.toArgv() == [
        "finetune",
        "--images",
        "a.nrrd",
        "--labels",
        "la.nrrd",
        "--out",
        "m",
        "--color-table",
        "c.ctbl",
        "--device",
        "auto",
        "--resume",
    ]


def test_pretrain_argv() -> None:
    parameters = PretrainParameters(data=("/ct",), outputRunDir="/runs/r", steps=10, modelSize="B")
    assert parameters.toArgv() == [
        "pretrain",
        "--data",
        "/ct",
        "--out",
        "/runs/r",
        "--steps",
        "10",
        "--model-size",
        "B",
        "--device",
        "auto",
    ]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: SegmentParameters(model="m", inputPath="i.nrrd", outputPath="o.png"), "outputPath"),
        (lambda: SegmentParameters(model="m", inputPath="i.nrrd", outputPath="o.nrrd", device="gpu"), "device"),
        (lambda: FinetuneParameters(images=("a",), labels=(), outputModelDir="m", classes={"x": 1}), "labels"),
        (
            lambda: FinetuneParameters(images=("a", "b"), labels=("la",), outputModelDir="m", classes={"x": 1}),
            "images and labels",
        ),
        (lambda: FinetuneParameters(images=("a",), labels=("la",), outputModelDir="m"), "colorTable"),
        (lambda: FinetuneParameters(images=("a",), labels=("la",), outputModelDir="m", classes={"x": 0}), "classes"),
        (
            lambda: FinetuneParameters(images=("a",), labels=("la",), outputModelDir="m", classes={"x": 1}, steps=0),
            "steps",
        ),
        (lambda: PretrainParameters(data=("d",), outputRunDir="r", modelSize="XL"), "modelSize"),
    ],
)
def test_invalid_values_fail_with_one_line_naming_the_field(make, field: str) -> None:
    with pytest.raises(ParameterError) as error:
        make()
    assert str(error.value).startswith(field)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("minutes", "flag"), [(0.0, None), (None, None), (90.0, "90"), (12.5, "12.5")])
def test_finetune_max_minutes_zero_is_no_limit(minutes: float | None, flag: str | None) -> None:
    argv = FinetuneParameters(
        images=("a.nrrd",), labels=("la.nrrd",), outputModelDir="m", colorTable="c.csv", maxMinutes=minutes
    ).toArgv()
    if flag is None:
        assert "--max-minutes" not in argv
    else:
        assert argv[argv.index("--max-minutes") + 1] == flag


def test_finetune_max_minutes_must_not_be_negative() -> None:
    with pytest.raises(ParameterError, match=r"^maxMinutes must be 0"):
        FinetuneParameters(images=("a",), labels=("b",), outputModelDir="m", colorTable="c", maxMinutes=-1)


def test_finetune_spacing_is_given_or_taken_from_the_field_of_view_never_both() -> None:
    common = {"images": ("a",), "labels": ("b",), "outputModelDir": "m", "colorTable": "c"}
    assert "--spacing-from-fov" in FinetuneParameters(**common, spacingFromFov=True).toArgv()
    assert "--spacing-from-fov" not in FinetuneParameters(**common).toArgv()
    with pytest.raises(ParameterError, match=r"^spacing or spacingFromFov"):  # the backend refuses both as well
        FinetuneParameters(**common, spacing=(2.0, 2.0, 2.0), spacingFromFov=True)
