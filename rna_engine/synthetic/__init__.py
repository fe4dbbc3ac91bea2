"""Synthetic shots with exact truth, and their scoring (the demo, tests and benchmarks).

`shots` (plates, ROI, true UV, occlusion and the exact render of an edit; the presets of
`rna-engine synth`), `scoring` (the demo's comp against that exact render). Imports `media`
only; the build's stages never import it.
"""
