"""`rna_nuke.colour` and the plate colour `glue` puts into the build spec (docs/cache.md, colour)."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rna_nuke import colour

ROOT_OCIO = {"colorManagement": "OCIO", "OCIO_config": "aces_1.2", "customOCIOConfigPath": ""}


def _nuke_install(tmp_path: Path) -> Path:
    """A folder laid out like a Nuke install with its shipped aces_1.2 config."""
    config = tmp_path / "Nuke15.1v2" / "plugins" / "OCIOConfigs" / "configs" / "aces_1.2"
    config.mkdir(parents=True)
    (config / "config.ocio").write_text("ocio_profile_version: 1\n")
    return tmp_path / "Nuke15.1v2"


def test_config_path_follows_nukes_precedence(tmp_path: Path) -> None:
    nuke_dir = str(_nuke_install(tmp_path))
    shipped = f"{Path(nuke_dir).as_posix()}/plugins/OCIOConfigs/configs/aces_1.2/config.ocio"
    assert colour.config_path(ROOT_OCIO, {}, nuke_dir) == shipped
    assert colour.config_path(ROOT_OCIO, {"OCIO": "/show/config.ocio"}, nuke_dir) == (
        "/show/config.ocio"
    )  # $OCIO wins over the project setting
    custom = {**ROOT_OCIO, "OCIO_config": "custom", "customOCIOConfigPath": "/s/c.ocio"}
    assert colour.config_path(custom, {}, nuke_dir) == "/s/c.ocio"
    builtin = {**ROOT_OCIO, "OCIO_config": "fn-nuke_cg-config-v1.0.0_aces-v1.3_ocio-v2.1"}
    assert colour.config_path(builtin, {}) == "ocio://cg-config-v1.0.0_aces-v1.3_ocio-v2.1"
    assert colour.config_path(ROOT_OCIO, {}, "") == ""  # not found: the engine's own config
    legacy = {"colorManagement": "Nuke", "OCIO_config": "aces_1.2"}
    assert colour.config_path(legacy, {}, nuke_dir) == ""  # nuke-default is not in this install


def test_read_colorspace() -> None:
    assert colour.read_colorspace("ACES - ACEScct", False) == "ACES - ACEScct"
    assert colour.read_colorspace("default (Cineon)", False) == "Cineon"
    assert colour.read_colorspace("default", False) == ""  # the engine's file-type rule
    assert colour.read_colorspace("Cineon", True, "ACES - ACEScg") == "ACES - ACEScg"  # raw
    assert colour.read_colorspace("Cineon", True) == "scene_linear"
    assert colour.plate_colour("", "/c.ocio") == {}
    assert colour.plate_colour("linear", "") == {"colorspace": "scene_linear"}
    assert colour.plate_colour("Cineon", "/c.ocio") == {
        "colorspace": "Cineon",
        "ocio_config": "/c.ocio",
    }


@pytest.fixture
def build(fake_nuke: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    nuke = fake_nuke
    monkeypatch.delenv("OCIO", raising=False)
    monkeypatch.setattr(nuke, "EXE_PATH", str(_nuke_install(tmp_path) / "Nuke15.1"))
    nuke.root()["name"].setValue(str(tmp_path / "shots" / "comp.nk"))
    plate = nuke.nodes.Read(file=str(tmp_path / "plates" / "sh010.####.dpx"), first=1, last=9)
    plate["colorspace"].setValue("ACES - ACEScct")
    from rna_nuke import glue

    node = glue.create_node("RNAAtlasBuild")
    node.setInput(0, plate)
    node.setInput(1, nuke.nodes.Roto())
    node["reference_frame"].setValue(5)
    return nuke, glue, node, plate


def test_the_reads_colorspace_and_the_root_config_reach_the_spec(build: Any) -> None:
    nuke, glue, node, plate = build
    nuke.root()["colorManagement"].setValue("OCIO")
    nuke.root()["OCIO_config"].setValue("aces_1.2")
    spec = glue.prepare_build(node).spec
    config = os.path.dirname(nuke.EXE_PATH).replace("\\", "/")
    assert spec["settings"]["ingest"] == {
        "colorspace": "ACES - ACEScct",
        "ocio_config": f"{config}/plugins/OCIOConfigs/configs/aces_1.2/config.ocio",
    }
    from rna_engine.settings import spec_from_dict

    assert spec_from_dict(spec).settings.ingest.colorspace == "ACES - ACEScct"  # the engine's key
    node["engine_settings"].setValue('{"ingest": {"colorspace": "ACES - ACEScg"}}')
    assert glue.prepare_build(node).spec["settings"]["ingest"]["colorspace"] == "ACES - ACEScg"


def test_a_rendered_plate_is_in_the_working_space(build: Any) -> None:
    nuke, glue, node, plate = build
    nuke.root()["colorManagement"].setValue("OCIO")
    nuke.root()["OCIO_config"].setValue("custom")
    nuke.root()["customOCIOConfigPath"].setValue("[file dirname [value root.name]]/show.ocio")
    nuke.root()["workingSpaceLUT"].setValue("ACES - ACEScg")
    grade = nuke.nodes.Grade()
    grade.setInput(0, plate)
    node.setInput(0, grade)
    spec = glue.prepare_build(node).spec
    script_dir = os.path.dirname(nuke.root()["name"].value()).replace("\\", "/")
    assert spec["settings"]["ingest"] == {
        "colorspace": "ACES - ACEScg",
        "ocio_config": f"{script_dir}/show.ocio",
    }


def test_a_default_read_leaves_the_colour_to_the_engine(build: Any) -> None:
    nuke, glue, node, plate = build
    plate["colorspace"].setValue("default")
    assert "ingest" not in glue.prepare_build(node).spec["settings"]
