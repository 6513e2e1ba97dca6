"""Verified, resumable downloads over HTTP(S) with protocol progress events.

Bytes stream into ``<dest>.part``; an existing ``.part`` is resumed with an HTTP Range request when the server
answers 206 (else the download restarts). The checksum is verified before the ``.part`` is renamed onto
``dest``, so ``dest`` only ever holds a verified (or, without a published checksum, complete) file. Standard
library only (urllib), so that no extra dependency is needed.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from voco_backend import __version__
from voco_backend.cancel import CancelToken
from voco_backend.errors import DataError, UsageError
from voco_backend.protocol import Reporter

ALGORITHMS: tuple[str, ...] = ("md5", "sha256")
CHUNK_BYTES = 1 << 20
PROGRESS_INTERVAL_S = 0.5
TIMEOUT_S = 60.0  # connecting, and the longest a single read may block
STALL_ENV = "VOCO_DOWNLOAD_STALL_S"
TOTAL_ENV = "VOCO_DOWNLOAD_TIMEOUT_S"
STALL_BYTES = 1024  # a download that moves fewer bytes than this in the stall time is stalled (a drip)


def _seconds(variable: str, default: float) -> float:
    """A positive number of seconds from the environment, else ``default``."""
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{variable} must be a positive number of seconds, got {text!r}", file=variable)
    return value


def stall_timeout_s() -> float:
    """Seconds without progress after which a download gives up (``$VOCO_DOWNLOAD_STALL_S``, default 60)."""
    return _seconds(STALL_ENV, TIMEOUT_S)


def total_timeout_s() -> float:
    """Seconds a whole download may take (``$VOCO_DOWNLOAD_TIMEOUT_S``, default 6 hours)."""
    return _seconds(TOTAL_ENV, 6 * 3600.0)


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file (``md5`` or ``sha256``)."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def part_path(dest: str | Path) -> Path:
    """The partial file beside ``dest`` that a download writes to and resumes from."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"voco-backend/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resumes(response: http.client.HTTPResponse, offset: int) -> bool:
    """Whether a response continues our ``.part`` at ``offset`` (206 with a matching Content-Range)."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return response.status == 206 and match is not None and int(match.group(1)) == offset


def _total_bytes(response: http.client.HTTPResponse, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _copy(
    response: http.client.HTTPResponse,
    out: BinaryIO,
    offset: int,
    total: int | None,
    reporter: Reporter,
    cancel: CancelToken,
    name: str,
    stall_s: float,
    deadline: float,
) -> int:
    """Stream the body into ``out``; returns the bytes now in the file.

    ``read1`` returns whatever has arrived, so progress is reported (every half second) even from a slow server.
    A cancel interrupts a blocked read at once; a server that moves fewer than ``STALL_BYTES`` in ``stall_s``,
    or a download longer than ``deadline``, stops with a :class:`DataError` (the ``.part`` is kept to resume).
    """
    done = offset
    last_report = 0.0
    mark_time, mark_bytes = time.monotonic(), done
    while True:
        with cancel.interrupting():
            chunk = response.read1(CHUNK_BYTES)
        if not chunk:
            break
        out.write(chunk)
        done += len(chunk)
        now = time.monotonic()
        if now - last_report >= PROGRESS_INTERVAL_S or done == total:
            if total:
                reporter.progress("download", done, total, file=name)
            else:
                reporter.emit("progress", stage="download", step=done, total=None, eta_s=None, file=name)
            last_report = now
        if done - mark_bytes >= STALL_BYTES:
            mark_time, mark_bytes = now, done
        elif now - mark_time > stall_s:
            raise DataError(
                f"download stalled (under {STALL_BYTES} bytes in {stall_s:g} s); run the command again to resume",
                file=name,
            )
        if now > deadline:
            raise DataError(f"download took longer than {TOTAL_ENV}; run the command again to resume", file=name)
    return done


def _one_line(reason: object) -> str:
    """The first non-empty line of an error's text (the protocol's messages are one line)."""
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(reason).__name__


def download(
    url: str, dest: str | Path, checksum: tuple[str, str] | None, reporter: Reporter, cancel: CancelToken
) -> Path:
    """Download ``url`` to ``dest``, resuming ``<dest>.part`` and verifying ``checksum`` before the rename.

    Args:
        url: an ``http`` or ``https`` URL.
        dest: the final path; it is only created once the whole file is there (and verified).
        checksum: ``(algorithm, hex value)`` with algorithm ``md5`` or ``sha256``; None downloads without
            verification and says so in a warning log event.
        reporter: receives ``download`` progress events (bytes as step/total).
        cancel: checked between chunks; a cancel leaves the ``.part`` for a later resume.

    Raises:
        UsageError: not an http(s) URL, or an unknown checksum algorithm.
        DataError: the server or network failed (the ``.part`` is kept for a resume), or the checksum does not
            match (nothing is left behind).
        Cancelled: on cancel.
    """
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise UsageError(f"only http(s) URLs can be downloaded, got '{url}'")
    if checksum is not None and checksum[0] not in ALGORITHMS:
        raise UsageError(f"checksum algorithm must be one of {', '.join(ALGORITHMS)}, got '{checksum[0]}'")
    dest = Path(dest)
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    stall_s = stall_timeout_s()
    deadline = time.monotonic() + total_timeout_s()
    try:
        try:
            with cancel.interrupting():
                response = _open(url, offset, stall_s)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not offset:
                raise
            # 416: the .part is not a prefix the server can continue (e.g. already complete); start over.
            exc.close()
            offset = 0
            with cancel.interrupting():
                response = _open(url, 0, stall_s)
        with response:
            if offset and not _resumes(response, offset):
                offset = 0
            if offset:
                reporter.log(f"resuming the download of {dest.name} at {offset} bytes")
            total = _total_bytes(response, offset)
            with part.open("ab" if offset else "wb") as out:
                done = _copy(response, out, offset, total, reporter, cancel, url, stall_s, deadline)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise DataError(f"download failed: the server redirects in a loop (HTTP {exc.code})", file=url) from exc
        raise DataError(f"download failed: HTTP {exc.code} {_one_line(exc.reason)}", file=url) from exc
    except TimeoutError as exc:
        raise DataError(
            f"download stalled (no byte for {stall_s:g} s); run the command again to resume", file=url
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"download failed ({_one_line(reason)}); run the command again to resume", file=url) from exc
    if total is not None and done != total:
        raise DataError(f"download incomplete ({done} of {total} bytes); run the command again to resume", file=url)
    if checksum is None:
        reporter.log(
            f"no checksum is published for {dest.name}: the download could not be verified",
            level="warning",
            file=str(dest),
        )
    else:
        algorithm, expected = checksum
        actual = file_digest(part, algorithm)
        if actual != expected.lower():
            part.unlink()
            raise DataError(
                f"{algorithm} checksum mismatch for {dest.name}: expected {expected}, got {actual}; "
                "the download was removed",
                file=url,
            )
    os.replace(part, dest)
    return dest
