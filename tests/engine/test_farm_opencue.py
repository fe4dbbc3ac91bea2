"""OpenCue bundles: the job-spec XML from opencue-pyoutline, against golden files and the Cue
spec DTD (cjsl-1.15), and its chunks against Cuebot's frame tokens.

Regenerate the golden files after a reviewed change with `RNA_REGEN_GOLDEN=1 pytest ...`.
"""

from __future__ import annotations

import os
import re
from xml.etree import ElementTree

import farm_golden
import pytest

from rna_engine.farm import write_bundle
from rna_engine.farm.job import FarmJob, FrameRange

opencue = pytest.importorskip("rna_engine.farm.opencue")
pytest.importorskip("outline")

GOLDEN, SHOT = farm_golden.GOLDEN, farm_golden.SHOT

# Content models of cjsl-1.15.dtd (OpenCue cuebot/src/main/resources/public/dtd): each element's
# children in order, with their DTD quantifier.
DTD = {
    "spec": "facility? dept? show shot user email? uid? job* depends*",
    "job": "paused? priority? maxretries? maxcores? maxgpus? autoeat? localbook? os? env* layers?",
    "layers": "layer+",
    "layer": "cmd range chunk cores? threadable? memory? gpus? gpu? gpu_memory? timeout? "
    "timeout_llu? tags? limits? env* services? outputs*",
    "env": "key*",
    "services": "service+",
    "outputs": "output*",
    "depends": "depend*",
    "depend": "depjob deplayer? depframe? onjob onlayer? onframe?",
}
NMTOKEN = re.compile(r"^[A-Za-z0-9._:-]+$")


FRAMES = farm_golden.FRAMES


def golden_job(kind: str, frames: FrameRange = FRAMES) -> FarmJob:
    return farm_golden.golden_job(kind, frames, user="artist", show="demo")


@pytest.fixture(autouse=True)
def _no_site_overrides(monkeypatch):
    for name in ("RENDER_TO", "FACILITY", "OL_OS", "OL_TAG_OVERRIDE"):
        monkeypatch.delenv(name, raising=False)


