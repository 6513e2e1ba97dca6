"""Checks an image file holds every byte its header declares, before SimpleITK reads it.

SimpleITK (ITK) fills what is missing of a truncated file, compressed or not, with zeros and says nothing. These
checks parse the header of each format we read (NIfTI-1/2, NRRD/NHDR, MetaImage MHA/MHD), refuse absurd sizes
before any allocation, and stream through compressed data in bounded chunks (so a gzip that declares 16 GiB costs
time in proportion to the bytes really there, never memory) to see that the stream ends cleanly and holds the
declared number of bytes.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path

from voco_backend.errors import DataError

MAX_VOXELS = 2**31  # 8 GiB as float32: far beyond any CT; refused before anything is allocated
CHUNK = 1 << 20
_NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(
        (
            "short",
            "short int",
            "signed short",
            "signed short int",
            "int16",
            "int16_t",
            "ushort",
            "unsigned short",
            "unsigned short int",
            "uint16",
            "uint16_t",
        ),
        2,
    ),
    **dict.fromkeys(
        ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4
    ),
    **dict.fromkeys(
        (
            "longlong",
            "long long",
            "long long int",
            "signed long long",
            "signed long long int",
            "int64",
            "int64_t",
            "ulonglong",
            "unsigned long long",
            "unsigned long long int",
            "uint64",
            "uint64_t",
            "double",
        ),
        8,
    ),
}
_MET_TYPE_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def check_image_file(path: Path) -> None:
    """Raise a one-line :class:`DataError` naming ``path`` unless it holds all the data its header declares.

    Formats other than NIfTI, NRRD and MetaImage are left to the reader.
    """
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            _check_nifti(path, name.endswith(".gz"))
        elif name.endswith((".nrrd", ".nhdr")):
            _check_nrrd(path)
        elif name.endswith((".mha", ".mhd")):
            _check_metaimage(path)
    except OSError as exc:
        raise DataError(f"cannot read image ({exc.strerror or exc})", file=path) from exc


def _voxel_bytes(dims: list[int], element_bytes: int, path: Path) -> int:
    if not dims or any(d < 1 for d in dims):
        raise DataError(f"header declares the size {dims}; every size must be at least 1", file=path)
    voxels = math.prod(dims)
    if voxels > MAX_VOXELS:
        raise DataError(
            f"header declares {voxels} voxels ({' x '.join(map(str, dims))}), more than this program "
            f"reads ({MAX_VOXELS})",
            file=path,
        )
    return voxels * element_bytes


def _truncated(path: Path, have: int, need: int) -> DataError:
    return DataError(
        f"image is truncated: {have} of the {need} bytes its header declares; the file is cut short (copy it again)",
        file=path,
    )


def _gzip_bytes(path: Path, offset: int, need: int) -> int:
    """Decompress the gzip stream(s) of ``path`` from ``offset``, up to ``need`` bytes; raise when cut short."""
    have = 0
    with path.open("rb") as raw:
        raw.seek(offset)
        stream = gzip.GzipFile(fileobj=raw)
        try:
            while have < need:
                chunk = stream.read(min(CHUNK, need - have))
                if not chunk:
                    break
                have += len(chunk)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(
                f"image is truncated or damaged: its gzip stream breaks off after {have} of {need} bytes ({exc})",
                file=path,
            ) from exc
    if have < need:
        raise _truncated(path, have, need)
    return have


def _zlib_bytes(path: Path, offset: int, need: int) -> int:
    """The same for a raw zlib stream (MetaImage ``CompressedData = True``)."""
    have = 0
    decompressor = zlib.decompressobj()
    with path.open("rb") as raw:
        raw.seek(offset)
        try:
            while have < need and not decompressor.eof:
                data = raw.read(CHUNK)
                if not data:
                    break
                have += len(decompressor.decompress(data, need - have + 1))
                while decompressor.unconsumed_tail and have < need:
                    have += len(decompressor.decompress(decompressor.unconsumed_tail, need - have + 1))
        except zlib.error as exc:
            raise DataError(
                f"image is damaged: its zlib stream is invalid after {have} of {need} bytes ({exc})", file=path
            ) from exc
    if have < need:
        raise _truncated(path, have, need)
    return have


def _check_nifti(path: Path, compressed: bool) -> None:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"image is truncated or damaged: no complete NIfTI header ({exc})", file=path) from exc
    if len(header) < 348:
        raise DataError(f"image is truncated: {len(header)} bytes, a NIfTI header alone is 348", file=path)
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", header[:4])[0]
        if size == 348:
            dims = list(struct.unpack(endian + "8h", header[40:56]))
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = struct.unpack(endian + "f", header[108:112])[0]
            geometry = struct.unpack(endian + "8f", header[76:108]) + struct.unpack(endian + "18f", header[256:328])
            _finite_geometry(geometry, path)
            offset = int(offset) if math.isfinite(offset) else -1
            break
        if size == 540:
            if len(header) < 540:
                raise DataError("image is truncated: no complete NIfTI-2 header", file=path)
            dims = list(struct.unpack(endian + "8q", header[16:80]))
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = struct.unpack(endian + "q", header[168:176])[0]
            geometry = struct.unpack(endian + "8d", header[104:168]) + struct.unpack(endian + "18d", header[280:424])
            _finite_geometry(geometry, path)
            break
    else:
        return  # not NIfTI after all: the reader says what it is
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8 or offset < 0:
        raise DataError(f"not a valid NIfTI header (dim[0] {ndim}, bitpix {bitpix})", file=path)
    need = offset + _voxel_bytes(dims[1 : ndim + 1], bitpix // 8, path)
    if compressed:
        _gzip_bytes(path, 0, need)
    elif path.stat().st_size < need:
        raise _truncated(path, path.stat().st_size, need)


def _finite_geometry(values: tuple[float, ...], path: Path) -> None:
    """ITK reads a NaN spacing or origin as 1 or 0 without a word: refuse it from the header itself."""
    if not all(math.isfinite(v) for v in values):
        raise DataError("header holds a NaN or infinite spacing, origin or direction; fix the image header", file=path)


def _text_geometry(fields: dict[str, str], keys: tuple[str, ...], path: Path) -> None:
    for key in keys:
        if re.search(r"nan|inf", fields.get(key, ""), re.IGNORECASE):
            raise DataError(f"header field '{key}' is not finite ({fields[key][:80]}); fix the image header", file=path)


def _header_fields(path: Path, separator: str) -> tuple[dict[str, str], int]:
    """``key: value`` (NRRD) or ``key = value`` (MetaImage) fields of a text header and where the data begins."""
    fields: dict[str, str] = {}
    with path.open("rb") as stream:
        head = stream.read(1 << 16)
    position = 0
    for raw_line in head.splitlines(keepends=True):
        position += len(raw_line)
        line = raw_line.decode("latin-1").strip()
        if separator == ":" and not line:
            break
        key, sep, value = line.partition(separator)
        if separator == ":" and ":=" in line:
            continue  # NRRD key/value pairs
        if sep:
            fields[key.strip().lower()] = value.strip()
        if separator == "=" and key.strip().lower() == "elementdatafile":
            break
    return fields, position


def _ints(text: str, path: Path, field: str) -> list[int]:
    try:
        return [int(v) for v in text.split()]
    except ValueError as exc:
        raise DataError(f"header field '{field}' is not a list of integers: {text[:80]!r}", file=path) from exc


def _check_nrrd(path: Path) -> None:
    fields, data_start = _header_fields(path, ":")
    _text_geometry(fields, ("space origin", "space directions", "spacings", "axis mins", "thicknesses"), path)
    if fields.get("dimension") == "3" and "none" in fields.get("space directions", "").lower():
        raise DataError(
            "header gives an axis no space direction (a NaN or missing spacing); fix the image header", file=path
        )
    if "sizes" not in fields or "type" not in fields:
        return  # not a NRRD header we understand: the reader decides
    element = _NRRD_TYPE_BYTES.get(fields["type"].lower())
    if element is None:
        return
    need = _voxel_bytes(_ints(fields["sizes"], path, "sizes"), element, path)
    data_file = fields.get("data file") or fields.get("datafile")
    target, offset = path, data_start
    if data_file:
        if data_file.upper().startswith("LIST") or "%" in data_file:
            return  # multi-file NRRD: left to the reader
        target, offset = path.parent / data_file, 0
        if not target.is_file():
            raise DataError(f"the data file '{data_file}' named in the header is missing", file=path)
    skip = int(fields.get("byte skip", "0") or 0)
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        _gzip_bytes(target, offset, need)
    elif encoding == "raw" and skip >= 0:
        have = target.stat().st_size - offset - skip
        if have < need:
            raise _truncated(target, max(have, 0), need)


def _check_metaimage(path: Path) -> None:
    fields, data_start = _header_fields(path, "=")
    _text_geometry(
        fields,
        ("offset", "origin", "position", "elementspacing", "transformmatrix", "rotation", "orientation", "elementsize"),
        path,
    )
    if "dimsize" not in fields or "elementtype" not in fields:
        return
    element = _MET_TYPE_BYTES.get(fields["elementtype"].upper())
    if element is None:
        return
    channels = int(fields.get("elementnumberofchannels", "1") or 1)
    need = _voxel_bytes(_ints(fields["dimsize"], path, "DimSize"), element * max(channels, 1), path)
    data_file = fields.get("elementdatafile", "LOCAL")
    target, offset = path, data_start
    if data_file.upper() != "LOCAL":
        if data_file.upper().startswith("LIST") or re.search(r"%\d*d", data_file):
            return
        target, offset = path.parent / data_file, 0
        if not target.is_file():
            raise DataError(f"the data file '{data_file}' named in the header is missing", file=path)
    if fields.get("compresseddata", "false").lower() == "true":
        _zlib_bytes(target, offset, need)
    else:
        have = target.stat().st_size - offset
        if have < need:
            raise _truncated(target, max(have, 0), need)
