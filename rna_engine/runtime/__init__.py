"""How a job runs: what travels with it and what it runs on (docs/architecture.md).

`context` (`RunContext`: device, reporter, cancel token, work folder, seed), `progress`
(events, sinks, the ETA, the cancel token), `pool` (bounded I/O thread pools), `gpu_memory`
(peak memory per stage), `weights` (the registry of installed learned-backend weights; never
downloaded). Imports only `errors`, `settings` and `media`.
"""
