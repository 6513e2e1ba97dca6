"""Which Python runs the backend: Slicer's own (dependencies installed on first use) or a user-given one.

An external Python (for example a CUDA environment with ``pip install voco-backend``) is used as it is; Slicer's
own Python gets the backend and its dependencies installed into it on first use, through ``slicer.packaging``
where this Slicer has it, else ``slicer.util.pip_install``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from VoCoSlicerLib.parameters import ParameterError

BACKEND_MODULE = "voco_backend"
BACKEND_DISTRIBUTION = "voco-backend"
# From a source checkout the backend is the package beside the module: VoCoSlicer/VoCoSlicerLib/ → repo root.
SOURCE_TREE = Path(__file__).resolve().parents[2]


def slicerPython() -> str:
    """Slicer's own Python: ``PythonSlicer`` inside Slicer, the running interpreter elsewhere."""
    return shutil.which("PythonSlicer") or sys.executable


def backendRequirement() -> str:
    """What pip installs: the source tree's backend when running from a checkout, else the published package."""
    return str(SOURCE_TREE) if (SOURCE_TREE / "pyproject.toml").is_file() else BACKEND_DISTRIBUTION


@dataclasses.dataclass
class BackendEnvironment:
    """The Python that runs the backend.

    Attributes:
        pythonExecutable: an external Python with the backend installed; "" for Slicer's own Python.
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

    def isInstalled(self) -> bool:
        """Whether the chosen Python can import the backend."""
        if self.usesSlicerPython:
            return importlib.util.find_spec(BACKEND_MODULE) is not None
        check = subprocess.run(
            [self.pythonExecutable, "-c", f"import {BACKEND_MODULE}"], capture_output=True, check=False
        )
        return check.returncode == 0

    def install(self) -> None:
        """Install the backend with its dependencies into Slicer's Python (blocking; takes minutes).

        Raises:
            RuntimeError: an external Python is chosen (install into it yourself) or this is not Slicer.
        """
        if not self.usesSlicerPython:
            raise RuntimeError(
                f"install the backend into {self.pythonExecutable} yourself: "
                f"{self.pythonExecutable} -m pip install {BACKEND_DISTRIBUTION}"
            )
        try:
            from slicer import packaging

            packaging.pip_install(backendRequirement())
        except ImportError:
            import slicer.util

            slicer.util.pip_install(backendRequirement())
