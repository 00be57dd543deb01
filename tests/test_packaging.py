"""Fast checks of packaging/ (no build here: .ci/run builds and checks the real package)."""

from __future__ import annotations

import ast
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


def test_spec_is_python_and_reads_pyproject():
    source = (PACKAGING / "bottleneck_studio.spec").read_text()
    tree = ast.parse(source)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert {"Analysis", "EXE", "COLLECT", "BUNDLE"} <= names
    assert "metadata()" in source and "launcher.py" in source
    assert '"resources"' in source  # resources/ -> _internal/resources
    for left_out in ("tensorboard", "PySide6.QtWebEngineCore", "pytest", "tkinter"):
        assert f'"{left_out}"' in source


def test_launcher_calls_cli_main():
    source = (PACKAGING / "launcher.py").read_text()
    assert "from app.cli import main" in source and "sys.exit(main())" in source


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


def test_launcher_script_points_into_opt():
    text = (PACKAGING / "linux" / "bottleneck-studio.sh").read_text()
    assert 'exec /opt/bottleneck-studio/bottleneck-studio "$@"' in text


def test_icons_exist():
    from PIL import Image

    with Image.open(ROOT / "resources" / "icon.png") as im:
        assert im.size == (256, 256)
    assert (ROOT / "resources" / "icon.svg").read_text().lstrip().startswith("<svg")


def test_deb_depends_on_qt_system_libraries():
    text = (PACKAGING / "linux" / "make_deb.sh").read_text()
    depends = next(line for line in text.splitlines() if line.startswith("Depends:"))
    for lib in ("libegl1", "libgl1", "libxkbcommon0", "libfontconfig1", "libdbus-1-3",
                "libxcb-cursor0"):
        assert lib in depends
    assert "/opt/$NAME" in text and "--root-owner-group" in text


def test_windows_and_macos_recipes():
    iss = (PACKAGING / "windows" / "bottleneck-studio.iss").read_text()
    assert r"dist\bottleneck-studio\*" in iss and "[UninstallDelete]" in iss
    assert "BUNDLE" in (PACKAGING / "bottleneck_studio.spec").read_text()
    readme = (PACKAGING / "README.md").read_text()
    for word in ("make package", "Inno Setup", "macOS", "--bundle-weights", "--self-test"):
        assert word in readme


def test_ci_builds_and_checks_the_package():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("make package") < ci.index("check_deb.sh")
