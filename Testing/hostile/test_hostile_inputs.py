"""Hostile inputs generated at test time from real CT: each one works with the exact-grid promise kept, or fails
with a one-line error of the protocol's exit code (2 usage, 3 data, 4 memory), never a traceback.

The property-based part (Hypothesis) draws label values and dtypes, geometry (spacing, direction, origin),
class tables, config values and cut points of compressed files; the rest builds the cases the issue lists
(DICOM with missing or duplicate slices, memory bombs, unusable cache folders, deep model.json, disk full, OOM).
"""

from __future__ import annotations

import errno
import gzip
import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hostile_helpers import assert_one_line_error, cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voco_backend import cli as cli_module
from voco_backend.config import build_config
from voco_backend.data.integrity import MAX_VOXELS
from voco_backend.data.io import affine_of, from_array, read_image
from voco_backend.errors import DataError, UsageError
from voco_backend.segmentation.labels import (
    MAX_LABEL_VALUE,
    SegmentClass,
    label_on_image_grid,
    label_pixel_type,
    parse_classes,
    to_class_indices,
)

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FORMATS = [
    (".nii.gz", True),
    (".nii", False),
    (".nrrd", True),
    (".nrrd", False),
    (".mha", True),
    (".mha", False),
    (".nhdr", True),
    (".mhd", True),
]


@pytest.fixture(scope="module")
def ct(sample_ct) -> sitk.Image:
    """The registry sample chest CT (real, int32, 128×128×34), cut to a small block to keep every case fast."""
    return read_image(sample_ct["CTChest4.nrrd"])[40:72, 40:72, 10:22]


def _one_file(folder: Path, name: str) -> Path:
    """``folder/name`` after emptying the folder (Hypothesis reuses one temporary folder per test)."""
    for old in folder.glob("*"):
        old.unlink() if old.is_file() else shutil.rmtree(old)
    return folder / name


# ---------------------------------------------------------------- label values and dtypes (issue items 1 and 4)

LABEL_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


@st.composite
def label_values(draw):
    dtype = np.dtype(draw(st.sampled_from(LABEL_DTYPES)))
    if dtype.kind == "f":
        value = draw(
            st.one_of(
                st.integers(-(2**40), 2**40).map(float),
                st.sampled_from([1e10 + 1, 2.0**31, 0.5, float("nan"), float("inf")]),
            )
        )
    else:
        info = np.iinfo(dtype)
        special = [
            v for v in (1, 2**31 - 1, 2**31, 2**32 + 1, 2**63 - 1, -1, -(2**31) - 1) if info.min <= v <= info.max
        ]
        value = draw(st.one_of(st.integers(int(info.min), int(info.max)), st.sampled_from(special)))
    return dtype, value


@FAST
@given(case=label_values(), suffix=st.sampled_from([".nrrd", ".nii.gz", ".mha"]))
def test_label_values_are_kept_exactly_or_refused_with_the_true_value(ct, tmp_path, case, suffix):
    dtype, value = case
    array = np.zeros(tuple(reversed(ct.GetSize())), dtype=dtype)
    with np.errstate(invalid="ignore"):
        array[3:6, 5:9, 7:12] = value
    value = array[3, 5, 7].item()  # what the file really holds (float32 rounds large integers)
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(ct)
    path = _one_file(tmp_path, "label" + suffix)
    sitk.WriteImage(label, str(path), True)
    classes = (
        [SegmentClass("thing", int(value), (1.0, 0.0, 0.0))]
        if float(value).is_integer() and 0 < value <= MAX_LABEL_VALUE
        else []
    )
    try:
        on_grid = label_on_image_grid(read_image(path), ct, path)
        index = to_class_indices(sitk.GetArrayFromImage(on_grid), classes, path)
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and str(path) in message
        if value != value or value in (float("inf"),):
            pass  # refused in one line (ITK's NIfTI reader may already turn the NaN into 0: "label is empty")
        elif float(value).is_integer() and not 0 <= value <= MAX_LABEL_VALUE:
            assert str(int(value)) in message, message  # the true value, never a wrapped one
        return
    # Accepted: the voxels of the value, and only they, are the class (no wrap-around, no loss).
    assert classes, f"value {value!r} accepted without a class"
    assert np.array_equal(index == 1, array == value)


