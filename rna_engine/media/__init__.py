"""What the engine reads, writes and measures on images (docs/cache.md).

`io` (plates and EXRs through OpenImageIO, atomic writes), `colour` (OCIO, the working
encoding), `stmap` (the STMap convention), `cache` (the cache layout, status files, versions),
`lock` (one writer per version folder), `metrics` (per-frame image measures shared by the QC and
the benchmarks). Never imports `model` or `stages`.
"""
