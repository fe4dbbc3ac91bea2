"""RNA toolbar (GUI only): the nodes are created as Groups, so scripts render without RNA."""

try:
    import nuke

    _rna_menu = nuke.menu("Nodes").addMenu("RNA")
    for _name in ("RNAAtlasBuild", "RNAApply"):
        _rna_menu.addCommand(_name, f"import rna_nuke.glue as g; g.create_node({_name!r})")
except Exception as _err:  # never break Nuke's start-up over a toolbar
    print(f"RNA: toolbar not installed: {_err}")
