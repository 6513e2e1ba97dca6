"""The model catalogue as data: schema validation, resolution of names, the user's registered models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from voco_backend import catalogue
from voco_backend.cache import CACHE_ENV
from voco_backend.cli import main
from voco_backend.data.recipe import Recipe
from voco_backend.errors import DataError, UsageError
from voco_backend.segmentation.labels import SegmentClass
from voco_backend.segmentation.model_folder import ModelInfo, register_model_folder, write_model_info

RESOURCES = Path(__file__).resolve().parents[2] / "voco_backend" / "resources"
# The authors' host (VOCO.md §7): sha256 (Git LFS) and exact bytes; VoCo_B_SSL_head's size is not published.
PUBLISHED = {
    "VoCo_B_SSL_head": (48, "06664b629e73a25aacfaf9e0dd3f2df36f93a9f60f0bf8cf4d8b5cc95cd01298", None),
    "VoCo_L_SSL_head": (96, "47d3646523d93c42d6ed2ada3fc20735af5e414f940b10b910a38ac8db025aec", 855_586_916),
    "VoCo_H_SSL_head": (192, "a88216d079191bf7c81319ab468e0f45a0c2e7d3eb46f5964f34a3e1e6a6f4a3", 3_396_694_308),
    "VoComni_B": (48, "b3b3e2710eb5c8f08f0e0b54eb0791537f70efc95f725b83d8bb0389ab0dc4a6", 298_654_672),
    "VoComni_L": (96, "03c43e26df671b1036cae55d0fc0e09c1d837b1f1e09928ac62f6fdc2672f63a", 1_169_173_584),
    "VoComni_H": (192, "6863af6b5a1f05a2650c867418bb25b30dc951ae63153caa317aac14632bb47a", 4_650_986_176),
}
# VoComni/VoComni.json of Luffy03/Large-Scale-Medical (VOCO.md §7): output channel i = label i.
VOCOMNI_CLASSES = [
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal and splenic veins",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
    "liver tumour",
    "pancreas tumour",
    "kidney tumour",
    "COVID-19 lesion",
    "colon",
    "colon cancer",
    "lung cancer",
]
TERMINOLOGY = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "slicer"
    / "v5.12.3"
    / "terminologies"
    / "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json"
)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder and the packaged catalogue."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(catalogue.CATALOGUE_ENV, raising=False)
    monkeypatch.delenv(catalogue.BASE_URL_ENV, raising=False)
    return tmp_path / "cache"


def packaged() -> dict:
    return json.loads((RESOURCES / "models.json").read_text())


def make_model_dir(folder: Path, name: str | None = None) -> Path:
    """A model folder as finetune writes it, named ``name`` (default: the folder's name), one class ``liver``."""
    info = ModelInfo(
        name=name or folder.name,
        model_size="tiny",
        classes=[SegmentClass("liver", 1, (1.0, 0.0, 0.0))],
        recipe=Recipe(),
        roi=(64, 64, 64),
    )
    folder.mkdir(parents=True)
    write_model_info(folder, info)
    (folder / "model.pt").write_bytes(b"weights")
    return folder


def test_packaged_catalogue_matches_the_published_weights():
    jsonschema.Draft202012Validator.check_schema(json.loads((RESOURCES / "models.schema.json").read_text()))
    entries = {e.name: e for e in catalogue.load_catalogue()}

    assert set(entries) == set(PUBLISHED)  # VoCo_10k is not on the authors' host: removed
    for name, (feature_size, sha256, size) in PUBLISHED.items():
        entry = entries[name]
        assert (entry.feature_size, entry.checksum, entry.bytes) == (feature_size, ("sha256", sha256), size)
        assert entry.url == f"https://huggingface.co/Luffy503/VoCo/resolve/main/{name}.pt"
        assert entry.file == f"{name}.pt"
        assert entry.license == "Apache-2.0"
        assert entry.merge_order == "monai1.3"
        assert entry.kind == ("segmentation" if name.startswith("VoComni") else "encoder")
        assert entry.recipe["window"] == [-175, 250] and entry.recipe["spacing"] == [1.5, 1.5, 1.5]
    for name in ("VoComni_B", "VoComni_L", "VoComni_H"):
        assert entries[name].out_channels == 21
        assert entries[name].recipe == {
            "spacing": [1.5, 1.5, 1.5],
            "window": [-175, 250],
            "roi": [96, 96, 96],
            "overlap": 0.75,
            "blend": "constant",
        }
        assert [(c["value"], c["name"]) for c in entries[name].classes] == list(enumerate(VOCOMNI_CLASSES, 1))


def test_vocomni_codes_are_slicer_terminology_entries():
    """Every standard code of a VoComni class is a type (and modifier) that Slicer's own terminology lists."""
    if not TERMINOLOGY.is_file():
        pytest.fail(f"Slicer terminology {TERMINOLOGY} is missing (../shared/slicer)")
    data = json.loads(TERMINOLOGY.read_text())
    listed = {}
    for category in data["SegmentationCodes"]["Category"]:
        for kind in category.get("Type", []):
            modifiers = {m["CodeValue"]: m["CodeMeaning"] for m in kind.get("Modifier", [])}
            listed[(category["CodeValue"], kind["CodeValue"])] = (kind["CodeMeaning"], modifiers)
    coded = [c for c in catalogue.get_entry("VoComni_B").classes if "code" in c]
    assert len(coded) == 12  # the organs; vessels without a Slicer entry and the lesions carry no code
    for cls in coded:
        code = cls["code"]
        meaning, modifiers = listed[(code["category"][0], code["type"][0])]
        assert code["type"][2] == meaning and code["type"][1] == "SCT"
        if "modifier" in code:
            assert modifiers[code["modifier"][0]] == code["modifier"][2]
            assert cls["name"].startswith(code["modifier"][2].lower())


BREAKAGES = {
    "md5 of the wrong length": lambda m: m[0]["checksum"].update(value="abc"),
    "unknown checksum algorithm": lambda m: m[0]["checksum"].update(algorithm="sha1"),
    "non-http url": lambda m: m[0].update(url="ftp://example.org/x.pt"),
    "unknown kind": lambda m: m[0].update(kind="classifier"),
    "segmentation without recipe": lambda m: m[4].pop("recipe"),
    "segmentation without classes": lambda m: m[3].pop("classes"),
    "segmentation recipe without overlap": lambda m: m[3]["recipe"].pop("overlap"),
    "encoder with classes": lambda m: m[0].update(classes=m[3]["classes"]),
    "size not a whole number": lambda m: m[1].update(bytes=1.5),
    "unknown merge order": lambda m: m[1].update(merge_order="monai1.4"),
    "encoder with out_channels": lambda m: m[0].update(out_channels=3),
    "missing citation": lambda m: m[1].pop("citation"),
    "unknown field": lambda m: m[2].update(weights="x"),
    "duplicate name": lambda m: m[1].update(name=m[0]["name"]),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_catalogue_fails_validation(breakage, tmp_path):
    data = copy.deepcopy(packaged())
    catalogue.load_catalogue(_write(tmp_path / "ok.json", data))
    BREAKAGES[breakage](data["models"])
    path = _write(tmp_path / "broken.json", data)

    with pytest.raises(DataError, match="invalid model catalogue") as info:
        catalogue.load_catalogue(path)
    assert info.value.file == str(path)


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_unreadable_catalogue_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "models.json"
    path.write_text("{not json")
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(path))
    with pytest.raises(DataError, match="not valid JSON") as info:
        catalogue.load_catalogue()
    assert info.value.file == str(path)


def test_catalogue_override_and_mirror(tmp_path, monkeypatch):
    data = packaged()
    data["models"] = data["models"][:1]
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(_write(tmp_path / "site.json", data)))
    assert [e.name for e in catalogue.load_catalogue()] == ["VoCo_B_SSL_head"]

    entry = catalogue.get_entry("VoCo_B_SSL_head")
    assert entry.download_url == entry.url
    monkeypatch.setenv(catalogue.BASE_URL_ENV, "https://mirror.example/voco/")
    assert entry.download_url == "https://mirror.example/voco/VoCo_B_SSL_head.pt"
    with pytest.raises(UsageError, match="not in the model catalogue; known: VoCo_B_SSL_head"):
        catalogue.get_entry("VoComni_B")


