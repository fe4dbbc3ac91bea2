"""`rna-engine models list|install`: learned-backend weights (docs/architecture.md).

Nothing is downloaded: `install` copies a local file or folder under `$RNA_HOME/models/` and
records its checksum; the build uses it when the settings ask for that backend.
"""

from __future__ import annotations

import argparse
import json
import sys

NAME = "models"
HELP = "list or install learned-backend weights (RAFT flow, DINO appearance)"


def populate(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    listing = sub.add_parser("list", help="installed weights and whether they are usable")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    install = sub.add_parser("install", help="install weights from a local file or folder")
    install.add_argument(
        "model",
        choices=("raft", "dino"),
        help="raft: torchvision RAFT state dict (.pth); "
        "dino: transformers save_pretrained folder (ViT or DINOv2)",
    )
    install.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="PATH",
        help="local weights file (raft) or folder (dino)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rna_engine.errors import InputError
    from rna_engine.runtime import weights

    action = getattr(args, "models_command", None)
    if action == "install":
        record = weights.install(args.model, Path(args.source))
        sys.stdout.write(
            f"installed {record.name} ({record.variant}) sha256 {record.sha256}\n"
            f"  {weights.installed_path(record)}\n"
        )
        return 0
    if action != "list":
        raise InputError("models: give an action, `list` or `install raft|dino --from PATH`")
    records = weights.read_registry()
    packages = {"raft": weights.torchvision_available(), "dino": weights.transformers_available()}
    needs = {"raft": "torchvision", "dino": "transformers"}
    rows = []
    for name in weights.MODEL_NAMES:
        record = records.get(name)
        present = record is not None and weights.installed_path(record).exists()
        rows.append(
            {
                "name": name,
                "installed": present,
                "variant": record.variant if record else "",
                "sha256": record.sha256 if record else "",
                "path": str(weights.installed_path(record)) if record else "",
                "package": needs[name],
                "package_available": packages[name],
                "usable": present and packages[name],
            }
        )
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    for row in rows:
        if row["installed"]:
            state = "usable" if row["usable"] else f"needs {row['package']}"
            sys.stdout.write(
                f"{row['name']:<5} {row['variant']:<8} {row['sha256'][:12]}  {state}"
                f"  {row['path']}\n"
            )
        else:
            sys.stdout.write(
                f"{row['name']:<5} not installed  (`{weights.install_command(row['name'])}`)\n"
            )
    return 0
