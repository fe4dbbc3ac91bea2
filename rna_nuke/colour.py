"""The plate's colourspace and OCIO config as Nuke sees them, for the build spec (docs/cache.md, colour).

Pure functions over knob values (no `nuke`): `glue` reads the plate Read's `colorspace` and
`raw` knobs and the root's colour management knobs and passes them here. The result goes into
the spec as `settings.ingest.colorspace` / `settings.ingest.ocio_config`, so the engine decodes
the plate the way the Read does (a log DPX plate through its log curve, not the file-type rule).

The config Nuke uses: `$OCIO` when set (Nuke then ignores the project setting), else the root's
`OCIO_config`: `custom` → `customOCIOConfigPath`; Nuke 14+'s built-in `fn-nuke_<name>` configs
are OCIO's `ocio://<name>`; a config shipped with Nuke (`nuke-default`, `aces_1.2`...) is the
`config.ocio` under `<Nuke folder>/plugins/OCIOConfigs/configs/<name>/` when it exists. Legacy
colour management (`colorManagement` Nuke) uses `nuke-default`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

SCENE_LINEAR_ROLE = "scene_linear"
_DEFAULT = re.compile(r"^\s*default\s*(?:\((?P<name>.*)\))?\s*$")
_NUKE_LINEAR = ("linear",)
"""Nuke's legacy names of its working space; the engine's config knows it as the role."""


def config_path(root: Mapping[str, str], env: Mapping[str, str], nuke_dir: str = "") -> str:
    """The OCIO config the script's colour management uses ('' when it cannot be found).

    Args:
        root: root knob values `colorManagement`, `OCIO_config`, `customOCIOConfigPath`.
        env: the environment (`OCIO`).
        nuke_dir: the folder of the Nuke executable (`os.path.dirname(nuke.EXE_PATH)`).
    """
    if env.get("OCIO", "").strip():
        return env["OCIO"].strip()
    management = str(root.get("colorManagement", "") or "").strip()
    name = str(root.get("OCIO_config", "") or "").strip()
    if management == "Nuke" or not name:
        name = "nuke-default"
    if name == "custom":
        return str(root.get("customOCIOConfigPath", "") or "").strip().replace("\\", "/")
    if name.startswith("ocio://") or name.endswith(".ocio"):
        return name.replace("\\", "/")
    if name.startswith("fn-nuke_"):
        return "ocio://" + name[len("fn-nuke_") :]
    if nuke_dir:
        shipped = os.path.join(nuke_dir, "plugins", "OCIOConfigs", "configs", name, "config.ocio")
        if os.path.isfile(shipped):
            return shipped.replace("\\", "/")
    return ""


def read_colorspace(value: str, raw: bool, working_space: str = "") -> str:
    """The colourspace the engine decodes a Read's files from ('' = the engine's auto rule).

    Args:
        value: the Read's `colorspace` knob (`ACES - ACEScct`, `default (linear)`, `default`).
        raw: the Read's `raw` knob: Nuke takes the file's values as they are, i.e. as the
            working space.
        working_space: the root's `workingSpaceLUT` ('' = the `scene_linear` role).
    """
    if raw:
        return working_space.strip() or SCENE_LINEAR_ROLE
    text = str(value or "").strip()
    m = _DEFAULT.match(text)
    if m:
        text = (m.group("name") or "").strip()
    return text


def plate_colour(colorspace: str, config: str) -> dict[str, str]:
    """`settings.ingest` entries for the plate ({} when the Read leaves it to the engine).

    Without a config the engine uses its own (`$OCIO` or its pinned built-in): Nuke's legacy
    `linear` then becomes the `scene_linear` role, which every config has.
    """
    if not colorspace:
        return {}
    if not config and colorspace in _NUKE_LINEAR:
        colorspace = SCENE_LINEAR_ROLE
    out = {"colorspace": colorspace}
    if config:
        out["ocio_config"] = config
    return out