def assert_golden(case: str, name: str, text: str) -> None:
    path = GOLDEN / case / name
    if os.environ.get("RNA_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"{path} is missing: regenerate with RNA_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs (review, then RNA_REGEN_GOLDEN=1)"


def check_content_model(element: ElementTree.Element) -> None:
    """Raise AssertionError when `element`'s children break its DTD content model."""
    model = DTD.get(element.tag)
    children = [child.tag for child in element]
    if model is not None:
        i = 0
        for item in model.split():
            name, quant = (item[:-1], item[-1]) if item[-1] in "?*+" else (item, "")
            count = 0
            while i < len(children) and children[i] == name:
                i += 1
                count += 1
            assert count >= (1 if quant in ("", "+") else 0), f"<{element.tag}> lacks <{name}>"
            assert count <= (1 if quant in ("", "?") else count), f"<{element.tag}>: many <{name}>"
        assert i == len(children), f"<{element.tag}>: unexpected <{children[i]}> in {children}"
    for child in element:
        check_content_model(child)


def layers(root: ElementTree.Element) -> dict[str, ElementTree.Element]:
    return {layer.get("name"): layer for layer in root.iter("layer")}


def cue_chunks(layer: ElementTree.Element, fixed_cuebot: bool) -> list[tuple[int, int]]:
    """(#FRAME_START#, #FRAME_END#) of each task of a `first-last` layer, as Cuebot fills them.

    Cuebot before PR #1467 set #FRAME_END# = start + chunk - 1 even past the range (issue #1129).
    """
    first, _, last = layer.findtext("range").partition("-")
    lo, hi = int(first), int(last or first)
    chunk = int(layer.findtext("chunk"))
    return [
        (s, min(s + chunk - 1, hi) if fixed_cuebot else s + chunk - 1)
        for s in range(lo, hi + 1, chunk)
    ]


@pytest.mark.parametrize("kind", ["nuke", "apply"])
def test_spec_matches_the_golden_file(tmp_path, kind):
    files = write_bundle("opencue", golden_job(kind), tmp_path)
    assert sorted(p.name for p in files) == ["job.json", "opencue_job.xml"]
    text = (tmp_path / "opencue_job.xml").read_text()
    # The submitting uid is the only machine-dependent value.
    text = re.sub(r"<uid>\d+</uid>", "<uid>UID</uid>", text)
    assert_golden(f"opencue_{kind}", "opencue_job.xml", text)


@pytest.mark.parametrize("kind", ["nuke", "apply"])
def test_spec_follows_the_cue_dtd(kind):
    text = opencue.spec_xml(golden_job(kind))
    assert text.startswith('<?xml version="1.0"?>\n<!DOCTYPE spec PUBLIC "SPI Cue  Specification')
    assert "cjsl-1.15.dtd" in text.splitlines()[1]
    root = ElementTree.fromstring(text.split("\n", 2)[2])
    check_content_model(root)
    job = root.find("job")
    assert NMTOKEN.match(job.get("name"))
    for layer in root.iter("layer"):
        assert NMTOKEN.match(layer.get("name")) and layer.get("type") in ("Render", "Util", "Post")
    assert [k.get("name") for k in job.find("env")] == ["NUKE_PATH"]
    assert job.find("env/key").text == "/studio/nuke/plugins"


def test_gpu_build_layer_and_chunked_render_layers_depend_on_it():
    root = ElementTree.fromstring(opencue.spec_xml(golden_job("nuke")).split("\n", 2)[2])
    by_name = layers(root)
    assert list(by_name) == ["BuildAtlas", "Render", "Render_tail"]
    build = by_name["BuildAtlas"]
    assert build.findtext("tags") == "gpu"
    assert build.findtext("chunk") == "1" and "-" not in build.findtext("range")
    assert build.findtext("cmd") == (
        f"/opt/rna/bin/python -m rna_engine build --spec {SHOT}/build.json --farm"
    )
    render = by_name["Render"]
    assert render.findtext("cmd") == (
        f"nuke -x -F #FRAME_START#-#FRAME_END# -X Write_RNA {SHOT}/comp/sh010_comp_v012.nk"
    )
    depends = [
        (d.get("type"), d.findtext("deplayer"), d.findtext("onlayer")) for d in root.iter("depend")
    ]
    assert depends == [
        ("LAYER_ON_LAYER", "Render", "BuildAtlas"),
        ("LAYER_ON_LAYER", "Render_tail", "BuildAtlas"),
    ]


@pytest.mark.parametrize(
    ("frames", "chunk"), [((1001, 1095), 10), ((1001, 1100), 10), ((1, 7), 10), ((5, 5), 3)]
)
@pytest.mark.parametrize("fixed_cuebot", [False, True])
def test_render_tasks_cover_the_range_once_on_any_cuebot(frames, chunk, fixed_cuebot):
    job = golden_job("apply", FrameRange(*frames))
    job = FarmJob(**{**job.__dict__, "chunk": chunk})
    root = ElementTree.fromstring(opencue.spec_xml(job).split("\n", 2)[2])
    rendered: list[int] = []
    for name, layer in layers(root).items():
        if name.startswith("Render"):
            assert "--frames #FRAME_START#-#FRAME_END#" in layer.findtext("cmd")
            for start, end in cue_chunks(layer, fixed_cuebot):
                assert end - start + 1 <= chunk
                rendered += range(start, end + 1)
    assert sorted(rendered) == list(range(frames[0], frames[1] + 1))


def test_commands_are_shell_quoted():
    cmd = layers(ElementTree.fromstring(opencue.spec_xml(golden_job("apply")).split("\n", 2)[2]))
    text = cmd["Render"].findtext("cmd")
    assert f"--atlas '{SHOT}/paint/atlas_paint v2.exr'" in text
    assert "--build /shows/demo/sh010/rna/sh010/v003 " in text  # nothing to quote
    assert "--plate '/shows/demo/sh010/plate/sh010.####.exr'" in text
    assert text.endswith(" --frames #FRAME_START#-#FRAME_END#")  # Cuebot's token stays bare
