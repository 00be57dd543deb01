#!/usr/bin/env bash
# Wrap a one-folder build into a .deb with dpkg-deb (no root needed).
#
#   bash packaging/linux/make_deb.sh BUNDLE_DIR VERSION OUT_DIR
#
# The package installs:
#   /opt/bottleneck-studio/                          the one-folder build, as built
#   /usr/bin/bottleneck-studio                       a launcher script (exec of the above)
#   /usr/share/applications/bottleneck-studio.desktop
#   /usr/share/icons/hicolor/256x256/apps/bottleneck-studio.png (+ scalable .svg if present)
#   /usr/share/doc/bottleneck-studio/copyright
# Nothing else is created at install time, so `dpkg -r bottleneck-studio` removes it all.
# DEB_PACKAGE: the package's name (default bottleneck-studio; bottleneck-studio-gpu for the GPU
# build, which installs the same files and so conflicts with and replaces the CPU package).
# DEB_COMPRESS=gzip|xz|zstd|none (default gzip: every dpkg reads it; xz is ~25% smaller but
# several minutes slower on two cores), DEB_LEVEL (default 6).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUNDLE=${1:?bundle folder}
VERSION=${2:?version}
OUT=${3:?output folder}
NAME=bottleneck-studio
PACKAGE=${DEB_PACKAGE:-$NAME}
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
DEB=$OUT/${PACKAGE}_${VERSION}_${ARCH}.deb
# the two packages install the same files: each conflicts with and replaces the other
if [ "$PACKAGE" = "$NAME" ]; then
    RELATIONS="Conflicts: $NAME-gpu
Replaces: $NAME-gpu
"
    SUMMARY_GPU=""
else
    RELATIONS="Conflicts: $NAME
Replaces: $NAME
Provides: $NAME
"
    SUMMARY_GPU=" This is the GPU build: TensorFlow with its CUDA runtime (cuDNN, cuBLAS, ...)
 bundled; it needs only the NVIDIA driver."
fi

[ -x "$BUNDLE/$NAME" ] || { echo "make_deb: $BUNDLE/$NAME missing" >&2; exit 1; }

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/$NAME-deb.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
PKG=$STAGE/pkg
mkdir -p "$PKG/DEBIAN" "$PKG/opt" "$PKG/usr/bin" "$PKG/usr/share/applications" \
    "$PKG/usr/share/icons/hicolor/256x256/apps" "$PKG/usr/share/doc/$NAME"

# The bundle: hard links when the file system allows it (no 1 GB copy), else a copy.
cp -al "$BUNDLE" "$PKG/opt/$NAME" 2>/dev/null || cp -a "$BUNDLE" "$PKG/opt/$NAME"
find "$PKG/opt/$NAME" -name '__pycache__' -type d -prune -exec rm -rf {} +

install -m 0755 "$HERE/bottleneck-studio.sh" "$PKG/usr/bin/$NAME"
install -m 0644 "$HERE/bottleneck-studio.desktop" "$PKG/usr/share/applications/$NAME.desktop"
if [ -f "$ROOT/resources/icon.png" ]; then
    install -m 0644 "$ROOT/resources/icon.png" "$PKG/usr/share/icons/hicolor/256x256/apps/$NAME.png"
else
    echo "make_deb: resources/icon.png missing" >&2; exit 1
fi
if [ -f "$ROOT/resources/icon.svg" ]; then
    mkdir -p "$PKG/usr/share/icons/hicolor/scalable/apps"
    install -m 0644 "$ROOT/resources/icon.svg" "$PKG/usr/share/icons/hicolor/scalable/apps/$NAME.svg"
fi
cat > "$PKG/usr/share/doc/$NAME/copyright" <<EOF
Bottleneck Studio $VERSION, Apache License 2.0.
The bundled third-party libraries (Python, TensorFlow, Keras, NumPy, Pillow, Qt/PySide6,
pyqtgraph and their dependencies) keep their own licenses; see the *.dist-info folders under
/opt/$NAME/_internal.
EOF
chmod 0644 "$PKG/usr/share/doc/$NAME/copyright"
install -m 0755 "$HERE/postinst" "$PKG/DEBIAN/postinst"
install -m 0755 "$HERE/postrm" "$PKG/DEBIAN/postrm"

SIZE_KB=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
DESCRIPTION=$(cd "$ROOT" && "${PYTHON:-$ROOT/.venv/bin/python}" packaging/project.py description 2>/dev/null \
    || echo "Retrain an image classifier on your own photos")
# Qt's xcb platform plugin needs the X11/GL client libraries of the system; everything else
# (Python, TensorFlow, Qt itself) is inside /opt/bottleneck-studio.
cat > "$PKG/DEBIAN/control" <<EOF
Package: $PACKAGE
Version: $VERSION
Architecture: $ARCH
Maintainer: Bottleneck Studio developers <bottleneck-studio@users.noreply.github.com>
Installed-Size: $SIZE_KB
Depends: libc6 (>= 2.28), libegl1, libgl1, libxkbcommon0, libxkbcommon-x11-0, libfontconfig1, libfreetype6, libdbus-1-3, libglib2.0-0 | libglib2.0-0t64, libx11-6, libx11-xcb1, libxcb1, libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1, libxcb-shape0, libxcb-randr0, libxcb-render-util0, libxcb-xinerama0, libxcb-xkb1, libxcb-image0, libxcb-render0, libxcb-shm0, libxcb-sync1, libxcb-xfixes0
${RELATIONS}Recommends: desktop-file-utils
Section: science
Priority: optional
Homepage: https://github.com/bottleneck-studio/bottleneck-studio
Description: $DESCRIPTION
 Bottleneck Studio computes bottleneck features of your photos once with a frozen
 ImageNet CNN, trains a GoogLeNet-style head with auxiliary outputs on them, and
 exports a Keras/SavedModel/TFLite classifier. Self-contained: Python, TensorFlow
 and Qt are bundled under /opt/$NAME. Check an install with
 "bottleneck-studio --self-test".
EOF
[ -z "$SUMMARY_GPU" ] || printf '%s\n' "$SUMMARY_GPU" >> "$PKG/DEBIAN/control"

mkdir -p "$OUT"
rm -f "$OUT/${PACKAGE}_"*"_${ARCH}.deb"
COMPRESS=${DEB_COMPRESS:-gzip}
LEVEL=${DEB_LEVEL:-6}
echo "building $(basename "$DEB") ($COMPRESS -$LEVEL, $((SIZE_KB / 1024)) MB installed) ..."
if [ "$COMPRESS" = none ]; then
    dpkg-deb --root-owner-group -Znone --build "$PKG" "$DEB" >/dev/null
else
    dpkg-deb --root-owner-group -Z"$COMPRESS" -z"$LEVEL" --build "$PKG" "$DEB" >/dev/null
fi
echo "deb: $DEB ($(du -h "$DEB" | cut -f1))"
