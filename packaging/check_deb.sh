#!/usr/bin/env bash
# Check the built .deb: its metadata and file list, then unpack it into a scratch root
# (dpkg -x, no root needed, the system untouched) and run the frozen app from there:
# --version, --self-test (offscreen) and the time the frozen program takes to start.
#
#   bash packaging/check_deb.sh [PATH.deb]      (default: dist/bottleneck-studio_<version>_*.deb)
#   bash packaging/check_deb.sh dist/gpu/bottleneck-studio-gpu_<version>_amd64.deb
#
# The GPU package (TF_VARIANT=gpu make package) is checked the same way, and its self-test must
# load the bundled CUDA runtime and cuDNN and, on a machine without a usable GPU, say why
# (never "this is the CPU build").
# CHECK_DEB_INSTALL=1 (as root) also does a real `dpkg -i`, runs the installed launcher, then
# `dpkg -r` and checks that nothing of the package is left on the system.
# Exits non-zero with the reason on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NAME=bottleneck-studio
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
VERSION=$("$PYTHON" packaging/project.py version 2>/dev/null \
    || sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)

fail() { echo "check_deb: FAILED: $*" >&2; exit 1; }
DEB=${1:-$(ls dist/${NAME}_"${VERSION}"_*.deb 2>/dev/null | head -1 || true)}
[ -n "$DEB" ] && [ -f "$DEB" ] || fail "no dist/${NAME}_${VERSION}_*.deb (run make package)"
echo "checking $DEB ($(du -h "$DEB" | cut -f1))"

# --- metadata -------------------------------------------------------------------------------
info=$(dpkg-deb -I "$DEB") || fail "dpkg-deb -I cannot read $DEB"
field() { dpkg-deb -f "$DEB" "$1"; }
PACKAGE=$(field Package)
case "$PACKAGE" in
    "$NAME"|"$NAME-gpu") ;;
    *) fail "Package is '$PACKAGE', expected $NAME or $NAME-gpu" ;;
esac
[ "$(field Version)" = "$VERSION" ] || fail "Version is '$(field Version)', pyproject says $VERSION"
for dep in libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libxcb-cursor0; do
    field Depends | grep -qw "$dep" || fail "Depends lacks $dep"
done
for script in postinst postrm; do
    grep -q " $script" <<<"$info" || fail "control archive lacks $script"
done
echo "  control: $PACKAGE $VERSION, $(field Installed-Size) KB installed"
if [ "$PACKAGE" = "$NAME-gpu" ]; then
    field Conflicts | grep -qw "$NAME" || fail "the GPU package does not conflict with $NAME"
fi

# --- file list ------------------------------------------------------------------------------
list=$(dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's|^\./|/|')
for path in /opt/$NAME/$NAME /opt/$NAME/_internal/resources/icon.png /usr/bin/$NAME \
        /usr/share/applications/$NAME.desktop /usr/share/icons/hicolor/256x256/apps/$NAME.png; do
    grep -qx "$path" <<<"$list" || fail "$path missing from the package"
done
outside=$(grep -v -E '^/(opt|usr)?/?$|^/opt/'"$NAME"'(/|$)|^/usr/(bin|share)(/|$)' <<<"$list" || true)
[ -z "$outside" ] || fail "files outside /opt/$NAME and /usr: $(head -3 <<<"$outside")"
bloat=$(grep -E '/(tensorboard|tkinter|matplotlib|IPython|pytest|_pytest)/|/tensorflow/include/|\.a$|QtWebEngine|/qml/' <<<"$list" || true)
[ -z "$bloat" ] || fail "left-out parts got in: $(head -3 <<<"$bloat")"
if [ "$PACKAGE" = "$NAME-gpu" ]; then
    for lib in cuda_runtime/lib/libcudart.so.12 cudnn/lib/libcudnn.so.9 cublas/lib/libcublas.so.12; do
        grep -qx "/opt/$NAME/_internal/nvidia/$lib" <<<"$list" || fail "the GPU package lacks nvidia/$lib"
    done
fi
echo "  files: $(wc -l <<<"$list") entries, layout ok"

# --- unpack into a scratch root and run the frozen app ---------------------------------------
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/$NAME-check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
dpkg-deb -x "$DEB" "$SCRATCH/root" || fail "dpkg-deb -x failed"
APP=$SCRATCH/root/opt/$NAME/$NAME
[ -x "$APP" ] || fail "$APP is not executable"
grep -q "/opt/$NAME/$NAME" "$SCRATCH/root/usr/bin/$NAME" || fail "/usr/bin/$NAME does not start /opt/$NAME/$NAME"
desktop=$SCRATCH/root/usr/share/applications/$NAME.desktop
grep -q "^Exec=/usr/bin/$NAME" "$desktop" && grep -q "^Icon=$NAME$" "$desktop" \
    || fail "$NAME.desktop lacks its Exec or Icon line"
