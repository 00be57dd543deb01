"""Fast checks of packaging/ (no build here: .ci/run builds and checks the real package)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
SCRIPTS = ["build.sh", "check_deb.sh", "linux/make_deb.sh", "linux/postinst", "linux/postrm",
           "linux/bottleneck-studio.sh", "macos/build_app.sh"]


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def test_project_metadata_comes_from_pyproject():
    sys.path.insert(0, str(PACKAGING))
    try:
        import project
    finally:
        sys.path.remove(str(PACKAGING))
    meta = project.metadata()
    assert meta["version"] == _pyproject()["version"]
    assert meta["name"] == _pyproject()["name"] == project.APP_NAME
    out = subprocess.run([sys.executable, str(PACKAGING / "project.py"), "version"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == _pyproject()["version"]


def test_version_agrees_with_app():
    import app

    assert app.__version__ == _pyproject()["version"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_parse(script):
    path = PACKAGING / script
    assert path.is_file()
    subprocess.run(["bash", "-n", str(path)], check=True)
    if shutil.which("sh") and script.startswith("linux/"):
        subprocess.run(["sh", "-n", str(path)], check=True)


def test_desktop_entry():
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(PACKAGING / "linux" / "bottleneck-studio.desktop")
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Exec"].split()[0] == "/usr/bin/bottleneck-studio"
    assert entry["Icon"] == "bottleneck-studio"
    assert entry["Terminal"] == "false"
    assert entry["Categories"].endswith(";")


def test_icons_exist():
    from PIL import Image

    with Image.open(ROOT / "resources" / "icon.png") as im:
        assert im.size == (256, 256)
    assert (ROOT / "resources" / "icon.svg").read_text().lstrip().startswith("<svg")
