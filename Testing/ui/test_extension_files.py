"""The extension's CMake files list what the module ships, so a built extension is complete."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "VoCoSlicer"


def test_module_cmake_lists_every_lib_file_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"\$\{MODULE_NAME\}(Lib/\w+\.py|\.py)", text))
    listed = {"VoCoSlicer" + name for name in listed}
    shipped = {str(p.relative_to(MODULE)) for p in MODULE.glob("*.py")}
    shipped |= {str(p.relative_to(MODULE)) for p in (MODULE / "VoCoSlicerLib").glob("*.py")}
    assert listed == shipped
    resources = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    listed_resources = {r.replace("${MODULE_NAME}", "VoCoSlicer") for r in re.findall(r"(Resources/\S+)", text)}
    assert listed_resources == resources
    assert "WITH_GENERIC_TESTS" in text


def test_extension_cmake_has_the_metadata_the_extension_index_needs():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert re.search(rf"set\({key} \"[^\"]+\"\)", text), key
    assert "add_subdirectory(VoCoSlicer)" in text


# A stand-in for the two Slicer CMake macros the module calls (Slicer's build tree is not on these machines):
# everything else — the module's CMakeLists.txt, BackendFiles.cmake, configure_file and install — is CMake's own.
STANDIN_PROJECT = """cmake_minimum_required(VERSION 3.16)
project(VoCoSlicerInstallCheck NONE)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.12/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.12/qt-scripted-modules)
function(slicerMacroBuildScriptedModule)
endfunction()
add_subdirectory({module} module)
"""


def _backend_files() -> set[str]:
    files = {str(p.relative_to(REPO)) for p in (REPO / "voco_backend").rglob("*.py")}
    files |= {str(p.relative_to(REPO)) for p in (REPO / "voco_backend" / "resources").glob("*.json")}
    return files | {"pyproject.toml"}


def test_the_extension_installs_the_backend_beside_the_module(tmp_path):
    import shutil
    import subprocess
    import sys

    cmake = shutil.which("cmake")
    assert cmake, "cmake is needed to check the extension's install rules (apt-get install cmake)"
    (tmp_path / "src").mkdir()
    project = STANDIN_PROJECT.replace("{module}", MODULE.as_posix())
    (tmp_path / "src" / "CMakeLists.txt").write_text(project)
    build, prefix = tmp_path / "build", tmp_path / "install"
    subprocess.run([cmake, "-S", tmp_path / "src", "-B", build, "-DBUILD_TESTING=OFF"], check=True, capture_output=True)
    subprocess.run([cmake, "--install", build, "--prefix", prefix], check=True, capture_output=True)
    backend = prefix / "lib" / "Slicer-5.12" / "qt-scripted-modules" / "VoCoSlicerBackend"
    installed = {str(p.relative_to(backend)) for p in backend.rglob("*") if p.is_file()}
    assert installed == _backend_files()
    # The installed copy is a working backend on its own (no source tree, no pip install of voco-backend).
    check = subprocess.run(
        [sys.executable, "-c", "import voco_backend.cli, voco_backend.catalogue as c; print(c.__file__)"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(backend), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(backend))


def test_extensions_index_entry_matches_the_cmake_metadata():
    import json

    entry = json.loads((REPO / "VoCoSlicer.json").read_text())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert set(entry) == {
        "$schema",
        "build_dependencies",
        "build_subdirectory",
        "category",
        "scm_revision",
        "scm_url",
        "tier",
    }
    text = (REPO / "CMakeLists.txt").read_text()
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]+)"\)', text).group(1).split()
    assert entry["build_dependencies"] == depends == ["PyTorch"]
    assert entry["category"] == re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', text).group(1)
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', text).group(1)
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", c.strip()) for c in contributors.split(",")), "Name (Org)"
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]
    assert "5.10" in re.search(r'set\(EXTENSION_DESCRIPTION "([^"]+)"\)', text).group(1)
