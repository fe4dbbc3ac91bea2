"""Registry of installed learned-backend weights and their loaders (docs/architecture.md, backends).

Weights are never downloaded: the user installs a local file or folder with
`rna-engine models install raft|dino --from PATH`, which copies it under
`$RNA_HOME/models/<name>/` and records its SHA-256 in `$RNA_HOME/models/registry.json`
(`RNA_HOME` defaults to `~/.rna`). A loader returns None, after one log line naming the install
command, when the weights or the optional package (torchvision, transformers) are missing; the
caller then uses the weight-free default backend.

- `raft`: a torchvision RAFT state dict (`raft_large` or `raft_small`, told apart by its shapes),
  saved with `torch.save(model.state_dict(), path)`.
- `dino`: a `transformers` folder written by `save_pretrained` holding a ViT (DINO ViT-S/8) or a
  DINOv2 model (`config.json` + weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rna_engine.errors import InputError
from rna_engine.media.cache import atomic_path

from .context import rna_home

log = logging.getLogger(__name__)

ModelName = Literal["raft", "dino"]
MODEL_NAMES: tuple[str, ...] = ("raft", "dino")
DINO_MODEL_TYPES: tuple[str, ...] = ("vit", "dinov2", "dinov2_with_registers")
_RAFT_FIRST_CONV = "feature_encoder.convnormrelu.0.weight"
_RAFT_VARIANTS = {64: "large", 32: "small"}
"""Output channels of RAFT's first feature-encoder convolution → torchvision variant."""
_HASH_CHUNK = 1 << 20
_FALLBACK = {"raft": "DIS optical flow", "dino": "the weight-free descriptor test"}


def models_dir(home: Path | None = None) -> Path:
    """Folder of installed weights: `<home>/models`."""
    return (home if home is not None else rna_home()) / "models"


def install_command(name: str) -> str:
    """The command that installs `name`'s weights (quoted in messages)."""
    what = "FILE" if name == "raft" else "DIR"
    return f"rna-engine models install {name} --from {what}"


@dataclass(frozen=True)
class ModelRecord:
    """One installed model as `registry.json` stores it."""

    name: str
    """`raft` or `dino`."""
    path: str
    """Installed file or folder, relative to the models folder."""
    sha256: str
    """Checksum of the installed file (a folder: of its files' relative paths and bytes)."""
    variant: str
    """`large`/`small` for RAFT; the transformers `model_type` for DINO."""
    source: str
    """Where it was installed from (informational)."""
    installed: str
    """Install time, ISO 8601 UTC."""


# --------------------------------------------------------------------------------------------
# Registry


def registry_path(home: Path | None = None) -> Path:
    return models_dir(home) / "registry.json"


def read_registry(home: Path | None = None) -> dict[str, ModelRecord]:
    """Installed models by name; an absent registry is empty, an unreadable one an error."""
    path = registry_path(home)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {name: ModelRecord(**entry) for name, entry in data.get("models", {}).items()}
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: unreadable model registry ({err})") from err


