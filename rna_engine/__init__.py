"""RNA engine: fits an ROI neural atlas to a plate and writes the EXR cache Nuke reads.

The engine runs out of process (its own Python, torch, GPU). The Nuke plugin (`rna_nuke`) and the
engine share only the cache directory (docs/cache.md) and the socket protocol (docs/protocol.md).
"""

from __future__ import annotations

__version__ = "0.1.0"

CACHE_FORMAT_VERSION = 1
"""Bumped whenever the cache layout or channel meaning changes (docs/cache.md)."""
