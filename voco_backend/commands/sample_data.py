"""Fetch the real sample CT from the package registry (sha256-verified, cached) and print where it lies.

Example::

    python -m voco_backend sample-data
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from voco_backend.cancel import CancelToken
from voco_backend.config import check_choice, field
from voco_backend.data.samples import PACKAGES, fetch_sample
from voco_backend.protocol import Reporter


@dataclasses.dataclass
class SampleDataConfig:
    """Configuration of ``sample-data``."""

    cache_dir: str | None = field(None, help="folder for the samples (default $VOCO_CACHE_DIR/samples)")
    packages: list[str] = field(list(PACKAGES), help=f"which packages to fetch ({', '.join(PACKAGES)})")

    def __post_init__(self) -> None:
        for name in self.packages:
            check_choice("packages", name, list(PACKAGES))


CONFIG = SampleDataConfig


def run(config: SampleDataConfig, reporter: Reporter, cancel: CancelToken) -> None:
    """Fetch each package's files and report their paths."""
    files: dict[str, str] = {}
    for i, name in enumerate(config.packages):
        cancel.check()
        reporter.progress("sample-data", i, len(config.packages), package=name)
        paths = fetch_sample(name, Path(config.cache_dir) if config.cache_dir else None, reporter, cancel)
        files.update({k: str(v) for k, v in paths.items()})
    reporter.progress("sample-data", len(config.packages), len(config.packages))
    reporter.result(files=files)
