"""Tests of rna_engine/runtime/weights.py and `rna-engine models`: registry, checksums, learned loaders
with tiny randomly initialised models built here (never downloaded)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from rna_engine import cli
from rna_engine.errors import InputError
from rna_engine.runtime import weights
from rna_engine.runtime.context import RunContext
from rna_engine.settings import FlowSettings
from rna_engine.stages.appearance import DinoAppearance, make_appearance

needs_torchvision = pytest.mark.skipif(
    not weights.torchvision_available(), reason="torchvision is not usable in this environment"
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "rna_home"
    monkeypatch.setenv("RNA_HOME", str(path))
    return path


@pytest.fixture
def engine_log(caplog: pytest.LogCaptureFixture):
    logger = logging.getLogger("rna_engine")
    propagate = logger.propagate
    logger.propagate = True  # the CLI switches it off when it sets up logging
    with caplog.at_level(logging.INFO, logger="rna_engine"):
        yield caplog
    logger.propagate = propagate


def fake_raft_file(tmp_path: Path, width: int) -> Path:
    """A state dict with RAFT's first feature-encoder weight only (enough to tell variants)."""
    path = tmp_path / f"raft_{width}.pth"
    torch.save({"module.feature_encoder.convnormrelu.0.weight": torch.zeros(width, 3, 7, 7)}, path)
    return path


def tiny_dino_folder(tmp_path: Path, model_type: str = "dinov2") -> tuple[Path, object]:
    transformers = pytest.importorskip("transformers")
    kwargs = dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=4,
        image_size=32,
    )
    torch.manual_seed(0)
    if model_type == "vit":
        model = transformers.ViTModel(transformers.ViTConfig(**kwargs), add_pooling_layer=False)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))
    folder = tmp_path / f"tiny_{model_type}"
    model.save_pretrained(folder)
    return folder, model.eval()


# --------------------------------------------------------------------------------------------
# Registry


def test_install_records_checksum_and_variant(tmp_path: Path, home: Path) -> None:
    source = fake_raft_file(tmp_path, 32)
    record = weights.install("raft", source)
    assert record.variant == "small"
    assert record.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    installed = weights.installed_path(record)
    assert installed.parent == home / "models" / "raft"
    assert installed.read_bytes() == source.read_bytes()
    registry = json.loads((home / "models" / "registry.json").read_text())
    assert registry["models"]["raft"]["sha256"] == record.sha256
    assert weights.read_registry()["raft"] == record
    # reinstalling replaces the entry
    assert weights.install("raft", fake_raft_file(tmp_path, 64)).variant == "large"
    assert len(list((home / "models" / "raft").iterdir())) == 1