def test_cache_dir_defaults_to_the_home_cache(monkeypatch, tmp_path, isolated_cache):
    assert catalogue.cache_dir() == isolated_cache
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert catalogue.cache_dir() == tmp_path / ".cache" / "voco_backend"


def test_resolve_model(tmp_path, isolated_cache):
    existing = tmp_path / "my_encoder.pt"
    existing.write_bytes(b"x")
    assert catalogue.resolve_model(str(existing)) == catalogue.ResolvedModel("file", existing)
    assert catalogue.resolve_model(tmp_path) == catalogue.ResolvedModel("folder", tmp_path)

    with pytest.raises(UsageError, match="run `voco-backend models fetch VoCo_B_SSL_head`"):
        catalogue.resolve_model("VoCo_B_SSL_head")
    cached = isolated_cache / "models" / "VoCo_B_SSL_head.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    resolved = catalogue.resolve_model("VoCo_B_SSL_head")
    assert (resolved.kind, resolved.weights, resolved.entry.name) == ("file", cached, "VoCo_B_SSL_head")

    with pytest.raises(UsageError, match="neither an existing file or folder nor a known model"):
        catalogue.resolve_model("VoCo_X")
    with pytest.raises(UsageError, match="neither"):
        catalogue.resolve_model(str(tmp_path / "typo.pt"))