@given(value=st.integers(1, 2**40))
@settings(max_examples=40, deadline=None)
def test_class_values_are_written_with_a_wide_enough_dtype_or_refused(value):
    if value > MAX_LABEL_VALUE:
        with pytest.raises(UsageError, match=str(value)):
            parse_classes([f"big={value}"])
        return
    (cls,) = parse_classes([f"big={value}"])
    dtype, pixel = label_pixel_type(cls.value)
    assert np.asarray([cls.value], dtype=dtype)[0] == cls.value
    image = sitk.Image(2, 2, 2, pixel)
    image[1, 1, 1] = cls.value
    assert image[1, 1, 1] == cls.value


@given(specs=st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=4))
@settings(max_examples=60, deadline=None)
def test_class_tables_parse_or_fail_in_one_line(specs):
    try:
        classes = parse_classes(specs)
    except UsageError as exc:
        assert "\n" not in str(exc) and "classes" in str(exc)
        return
    values = [c.value for c in classes]
    assert values == sorted(set(values)) and all(0 < v <= MAX_LABEL_VALUE for v in values)


# ---------------------------------------------------------------- geometry (issue item 10)

finite = st.floats(-1e4, 1e4, allow_nan=False)


@st.composite
def geometries(draw):
    spacing = draw(
        st.lists(
            st.one_of(st.floats(0.05, 20), st.sampled_from([0.0, -1.0, float("nan"), float("inf")])),
            min_size=3,
            max_size=3,
        )
    )
    origin = draw(st.lists(st.one_of(finite, st.sampled_from([float("nan"), float("inf")])), min_size=3, max_size=3))
    angles = draw(st.lists(st.floats(-np.pi, np.pi), min_size=3, max_size=3))
    shear = draw(st.one_of(st.just(0.0), st.floats(-0.5, 0.5)))
    rotation = sitk.Euler3DTransform((0, 0, 0), *angles).GetMatrix()
    direction = np.asarray(rotation).reshape(3, 3) @ np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]])
    return spacing, origin, direction


@FAST
@given(geometry=geometries(), suffix=st.sampled_from([".nrrd", ".mha"]))
def test_geometry_is_kept_exactly_or_refused(ct, tmp_path, geometry, suffix):
    spacing, origin, direction = geometry
    path = _one_file(tmp_path, "ct" + suffix)
    image = sitk.Image(ct)
    try:
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction.flatten().tolist())
        sitk.WriteImage(image, str(path), True)
    except RuntimeError:
        return  # ITK itself will not make such a file (zero spacing, singular direction)
    if suffix == ".nrrd" and b"space origin" not in path.read_bytes()[:2000]:
        origin = [0.0, 0.0, 0.0]  # ITK's NRRD writer leaves a NaN origin out: the file itself says 0
    try:
        read = read_image(path)
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        bad = (
            not np.all(np.isfinite(spacing))
            or min(spacing) <= 0
            or not np.all(np.isfinite(origin))
            or not np.allclose(direction @ direction.T, np.eye(3), atol=1e-4)
        )
        assert bad, f"a valid grid was refused: {exc}"
        return
    # Accepted: the grid read is the grid written, and the voxel → RAS affine round-trips to it exactly.
    assert np.allclose(read.GetSpacing(), spacing, rtol=1e-6)
    assert np.allclose(read.GetOrigin(), origin, rtol=1e-6, atol=1e-6)
    assert np.allclose(read.GetDirection(), direction.flatten(), atol=1e-6)
    back = from_array(sitk.GetArrayFromImage(read).transpose(2, 1, 0), affine_of(read), read.GetPixelID())
    assert np.allclose(back.GetDirection(), read.GetDirection(), atol=1e-9)
    assert np.allclose(back.GetOrigin(), read.GetOrigin(), atol=1e-6)
    assert np.allclose(back.GetSpacing(), read.GetSpacing(), rtol=1e-9)


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), -float("inf")])
def test_float_images_with_non_finite_voxels_are_refused(ct, tmp_path, fill):
    array = sitk.GetArrayFromImage(ct).astype(np.float64)
    array[2, 3, 4] = fill
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(DataError, match="NaN or infinite"):
        read_image(path)