if command -v desktop-file-validate >/dev/null; then
    desktop-file-validate "$desktop" || fail "desktop-file-validate rejects $NAME.desktop"
fi

export QT_QPA_PLATFORM=offscreen HOME=$SCRATCH/home XDG_CONFIG_HOME=$SCRATCH/home/.config
export BOTTLENECK_STUDIO_CACHE=$SCRATCH/home/cache BOTTLENECK_STUDIO_DATA=$SCRATCH/home/data
mkdir -p "$HOME"
out=$("$APP" --version 2>&1) || fail "frozen --version exited $?: $out"
[ "$out" = "$NAME $VERSION" ] || fail "frozen --version says '$out', expected '$NAME $VERSION'"

ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(ms)
"$APP" --help >/dev/null 2>&1 || fail "frozen --help failed"
t1=$(ms)
"$APP" --help >/dev/null 2>&1
t2=$(ms)
echo "  frozen start-up to the CLI (--help): cold $((t1 - t0)) ms, warm $((t2 - t1)) ms"

echo "  frozen --self-test from the scratch root:"
set +e
"$APP" --self-test > "$SCRATCH/selftest.log" 2>"$SCRATCH/selftest.err"
rc=$?
set -e
sed 's/^/    /' "$SCRATCH/selftest.log"
if [ $rc -ne 0 ] || ! grep -q "^self-test passed" "$SCRATCH/selftest.log"; then
    tail -20 "$SCRATCH/selftest.err" | sed 's/^/    stderr: /' >&2
    fail "frozen --self-test exited $rc"
fi
if [ "$PACKAGE" = "$NAME-gpu" ]; then
    grep -q "^self-test: CUDA libraries beside TensorFlow: CUDA runtime 12\.[0-9]*, cuDNN 9\." \
        "$SCRATCH/selftest.log" || fail "the GPU build's self-test did not load its CUDA runtime and cuDNN"
    if grep -q "^self-test: backbone runs on: CPU" "$SCRATCH/selftest.log"; then
        grep -q "^self-test: backbone runs on: CPU (.\+)" "$SCRATCH/selftest.log" \
            || fail "the GPU build runs on the CPU without saying why"
        ! grep -q "CPU build" "$SCRATCH/selftest.log" || fail "the GPU build calls itself the CPU build"
    fi
fi
if [ -n "$(find "$SCRATCH/root" -newer "$DEB" -name '*.pyc' -print -quit)" ]; then
    fail "running the app wrote .pyc files into its install folder (uninstall would leave them)"
fi

# --- start-up to a painted window (the GUI prints "first-paint <epoch seconds>") -------------
paint_times=""
for _ in 1 2 3; do
    t0=$(date +%s.%N)
    line=$(BOTTLENECK_STUDIO_FIRST_PAINT=1 BOTTLENECK_STUDIO_QUIT_AFTER_PAINT=1 \
        timeout 60 "$APP" 2>/dev/null | grep -m1 '^first-paint ' || true)
    [ -n "$line" ] || { paint_times="none"; break; }
    paint_times="$paint_times $(awk -v a="$t0" -v b="${line#first-paint }" 'BEGIN{printf "%.2f", b - a}')"
done
if [ "$paint_times" = none ]; then
    echo "  start-up to a painted window: not measured (this build's window prints no first-paint)"
else
    echo "  start-up to a painted window (offscreen, 3 runs):$paint_times s"
fi

# --- optional: a real install and uninstall --------------------------------------------------
if [ "${CHECK_DEB_INSTALL:-0}" = 1 ]; then
    [ "$(id -u)" = 0 ] || fail "CHECK_DEB_INSTALL=1 needs root"
    dpkg -i "$DEB" >/dev/null || fail "dpkg -i failed (missing Depends? apt-get install -f)"
    /usr/bin/$NAME --version | grep -q "$VERSION" || fail "installed launcher does not run"
    /usr/bin/$NAME --self-test >/dev/null 2>&1 || fail "installed --self-test failed"
    dpkg -r "$PACKAGE" >/dev/null || fail "dpkg -r failed"
    left=$(ls -d /opt/$NAME /usr/bin/$NAME /usr/share/applications/$NAME.desktop \
        /usr/share/icons/hicolor/256x256/apps/$NAME.png 2>/dev/null || true)
    [ -z "$left" ] || fail "left behind after dpkg -r: $left"
    echo "  real install, --self-test and uninstall: ok"
fi
echo "check_deb: ok"
