"""The learned model: the RNA fields and their losses (docs/method.md §1–§2).

`fields` (hash grids, T, A, M, S), `losses` (the equations of §2), `kernels/` (fast hash-grid
backends behind `make_hash_grid`, each checked against the PyTorch reference in `fields`),
`stmap_torch` (STMap lookups on the device). Pure tensor math: no files, no settings lookups
beyond the dataclasses passed in, no device choice; never imports `stages`.
"""