@pytest.mark.parametrize("dtype", ["float64", "uint64", "int8"])
def test_wide_and_narrow_pixel_types_read_on_the_same_grid(ct, tmp_path, dtype):
    array = np.clip(sitk.GetArrayFromImage(ct), 0, 100).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    read = read_image(path)
    assert read.GetSize() == ct.GetSize() and np.allclose(read.GetDirection(), ct.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(read), array)


# ---------------------------------------------------------------- truncated and bomb files (issue item 11)


@FAST
@given(fmt=st.sampled_from(FORMATS), keep=st.floats(0.0, 0.999))
def test_truncated_images_are_refused_naming_the_file(ct, tmp_path, fmt, keep):
    suffix, compressed = fmt
    path = _one_file(tmp_path, "ct" + suffix)
    sitk.WriteImage(ct, str(path), compressed)
    data = next((p for p in tmp_path.iterdir() if p != path), path)  # .nhdr/.mhd keep their data beside
    size = data.stat().st_size
    header = 0 if data != path or suffix.startswith(".nii") else data.read_bytes().find(b"\n\n") + 2
    if suffix.startswith(".mh") and data == path:
        header = data.read_bytes().find(b"ElementDataFile = LOCAL\n") + len("ElementDataFile = LOCAL\n")
    cut = max(int(size * keep), min(header, size - 1))
    with data.open("r+b") as stream:
        stream.truncate(cut)
    with pytest.raises(DataError) as caught:
        read_image(path)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value) or str(data) in str(caught.value)


def test_every_real_ct_file_passes_the_completeness_check(shared_data):
    files = sorted(shared_data.glob("*/*.nii.gz")) + sorted(shared_data.glob("*/*.nrrd"))
    assert len(files) >= 20
    for path in files:
        read_image(path)


def _nifti1_header(dims: tuple[int, ...], datatype: int, bitpix: int) -> bytes:
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 0, 0, 0, 0)
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    return bytes(header)


def test_gzip_that_declares_16_gib_is_refused_quickly_in_bounded_memory(tmp_path):
    # 1024 × 1024 × 2048 int64 = 16 GiB declared, 2**31 voxels (the most this program reads), a few KB there.
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_nifti1_header((1024, 1024, 2048), 1024, 64) + bytes(1 << 20))[:-200])
    started = time.monotonic()
    with pytest.raises(DataError, match="truncated"):
        read_image(path)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "header",
    [
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 32767 32767 32767\nencoding: gzip\n\n",
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: /dev/zero\n\n",
        "ObjectType = Image\nNDims = 3\nDimSize = 32767 32767 32767\nElementType = MET_SHORT\n"
        "ElementDataFile = LOCAL\n",
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = /dev/zero\n",
    ],
)
def test_headers_declaring_huge_sizes_or_device_data_are_refused(tmp_path, header):
    path = tmp_path / ("bomb.nhdr" if header.startswith("NRRD") else "bomb.mhd")
    path.write_text(header)
    with pytest.raises(DataError) as caught:
        read_image(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_nifti2_with_a_million_voxels_per_side_is_refused(tmp_path):
    header = bytearray(544)
    struct.pack_into("<i8sh", header, 0, 540, b"n+2\0\r\n\x1a\n", 16)
    struct.pack_into("<h", header, 14, 32)  # bitpix of float32
    struct.pack_into("<8q", header, 16, 3, 10**6, 10**6, 10**6, 1, 1, 1, 1)
    struct.pack_into("<q", header, 168, 544)
    path = tmp_path / "bomb.nii"
    path.write_bytes(bytes(header))
    with pytest.raises(DataError, match=f"more than this program reads \\({MAX_VOXELS}\\)"):
        read_image(path)


# ---------------------------------------------------------------- DICOM (issue item 2)


@pytest.fixture
def dicom_copy(shared_data, tmp_path) -> Path:
    folder = tmp_path / "series"
    shutil.copytree(shared_data / "totalsegmentator" / "example_ct_dicom", folder)
    return folder


def test_complete_dicom_series_reads(dicom_copy):
    assert read_image(dicom_copy).GetSize()[2] == len(list(dicom_copy.iterdir()))


def _by_position(folder: Path) -> list[Path]:
    return [Path(p) for p in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))]


