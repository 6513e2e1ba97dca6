"""Which Python runs the backend: Slicer's own (dependencies installed on first use) or a user-given one.

The backend's code ships with the extension (``VoCoSlicerBackend/voco_backend`` beside the module, installed by
the module's CMake; the repository root in a source checkout) and is put on the child's ``PYTHONPATH``. Only
third-party packages are pip-installed: torch through the PyTorch extension (it picks the CUDA or CPU build for
this computer), the rest with pip without touching torch or SimpleITK (Slicer's own).

An external Python (for example a CUDA environment) is started with the environment from before Slicer's launcher
set ``PYTHONHOME``, ``PYTHONPATH`` and the library paths (``slicer.util.startupEnvironment()``); with Slicer's
variables it would load Slicer's standard library or fail.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from VoCoSlicerLib.parameters import ParameterError

BACKEND_MODULE = "voco_backend"
MODULE_DIR = Path(__file__).resolve().parents[1]
# An installed extension: the module's CMake copies the backend here. A source checkout: the repository root.
BUNDLED_BACKEND_DIR = MODULE_DIR / "VoCoSlicerBackend"
SOURCE_TREE = MODULE_DIR.parent
# Installed by others: torch by the PyTorch extension, SimpleITK is part of Slicer.
NOT_PIP_INSTALLED = ("torch", "SimpleITK")
MINIMUM_PYTHON = (3, 10)
TORCH_REQUIREMENT_FALLBACK = ">=2.4"


def backendDirectory() -> Path:
    """The folder that holds the ``voco_backend`` package and its ``pyproject.toml``."""
    return BUNDLED_BACKEND_DIR if (BUNDLED_BACKEND_DIR / BACKEND_MODULE).is_dir() else SOURCE_TREE


def _requirementName(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def backendRequirements(pyproject: Path | None = None) -> list[str]:
    """The backend's dependencies with its ``train`` extra (the module pretrains too), torch included, from the
    ``pyproject.toml`` shipped with the backend."""
    import tomllib

    path = pyproject or backendDirectory() / "pyproject.toml"
    with open(path, "rb") as stream:
        project = tomllib.load(stream)["project"]
    return [*project["dependencies"], *project.get("optional-dependencies", {}).get("train", [])]


def pipRequirements(requirements: list[str]) -> list[str]:
    """The requirements pip installs into Slicer's Python: all but torch and SimpleITK."""
    return [r for r in requirements if _requirementName(r).lower() not in {n.lower() for n in NOT_PIP_INSTALLED}]


def torchRequirement(requirements: list[str]) -> str:
    """The version specifier of torch (e.g. ``>=2.4``) for the PyTorch extension's installer."""
    for requirement in requirements:
        if _requirementName(requirement).lower() == "torch":
            return requirement.strip()[len("torch") :].strip() or TORCH_REQUIREMENT_FALLBACK
    return TORCH_REQUIREMENT_FALLBACK


def slicerPython() -> str:
    """Slicer's own Python: ``PythonSlicer`` inside Slicer, the running interpreter elsewhere."""
    return shutil.which("PythonSlicer") or sys.executable


def checkPythonVersion(version: tuple[int, ...] = tuple(sys.version_info[:2])) -> None:
    """Raise a one-line error on a Slicer whose Python the backend (torch 2.4+) does not support."""
    if tuple(version[:2]) < MINIMUM_PYTHON:
        raise RuntimeError(
            f"VoCoSlicer needs 3D Slicer 5.10 or later (Python {'.'.join(map(str, MINIMUM_PYTHON))}+); this Slicer "
            f"runs Python {'.'.join(map(str, version[:2]))}: install a current Slicer from download.slicer.org"
        )


def _launcherFreeEnvironment() -> dict[str, str]:
    """The environment from before Slicer's launcher (inside Slicer), else this process's environment."""
    try:
        import slicer.util

        if getattr(slicer, "app", None) is not None:
            return dict(slicer.util.startupEnvironment())
    except (ImportError, AttributeError):
        pass
    return dict(os.environ)


def childEnvironment(external: bool, backendDir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a backend process.

    Args:
        external: the backend runs in another Python: Slicer's ``PYTHONHOME``/``PYTHONPATH`` are dropped.
        backendDir: put first on ``PYTHONPATH`` so that the extension's own backend is imported.
        base: the environment to start from (default: Slicer's startup environment for an external Python, this
            process's environment for Slicer's own).
    """
    if base is None:
        base = _launcherFreeEnvironment() if external else os.environ
    env = dict(base)
    if external:
        for name in ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONSTARTUP"):
            env.pop(name, None)
    paths = [str(backendDir), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


@dataclasses.dataclass
class BackendEnvironment:
    """The Python that runs the backend.

    Attributes:
        pythonExecutable: an external Python with the backend's dependencies; "" for Slicer's own Python.
    """

    pythonExecutable: str = ""

    def __post_init__(self) -> None:
        if self.pythonExecutable and not Path(self.pythonExecutable).is_file():
            raise ParameterError(
                f"pythonExecutable {self.pythonExecutable} does not exist; give the path of a "
                "python executable or leave it empty for Slicer's Python"
            )

    @property
    def usesSlicerPython(self) -> bool:
        """Whether the backend runs in Slicer's own Python."""
        return not self.pythonExecutable

    def command(self) -> list[str]:
        """The argv prefix that runs the backend."""
        return [self.pythonExecutable or slicerPython(), "-m", BACKEND_MODULE]

    def environment(self) -> dict[str, str]:
        """The backend process's environment (see :func:`childEnvironment`)."""
        return childEnvironment(not self.usesSlicerPython, backendDirectory())

    def isInstalled(self) -> bool:
        """Whether the chosen Python can import the backend and its dependencies (torch, MONAI)."""
        if self.usesSlicerPython:
            return all(importlib.util.find_spec(name) is not None for name in ("torch", "monai"))
        check = subprocess.run(
            [self.pythonExecutable, "-c", f"import torch, monai, {BACKEND_MODULE}"],
            capture_output=True,
            check=False,
            env=self.environment(),
        )
        return check.returncode == 0

    def install(self) -> None:
        """Install the backend's dependencies into Slicer's Python (blocking; takes minutes).

        torch comes from the PyTorch extension's installer (the right CUDA/CPU build); the other packages are
        pip-installed as a list (no string splitting of paths) without replacing torch or SimpleITK.

        Raises:
            RuntimeError: an external Python is chosen (install into it yourself), an old Slicer, or the user
                declined the torch installation.
        """
        checkPythonVersion()
        requirements = backendRequirements()
        if not self.usesSlicerPython:
            raise RuntimeError(
                f"install the backend's packages into {self.pythonExecutable} yourself: "
                f"{self.pythonExecutable} -m pip install {' '.join(requirements)}"
            )
        installTorch(torchRequirement(requirements))
        packages = pipRequirements(requirements)
        try:
            from slicer import packaging
        except ImportError:  # Slicer 5.10: no slicer.packaging
            import slicer.util

            slicer.util.pip_install(packages)
        else:
            packaging.pip_install(packages, skip_packages=list(NOT_PIP_INSTALLED))


def installTorch(requirement: str) -> None:
    """Install torch through the PyTorch extension (asks the user first), unless it is there already."""
    if importlib.util.find_spec("torch") is not None:
        return
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError(
            "VoCoSlicer needs the PyTorch extension: install 'PyTorch' in the Extensions Manager and restart Slicer"
        ) from exc
    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=requirement) is None:
        raise RuntimeError("PyTorch was not installed; VoCoSlicer cannot run without it")
