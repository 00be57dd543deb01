#!/usr/bin/env bash
# Build BottleneckStudio.app (and a .dmg) on macOS: Python 3.11 from python.org or Homebrew.
#   bash packaging/macos/build_app.sh [--bundle-weights FILE]
# The spec's BUNDLE step writes dist/BottleneckStudio.app with its Info.plist (name, version
# from pyproject.toml, bundle id, icon from resources/icon.icns made here from icon.png).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(uname)" = Darwin ] || { echo "build_app.sh runs on macOS only" >&2; exit 1; }
WEIGHTS=${BUNDLE_WEIGHTS:-}
[ "${1:-}" = --bundle-weights ] && WEIGHTS=${2:?weights file}
PY=${PY:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -e ".[package]"

# icon.icns from icon.png (sips and iconutil ship with macOS)
ICONSET=$(mktemp -d)/icon.iconset
mkdir -p "$ICONSET"
for s in 16 32 128 256; do
    sips -z $s $s resources/icon.png --out "$ICONSET/icon_${s}x${s}.png" >/dev/null
    d=$((s * 2)); sips -z $d $d resources/icon.png --out "$ICONSET/icon_${s}x${s}@2x.png" >/dev/null
done
iconutil -c icns "$ICONSET" -o resources/icon.icns

.venv/bin/python -m PyInstaller --noconfirm packaging/bottleneck_studio.spec
APP=dist/BottleneckStudio.app
if [ -n "$WEIGHTS" ]; then
    mkdir -p "$APP/Contents/Resources/resources/weights"
    cp "$WEIGHTS" "$APP/Contents/Resources/resources/weights/"
fi
QT_QPA_PLATFORM=offscreen "$APP/Contents/MacOS/bottleneck-studio" --self-test
VERSION=$(.venv/bin/python packaging/project.py version)
# Ad-hoc signature so Gatekeeper lets it start locally; sign with a Developer ID and notarize
# (xcrun notarytool) before giving it to others.
codesign --force --deep --sign - "$APP"
hdiutil create -volname "Bottleneck Studio" -srcfolder "$APP" -ov -format UDZO \
    "dist/BottleneckStudio-$VERSION.dmg"
echo "built $APP and dist/BottleneckStudio-$VERSION.dmg"