def test_register_and_resolve_a_user_model(tmp_path):
    folder = make_model_dir(tmp_path / "liver", "liver_v1")

    model = register_model_folder(folder)

    assert (model.name, model.path) == ("liver_v1", folder.resolve())
    assert [(c["name"], c["value"]) for c in model.classes] == [("liver", 1)]
    assert catalogue.user_models() == [model]
    resolved = catalogue.resolve_model("liver_v1")
    assert (resolved.kind, resolved.path) == ("folder", folder.resolve())
    assert resolved.weights == folder.resolve() / "model.pt"
    (folder / "model.pt").unlink()
    assert catalogue.user_models()[0].available is False
    with pytest.raises(DataError, match="is gone"):
        catalogue.resolve_model("liver_v1")


def test_register_refuses_bad_folders(tmp_path):
    with pytest.raises(DataError, match="model folder not found"):
        register_model_folder(tmp_path / "absent")
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.json").write_text("{}")
    with pytest.raises(DataError, match=r"model\.pt is missing") as info:
        register_model_folder(half)
    assert info.value.file == str(half.resolve())
    clash = make_model_dir(tmp_path / "clash", "VoComni_B")
    with pytest.raises(UsageError, match="belongs to a catalogue model"):
        register_model_folder(clash)
    assert catalogue.user_models() == []


def test_register_refuses_a_broken_model_json_in_one_line(tmp_path, capsys):
    """A folder whose model.json cannot be applied is refused when registered, not later at segment time."""
    folder = make_model_dir(tmp_path / "broken")
    document = json.loads((folder / "model.json").read_text())
    document["roi"] = [64, 64]
    (folder / "model.json").write_text(json.dumps(document))

    assert main(["models", "register", str(folder)]) == 3
    lines = capsys.readouterr().out.splitlines()
    error = json.loads(lines[-1])
    assert error["event"] == "error" and error["exit_code"] == 3
    assert error["file"] == str(folder.resolve() / "model.json")
    assert "roi" in error["message"] and "fine-tune the model again" in error["message"]
    assert "\n" not in error["message"]
    assert catalogue.user_models() == []


def test_models_command_lists_and_registers(tmp_path, capsys):
    folder = make_model_dir(tmp_path / "spleen_model")

    assert main(["models", "register", str(folder)]) == 0
    registered = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert registered["name"] == "spleen_model" and registered["path"] == str(folder.resolve())

    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SOURCE", "STATUS", "DETAILS"]
    assert any(line.startswith("spleen_model") and "registered" in line for line in lines)
    rows = json.loads(lines[-1])["models"]
    assert [r["name"] for r in rows] == [*PUBLISHED, "spleen_model"]
    assert not any(r["available"] for r in rows if r["source"] == "catalogue")

    assert main(["models", "list", "NAME"]) == 2
    assert main(["models", "register"]) == 2
    assert "needs a MODEL_DIR" in capsys.readouterr().out
