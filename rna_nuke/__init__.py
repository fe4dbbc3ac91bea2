"""RNA for Nuke: the plugin side (standard library only; runs in Nuke's Python 3.9+).

Only `rna_nuke.glue` imports `nuke`; knob specs, job control, paths and the engine client are
plain modules that the tests drive without Nuke.
"""

from __future__ import annotations

__version__ = "0.1.0"
