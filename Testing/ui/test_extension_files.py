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
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key} \"[^\"]+\"\)", text), key
    assert "add_subdirectory(VoCoSlicer)" in text
