"""rna_engine.settings: presets, validation by name, spec round trip."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from rna_engine.errors import InputError
from rna_engine.settings import BuildSpec, build_settings, load_spec, spec_from_dict


def test_presets_are_overrides_of_defaults() -> None:
    draft, standard = build_settings("draft"), build_settings("standard")
    assert draft.fit.iterations < standard.fit.iterations
    assert draft.ingest.working_long_side == 384
    assert standard.fit.weights.rigidity == 0.002  # the authors' weights stay the defaults
    tuned = build_settings("draft", {"fit": {"iterations": 10}})
    assert tuned.fit.iterations == 10 and tuned.fit.batch_size == draft.fit.batch_size


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"fit": {"iterations": 0}}, "fit.iterations"),
        ({"fit": {"itrations": 5}}, "fit.itrations"),
        ({"fit": {"batch_size": "big"}}, "fit.batch_size"),
        ({"flow": {"backend": "magic"}}, "flow.backend"),
        ({"fit": {"reference_fraction": 0.6, "roi_fraction": 0.5}}, "fit.roi_fraction"),
    ],
)
def test_bad_settings_name_the_field(overrides: dict, name: str) -> None:
    with pytest.raises(InputError, match=rf"setting {name}"):
        build_settings("standard", overrides)


def test_spec_round_trip_through_build_json(tmp_path: Path) -> None:
    spec = spec_from_dict(
        {
            "plate": "plate/p.####.exr",
            "roi": "roi.exr",
            "reference_frame": 5,
            "settings": {"preset": "draft", "fit": {"iterations": 7}},
        }
    )
    path = tmp_path / "build.json"
    path.write_text(json.dumps(asdict(spec)))
    again = load_spec(path)
    assert again.settings == spec.settings
    assert again.root == str(tmp_path)
    assert again.plate == str(tmp_path / "plate/p.####.exr")  # relative to the spec's folder


def test_spec_rejects_bad_names() -> None:
    with pytest.raises(InputError, match="setting name"):
        BuildSpec(plate="p", roi="r", reference_frame=1, name="../x")
    with pytest.raises(InputError, match="not readable|not found"):
        load_spec(Path("no/such/build.json"))
