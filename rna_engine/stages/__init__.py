"""The build's stages, in pipeline order (docs/architecture.md, "Build stages").

`inputs` (resolve and validate before anything is written) → `correspondences` (flows, chains
to the reference, validity; with `appearance` and `camera`) → `fit` (pre-training, joint fit,
refinement; with `evidence`) → `bake` (plate-resolution passes; with `matte`) → `qc` and
`quality` (the report and the gates). `rna_engine.pipeline` runs them; a stage never imports
`pipeline`, `service`, `cli` or `commands`.
"""
