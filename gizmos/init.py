"""RNA plug-in start-up, run by Nuke in every mode (GUI, `nuke -t`, `nuke -x` on the farm).

Makes the `rna_nuke` package (the folder above this one) importable, so the gizmos' Python
buttons and callbacks work on any machine with this folder on `NUKE_PATH`. Nothing UI here:
the toolbar is in menu.py, which Nuke runs only with a GUI. `$RNA_NUKE_ROOT` overrides the
package location.
"""

import os
import sys


def _rna_root():
    root = os.environ.get("RNA_NUKE_ROOT", "")
    if root:
        return root
    try:
        here = os.path.dirname(os.path.abspath(__file__))
    except NameError:  # executed without __file__: find this folder on the plug-in path
        import nuke

        here = next(
            (
                p
                for p in nuke.pluginPath()
                if os.path.isfile(os.path.join(p, "RNAAtlasBuild.gizmo"))
            ),
            "",
        )
    return os.path.dirname(here) if here else ""


_root = _rna_root()
if _root and os.path.isdir(os.path.join(_root, "rna_nuke")) and _root not in sys.path:
    sys.path.insert(0, _root)