def test_install_rejects_what_is_not_raft(tmp_path: Path, home: Path) -> None:
    wrong = tmp_path / "wrong.pth"
    torch.save({"fnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)  # original RAFT layout
    with pytest.raises(InputError, match="not a torchvision RAFT state dict"):
        weights.install("raft", wrong)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a PyTorch weights file"):
        weights.install("raft", text)
    with pytest.raises(InputError, match="must be a file"):
        weights.install("raft", tmp_path)
    assert weights.read_registry() == {}


def test_resolve_reports_missing_and_changed_weights(
    tmp_path: Path, home: Path, engine_log
) -> None:
    assert weights.resolve("raft") is None
    assert "rna-engine models install raft --from FILE" in engine_log.text
    folder, _ = tiny_dino_folder(tmp_path)
    record = weights.install("dino", folder)
    assert weights.resolve("dino") == record
    saved = next(p for p in weights.installed_path(record).iterdir() if p.suffix != ".json")
    saved.write_bytes(saved.read_bytes() + b"\0")
    engine_log.clear()
    assert weights.resolve("dino") is None
    assert "checksum mismatch" in engine_log.text
    assert "rna-engine models install dino --from DIR" in engine_log.text


def test_folder_checksum_covers_names_and_bytes(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.bin").write_bytes(b"12")
    first = weights.checksum(a)
    (a / "x.bin").rename(a / "y.bin")
    assert weights.checksum(a) != first


# --------------------------------------------------------------------------------------------
# DINO


@pytest.mark.parametrize("model_type", ["dinov2", "vit"])
def test_dino_install_and_load_give_the_same_model(
    tmp_path: Path, home: Path, model_type: str
) -> None:
    folder, original = tiny_dino_folder(tmp_path, model_type)
    record = weights.install("dino", folder)
    assert record.variant == model_type
    loaded = weights.load_dino("cpu")
    frames = torch.rand(2, 3, 24, 32)
    appearance = make_appearance(FlowSettings(appearance="dino"), "cpu", weights.resolve("dino"))
    assert isinstance(appearance, DinoAppearance)
    expected = DinoAppearance(original).features(frames)
    torch.testing.assert_close(appearance.features(frames), expected)
    torch.testing.assert_close(DinoAppearance(loaded).features(frames), expected)


def test_dino_install_rejects_other_models(tmp_path: Path, home: Path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match="model_type 'bert'"):
        weights.install("dino", folder)


def test_stage_uses_installed_dino(tmp_path: Path, home: Path, engine_log) -> None:
    from rna_engine.stages.correspondences import compute_correspondences

    folder, _ = tiny_dino_folder(tmp_path)
    weights.install("dino", folder)
    frames = torch.rand(2, 3, 24, 32)
    compute_correspondences(
        frames, torch.ones(24, 32), 0, FlowSettings(appearance="dino"), RunContext()
    )
    assert "appearance dino" in engine_log.text
    assert "not installed" not in engine_log.text


# --------------------------------------------------------------------------------------------
# RAFT (torchvision)


@needs_torchvision
def test_raft_small_install_load_and_flow(tmp_path: Path, home: Path) -> None:
    from torchvision.models.optical_flow import raft_small

    from rna_engine.stages.correspondences import RaftFlow, compute_correspondences

    torch.manual_seed(0)
    original = raft_small(weights=None).eval()
    path = tmp_path / "raft_small.pth"
    torch.save(original.state_dict(), path)
    assert weights.install("raft", path).variant == "small"
    loaded = weights.load_raft("cpu")
    for key, value in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    frames = torch.rand(2, 3, 40, 52)  # padded to 128×128 inside
    settings = FlowSettings(backend="raft", raft_iterations=2)
    result = compute_correspondences(frames, torch.ones(40, 52), 0, settings, RunContext())
    with torch.no_grad():
        pad = torch.nn.functional.pad
        a = pad(frames[:1] * 2 - 1, (0, 76, 0, 88), mode="replicate")
        b = pad(frames[1:] * 2 - 1, (0, 76, 0, 88), mode="replicate")
        expected = original(a, b, num_flow_updates=2)[-1][:, :, :40, :52]
    torch.testing.assert_close(result.fwd[0], expected[0], atol=1e-4, rtol=1e-4)
    backend = RaftFlow(loaded, frames, iterations=2, batch_pairs=1)
    torch.testing.assert_close(backend([(0, 1)])[0], expected[0], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_install_and_list(tmp_path: Path, home: Path, capsys: pytest.CaptureFixture) -> None:
    source = fake_raft_file(tmp_path, 64)
    assert cli.main(["models", "install", "raft", "--from", str(source)]) == 0
    assert "installed raft (large)" in capsys.readouterr().out
    assert cli.main(["models", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["raft"]["installed"] and rows["raft"]["variant"] == "large"
    assert not rows["dino"]["installed"]
    assert cli.main(["models", "list"]) == 0
    assert "rna-engine models install dino --from DIR" in capsys.readouterr().out
    assert cli.main(["models", "install", "raft", "--from", str(tmp_path / "missing.pth")]) == 2
