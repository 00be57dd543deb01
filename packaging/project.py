"""Name, version and paths of the project, read from pyproject.toml (spec and scripts share it)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"
APP_NAME = "bottleneck-studio"  # executable, .deb package and install folder
DISPLAY_NAME = "Bottleneck Studio"
BUNDLE_ID = "org.bottleneckstudio.BottleneckStudio"


def metadata(pyproject: Path = ROOT / "pyproject.toml") -> dict:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    return {"name": project["name"], "version": project["version"],
            "description": project.get("description", "")}


def icon(kind: str = "png") -> Path | None:
    """resources/icon.<kind> if present."""
    path = RESOURCES / f"icon.{kind}"
    return path if path.is_file() else None


if __name__ == "__main__":  # `python packaging/project.py version` for the shell scripts
    print(metadata()[sys.argv[1] if len(sys.argv) > 1 else "version"])