@pytest.mark.parametrize("drop", [[5], [1, 2], [10]])
def test_dicom_series_with_missing_slices_is_refused(dicom_copy, drop):
    files = _by_position(dicom_copy)
    for i in drop:
        files[i].unlink()
    with pytest.raises(DataError, match="not evenly spaced") as caught:
        read_image(dicom_copy)
    assert str(dicom_copy) in str(caught.value) and "\n" not in str(caught.value)


def test_dicom_series_with_a_duplicate_slice_is_refused(dicom_copy):
    files = _by_position(dicom_copy)
    shutil.copy(files[4], dicom_copy / "duplicate.dcm")
    with pytest.raises(DataError):
        read_image(dicom_copy)


@pytest.mark.parametrize("junk", [b"", b"not a dicom file at all" * 10, bytes(range(256)) * 40])
def test_folders_of_junk_are_one_line(tmp_path, junk):
    folder = tmp_path / "junk"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}.dcm").write_bytes(junk)
    with pytest.raises(DataError) as caught:
        read_image(folder)
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------- config files and CLI values


@pytest.mark.parametrize(
    "text",
    [
        "data: [a\n",  # invalid YAML
        "data: [a]\nout: r\nstepz: 3\n",  # unknown key
        "data: [a]\nout: r\nsteps: many\n",  # wrong type
        "data: [a]\nout: r\nsteps: {a: 1}\n",  # a mapping where a number goes
        "data: [a]\nout: r\nsteps: !!python/object/apply:os.system ['echo owned']\n",
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        "out: [*e, *e, *e, *e, *e]\n",
        "data: [a]\nout: r\nlr: .nan\n",
        "data: [a]\nout: r\nsteps: .inf\n",
        "data: [a]\nout: r\nsteps: 1e400\n",
        "[" * 50_000 + "]" * 50_000,  # deeply nested
        "- a\n- b\n",  # not a mapping
    ],
)
def test_hostile_config_files_are_exit_2_in_one_line(tmp_path, text):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    outcome = cli("pretrain", "--config", str(path))
    assert_one_line_error(outcome, 2)
    assert not (tmp_path / "r").exists()


def test_binary_and_huge_config_files_are_exit_2(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 8)
    assert_one_line_error(cli("pretrain", "--config", str(binary)), 2, "binary")
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (2 << 20))
    assert_one_line_error(cli("pretrain", "--config", str(huge)), 2, "larger")


NUMBERS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e308", "-0", "99999999999999999999"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str),
)


@given(
    flag=st.sampled_from(
        ["--steps", "--lr", "--dropout", "--seed", "--batch-size", "--region-xy", "--weight-decay", "--warmup-steps"]
    ),
    value=NUMBERS,
)
@settings(max_examples=80, deadline=None)
def test_cli_numbers_build_a_valid_config_or_fail_in_one_line(flag, value):
    from voco_backend.cli import build_parser
    from voco_backend.commands.pretrain import CONFIG

    parser = build_parser("pretrain")
    try:
        args = parser.parse_args(["pretrain", "--data", "a", "--out", "r", flag, value])
    except SystemExit as exc:
        assert exc.code == 2
        return
    values = {k: v for k, v in vars(args).items() if k not in ("command", "_config_file")}
    try:
        config = build_config(CONFIG, values)
        check = getattr(config, "validate", None) or getattr(config, "__post_init__", None)
        if check:
            check()
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    number = getattr(config, flag[2:].replace("-", "_"))
    numbers = number if isinstance(number, (list, tuple)) else [number]
    assert all(np.isfinite(float(n)) for n in numbers if n is not None)


# ---------------------------------------------------------------- model folders, cache folders, OOM, disk full