def _write_registry(records: dict[str, ModelRecord], home: Path | None) -> None:
    path = registry_path(home)
    data = {"format": 1, "models": {k: asdict(v) for k, v in sorted(records.items())}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def checksum(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative path and bytes, sorted by path)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file is not path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def installed_path(record: ModelRecord, home: Path | None = None) -> Path:
    return models_dir(home) / record.path


# --------------------------------------------------------------------------------------------
# Optional packages


def torchvision_available() -> bool:
    """Whether torchvision imports and works with this torch.

    A CUDA build of torchvision beside a CPU torch fails inside its import with RuntimeError
    (its operators do not register), so any exception counts as absent.
    """
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except Exception as err:  # an optional package: every way it can break means "absent"
        log.debug("torchvision unusable: %s", err)
        return False
    return True


def transformers_available() -> bool:
    """Whether `transformers` imports."""
    try:
        import transformers  # noqa: F401
    except Exception as err:  # an optional package: every way it can break means "absent"
        log.debug("transformers unusable: %s", err)
        return False
    return True


# --------------------------------------------------------------------------------------------
# Validation of what is installed


def _raft_state_dict(path: Path) -> dict[str, Any]:
    """The RAFT state dict in `path`: a plain state dict or one under `state_dict`/`model`,
    DataParallel's `module.` prefix removed."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a foreign file
        raise InputError(f"{path}: not a PyTorch weights file ({err})") from err
    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def raft_variant(state: dict[str, Any], path: Path) -> str:
    """`large` or `small` from the state dict's shapes; InputError for anything else."""
    first = state.get(_RAFT_FIRST_CONV)
    if first is None:
        raise InputError(
            f"{path}: not a torchvision RAFT state dict (no {_RAFT_FIRST_CONV}); save one with "
            "torch.save(torchvision.models.optical_flow.raft_large(...).state_dict(), path)"
        )
    variant = _RAFT_VARIANTS.get(int(first.shape[0]))
    if variant is None:
        raise InputError(
            f"{path}: RAFT feature encoder of width {first.shape[0]} is neither "
            "raft_large (64) nor raft_small (32)"
        )
    return variant


def _dino_model_type(folder: Path) -> str:
    config = folder / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type", "")
    except (OSError, ValueError) as err:
        raise InputError(f"{config}: not a transformers model folder ({err})") from err
    if model_type not in DINO_MODEL_TYPES:
        raise InputError(
            f"{config}: model_type {model_type!r} is not one of "
            f"{', '.join(DINO_MODEL_TYPES)} (DINO ViT or DINOv2)"
        )
    return model_type


# --------------------------------------------------------------------------------------------
# Install


def install(name: str, source: Path, home: Path | None = None) -> ModelRecord:
    """Validate `source`, copy it under the models folder and record its checksum.

    Args:
        name: `raft` (a state-dict file) or `dino` (a `save_pretrained` folder).
        source: local file or folder.
        home: RNA home (default `$RNA_HOME` or `~/.rna`).

    Returns:
        The registry entry. An earlier install of `name` is replaced.
    """
    if name not in MODEL_NAMES:
        raise InputError(f"model {name!r}: not one of {', '.join(MODEL_NAMES)}")
    source = Path(source).expanduser()
    if name == "raft":
        if not source.is_file():
            raise InputError(f"{source}: RAFT weights must be a file")
        variant = raft_variant(_raft_state_dict(source), source)
    else:
        if not source.is_dir():
            raise InputError(f"{source}: DINO weights must be a save_pretrained folder")
        variant = _dino_model_type(source)
        if transformers_available():
            _load_dino_module(source, "cpu")  # fails now, naming the folder, not at build time
        else:
            log.warning(
                "transformers is not installed: the DINO weights are recorded but unused "
                "until it is (pip install transformers)"
            )
    root = models_dir(home)
    target_dir = root / name
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        dest = staging / source.name
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copy2(source, dest)
        digest = checksum(dest)
        old = root / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target_dir.exists():
            os.replace(target_dir, old)
        os.replace(staging, target_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = ModelRecord(
        name=name,
        path=f"{name}/{source.name}",
        sha256=digest,
        variant=variant,
        source=str(source.resolve()),
        installed=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    records = read_registry(home)
    records[name] = record
    _write_registry(records, home)
    log.debug("installed %s (%s) sha256 %s", name, variant, digest[:12])
    return record


# --------------------------------------------------------------------------------------------
# Resolve and load


def resolve(name: str, home: Path | None = None) -> ModelRecord | None:
    """The usable record of `name`, or None after one log line saying why and what to run.

    Usable: registered, present, unchanged since install (checksum), and its package imports.
    """
    package_ok = torchvision_available() if name == "raft" else transformers_available()
    package = "torchvision" if name == "raft" else "transformers"
    try:
        record = read_registry(home).get(name)
    except InputError as err:
        log.warning("%s (run `%s`); using %s", err, install_command(name), _FALLBACK[name])
        return None
    if record is None or not installed_path(record, home).exists():
        log.warning(
            "%s weights are not installed (run `%s`); using %s",
            name.upper(),
            install_command(name),
            _FALLBACK[name],
        )
        return None
    if not package_ok:
        log.warning(
            "%s weights are installed but %s is not importable (pip install %s); using %s",
            name.upper(),
            package,
            package,
            _FALLBACK[name],
        )
        return None
    if checksum(installed_path(record, home)) != record.sha256:
        log.warning(
            "%s weights changed since install (checksum mismatch; run `%s`); using %s",
            name.upper(),
            install_command(name),
            _FALLBACK[name],
        )
        return None
    return record


def load_raft(device: str, home: Path | None = None, record: ModelRecord | None = None) -> Any:
    """The installed torchvision RAFT in eval mode on `device`, or None (logged) when unusable.

    Args:
        device: torch device string.
        home: RNA home.
        record: an already resolved record (skips `resolve`).

    Returns:
        `torchvision.models.optical_flow.RAFT` or None.
    """
    record = record or resolve("raft", home)
    if record is None:
        return None
    from torchvision.models.optical_flow import raft_large, raft_small

    path = installed_path(record, home)
    state = _raft_state_dict(path)
    model = (
        raft_large(weights=None)
        if raft_variant(state, path) == "large"
        else raft_small(weights=None)
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(
            f"{path}: does not fit torchvision's RAFT ({err}); reinstall with "
            f"`{install_command('raft')}`"
        ) from err
    return model.eval().to(device)


def _load_dino_module(folder: Path, device: str) -> Any:
    import transformers

    model_type = _dino_model_type(folder)
    try:
        if model_type == "vit":
            model = transformers.ViTModel.from_pretrained(
                folder, local_files_only=True, add_pooling_layer=False
            )
        else:
            model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(f"{folder}: cannot load the DINO model ({err})") from err
    return model.eval().to(device)


def load_dino(device: str, home: Path | None = None, record: ModelRecord | None = None) -> Any:
    """The installed DINO/DINOv2 `transformers` model in eval mode on `device`, or None (logged).

    Args:
        device: torch device string.
        home: RNA home.
        record: an already resolved record (skips `resolve`).
    """
    record = record or resolve("dino", home)
    if record is None:
        return None
    return _load_dino_module(installed_path(record, home), device)