def _model_folder(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text(text)
    (folder / "model.pt").write_bytes(b"not used")
    return folder


def _valid_model_json() -> dict:
    return {
        "format": "voco-slicer-model",
        "format_version": 1,
        "name": "m",
        "architecture": {"model_size": "tiny"},
        "classes": [{"name": "a", "value": 1, "color": [1, 0, 0]}],
        "recipe": {"spacing": [1.5, 1.5, 1.5], "window": [-175, 250]},
        "roi": [96, 96, 96],
    }


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        json.dumps({**_valid_model_json(), "roi": [33, 33, 33]}),
        json.dumps({**_valid_model_json(), "roi": [0, 96, 96]}),
        json.dumps({**_valid_model_json(), "roi": "big"}),
        json.dumps({**_valid_model_json(), "classes": [{"name": "a", "value": 2**40, "color": [1, 0, 0]}]}),
        "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
    ],
)
def test_hostile_model_json_is_exit_3_in_one_line(ct, tmp_path, text):
    folder = _model_folder(tmp_path, text)
    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(ct, str(image))
    outcome = cli("segment", "--model", str(folder), "--input", str(image), "--output", str(tmp_path / "o.nii.gz"))
    assert_one_line_error(outcome, 3, "model")
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("where", ["/dev/null", "/proc/self/voco", "a_file", "a_file/below"])
@pytest.mark.parametrize("command", [("models", "fetch", "VoCo_B_SSL_head"), ("sample-data",), ("models", "list")])
def test_unusable_cache_folders_are_exit_2_in_one_line(tmp_path, where, command):
    (tmp_path / "a_file").write_text("x")
    cache = where if where.startswith("/") else str(tmp_path / where)
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    outcome = cli(*args, env={"VOCO_CACHE_DIR": cache})
    assert_one_line_error(outcome, 2, "VOCO_CACHE_DIR")


def _command_that(action):
    """A stand-in command module whose run does ``action`` (the real mapping of outcomes is what is tested)."""
    from dataclasses import dataclass

    @dataclass
    class Config:
        pass

    class Module:
        CONFIG = Config

        @staticmethod
        def run(config, reporter, cancel):
            action()

    return Module


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:119] data. DefaultCPUAllocator: can't allocate memory: you tried "
            "to allocate 34359738368 bytes. Error code 12 (Cannot allocate memory)"
        ),
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    ],
)
def test_out_of_memory_is_exit_4_with_the_advice(error):
    from voco_backend.cancel import CancelToken
    from voco_backend.protocol import Reporter

    def fail():
        raise error

    code = cli_module._run(_command_that(fail), {}, None, Reporter(), CancelToken())
    assert code == 4


def test_torch_cpu_allocation_failure_is_exit_4(capsys):
    import torch

    from voco_backend.cancel import CancelToken
    from voco_backend.protocol import Reporter

    def allocate():
        torch.empty(2**62, dtype=torch.uint8)  # PyTorch's own "can't allocate memory"

    code = cli_module._run(_command_that(allocate), {}, None, Reporter(), CancelToken())
    captured = capsys.readouterr()
    assert code == 4 and "Traceback" not in captured.err
    assert "out of memory" in json.loads(captured.out.splitlines()[-1])["message"]


def test_disk_full_is_one_line_exit_3_and_keeps_earlier_outputs(tmp_path, capsys):
    from voco_backend.atomic import atomic_path
    from voco_backend.cancel import CancelToken
    from voco_backend.protocol import Reporter

    out = tmp_path / "result.txt"
    out.write_text("earlier output")

    def write_until_full():
        with atomic_path(out) as tmp, Path("/dev/full").open("wb") as full:  # the kernel's own ENOSPC
            tmp.write_text("half")
            full.write(b"x" * 65536)
            full.flush()

    code = cli_module._run(_command_that(write_until_full), {}, None, Reporter(), CancelToken())
    captured = capsys.readouterr()
    assert code == 3 and "Traceback" not in captured.err
    assert "no space left" in json.loads(captured.out.splitlines()[-1])["message"]
    assert out.read_text() == "earlier output"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]
    assert errno.ENOSPC in cli_module.DISK_FULL
