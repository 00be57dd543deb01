#!/usr/bin/env bash
# `make package`: the one-folder PyInstaller build, then (on Debian/Ubuntu) the .deb.
#
#   bash packaging/build.sh [--bundle-weights [BACKBONE=]FILE] [--no-deb] [--skip-freeze]
#
#   --bundle-weights FILE  copy FILE (Keras' own ImageNet file, under the name Keras downloads,
#                          e.g. inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5) into the
#                          bundle as _internal/resources/weights/<its name>, so an offline
#                          workstation works from the first launch. Same as BUNDLE_WEIGHTS=FILE.
#   --bundle-weights BACKBONE=FILE
#                          a local .weights.h5 file of real ImageNet weights for BACKBONE (e.g.
#                          mobilenet_v2=...): _internal/resources/weights/BACKBONE/<its name>; on
#                          a first launch the app proposes BACKBONE with it (the self-test
#                          loads it), so it works offline out of the box.
#   --no-deb               stop after dist/bottleneck-studio/
#   --skip-freeze          reuse dist/bottleneck-studio/ as it is and only (re)make the .deb
#   TF_VARIANT=cpu|full|gpu
#                          cpu (default): freeze the CPU-only wheel of the pinned TensorFlow
#                          version (tensorflow-cpu, installed into build/tf-cpu and put first on
#                          PYTHONPATH): ~300 MB less (no CUDA kernels). full: the .venv's own
#                          tensorflow wheel (can use an NVIDIA GPU when the system has CUDA 12 +
#                          cuDNN 9 libraries), a bundle of ~1.3 GB. gpu: full, plus the CUDA
#                          runtime (packaging/linux/cuda-requirements.txt, into build/cuda, copied
#                          to _internal/nvidia/), in the package bottleneck-studio-gpu (it
#                          replaces bottleneck-studio): needs only the NVIDIA driver.
#
# Results: dist/bottleneck-studio/ (dist/bottleneck-studio-gpu/ for gpu) and
# dist/<package>_<version>_<arch>.deb
# Python: .venv/bin/python (PYTHON=... to use another); PyInstaller is installed there if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WEIGHTS=${BUNDLE_WEIGHTS:-}
MAKE_DEB=1
FREEZE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --bundle-weights) WEIGHTS=${2:?--bundle-weights needs a file}; shift 2 ;;
        --bundle-weights=*) WEIGHTS=${1#*=}; shift ;;
        --no-deb) MAKE_DEB=0; shift ;;
        --skip-freeze) FREEZE=0; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

[ -x "$PYTHON" ] || { echo "build.sh: $PYTHON not found (run 'make run' or 'make test' once)" >&2; exit 1; }
WEIGHTS_FOR=""
case "$WEIGHTS" in
    *=*) WEIGHTS_FOR=${WEIGHTS%%=*}
         # a backbone the app offers (a typo would bundle a file the app never reads)
         if "$PYTHON" -c "import sys; from app.core.features.backbones import BACKBONES as B; \
sys.exit(0 if sys.argv[1] in B and not B[sys.argv[1]].hidden else 1)" "$WEIGHTS_FOR" 2>/dev/null; then
             WEIGHTS=${WEIGHTS#*=}
             case "$WEIGHTS" in
                 *.weights.h5) ;;
                 *) echo "build.sh: $WEIGHTS_FOR=FILE takes a local .weights.h5 file" >&2; exit 1 ;;
             esac
         elif [ -f "$WEIGHTS" ]; then
             WEIGHTS_FOR=""  # a file whose name holds '='
         else
             echo "build.sh: '$WEIGHTS_FOR' is not a backbone the app offers (BACKBONE=FILE)" >&2
             exit 1
         fi ;;
esac
if [ -n "$WEIGHTS" ] && [ ! -f "$WEIGHTS" ]; then
    echo "build.sh: weights file $WEIGHTS not found" >&2; exit 1
fi

NAME=bottleneck-studio
VARIANT=${TF_VARIANT:-cpu}
PACKAGE=$NAME
[ "$VARIANT" = gpu ] && PACKAGE=$NAME-gpu
VERSION=$("$PYTHON" packaging/project.py version)
DIST=$ROOT/dist
if [ "$VARIANT" = gpu ]; then
    # its own dist folder (the CPU build's stays as it is); PyInstaller still names it $NAME
    DIST=$ROOT/dist/gpu
fi
BUNDLE=$DIST/$NAME
PYI_VERSION=6.22.3
start=$(date +%s)

if [ "$FREEZE" = 1 ]; then
    if ! "$PYTHON" -c "import PyInstaller, sys; sys.exit(PyInstaller.__version__ != '$PYI_VERSION')" 2>/dev/null; then
        echo "installing pyinstaller==$PYI_VERSION"
        "$PYTHON" -m pip install -q "pyinstaller==$PYI_VERSION"
    fi
    TF_VERSION=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('tensorflow'))")
    case "$VARIANT" in
        cpu)
            OVERLAY=$ROOT/build/tf-cpu
            if [ ! -f "$OVERLAY/.tensorflow-cpu-$TF_VERSION" ]; then
                echo "installing tensorflow-cpu==$TF_VERSION into build/tf-cpu (CPU-only build of the same TensorFlow)"
                rm -rf "$OVERLAY"
                "$PYTHON" -m pip install -q --no-deps --target "$OVERLAY" "tensorflow-cpu==$TF_VERSION"
                touch "$OVERLAY/.tensorflow-cpu-$TF_VERSION"
            fi
            export PYTHONPATH=$OVERLAY${PYTHONPATH:+:$PYTHONPATH}
            ;;
        full|gpu) ;;
        *) echo "build.sh: TF_VARIANT must be cpu, full or gpu" >&2; exit 2 ;;
    esac
    echo "freezing $NAME $VERSION (PyInstaller, one folder, TensorFlow $TF_VERSION $VARIANT) ..."
    # --clean is left out on purpose: PyInstaller's cache of analysed binaries is what makes a
    # rebuild fast; `make clean` (rm -rf build dist) starts from scratch.
    "$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
        --distpath "$DIST" --workpath "$ROOT/build/pyinstaller-$VARIANT" packaging/bottleneck_studio.spec

    if [ "$VARIANT" = gpu ]; then
        # The CUDA runtime, where TensorFlow's RUNPATH looks: _internal/nvidia/<name>/lib
        CUDA=$ROOT/build/cuda
        REQ=$ROOT/packaging/linux/cuda-requirements.txt
        if ! cmp -s "$REQ" "$CUDA/.requirements" 2>/dev/null; then
            echo "installing the CUDA runtime wheels into build/cuda (packaging/linux/cuda-requirements.txt)"
            rm -rf "$CUDA"
            "$PYTHON" -m pip install -q --no-deps --target "$CUDA" -r "$REQ"
            cp "$REQ" "$CUDA/.requirements"
        fi
        rm -rf "$BUNDLE/_internal/nvidia"
        mkdir -p "$BUNDLE/_internal/nvidia"
        for lib in "$CUDA"/nvidia/*/lib; do  # the shared libraries only: no headers, no stubs
            pkg=$(basename "$(dirname "$lib")")
            mkdir -p "$BUNDLE/_internal/nvidia/$pkg"
            cp -al "$lib" "$BUNDLE/_internal/nvidia/$pkg/lib" 2>/dev/null \
                || cp -a "$lib" "$BUNDLE/_internal/nvidia/$pkg/lib"
        done
        find "$BUNDLE/_internal/nvidia" -name '*.a' -delete  # static archives: for linking only
        # ptxas and libdevice: XLA compiles the backbone's kernels for the GPU it finds
        for part in bin nvvm; do
            if [ -d "$CUDA/nvidia/cuda_nvcc/$part" ]; then
                mkdir -p "$BUNDLE/_internal/nvidia/cuda_nvcc"
                cp -a "$CUDA/nvidia/cuda_nvcc/$part" "$BUNDLE/_internal/nvidia/cuda_nvcc/$part"
            fi
        done
        cp "$REQ" "$BUNDLE/_internal/nvidia/REQUIREMENTS.txt"
        echo "bundled the CUDA runtime: $(du -sh "$BUNDLE/_internal/nvidia" | cut -f1)"
    fi

    # TensorFlow's native libraries ship with their full symbol tables (.symtab/.strtab: ~200 MB).
    # Nothing reads them at run time (the dynamic linker uses .dynsym), so strip them;
    # --strip-unneeded keeps every exported symbol. Only TensorFlow's: libraries that auditwheel
    # patched (numpy.libs, pillow.libs, ...) break when stripped ("ELF load command
    # address/offset not page-aligned").
    if command -v strip >/dev/null; then
        before=$(du -sm "$BUNDLE" | cut -f1)
        find "$BUNDLE/_internal" -type f \( -path '*/tensorflow/*' -o -name 'libtensorflow*' \) \
            \( -name '*.so' -o -name '*.so.*' \) -size +1M -print0 |
            while IFS= read -r -d '' lib; do
                if readelf -S "$lib" 2>/dev/null | grep -q ' \.symtab '; then
                    strip --strip-unneeded "$lib" 2>/dev/null || echo "  (could not strip $lib)"
                fi
            done
        echo "stripped symbol tables: $before MB -> $(du -sm "$BUNDLE" | cut -f1) MB"
    else
        echo "strip not found (binutils): the bundle keeps its symbol tables" >&2
    fi
fi
[ -x "$BUNDLE/$NAME" ] || { echo "build.sh: $BUNDLE/$NAME missing" >&2; exit 1; }

rm -rf "$BUNDLE/_internal/resources/weights"
if [ -n "$WEIGHTS" ]; then
    # BACKBONE=FILE: a local .weights.h5 file for that backbone (what the app proposes offline);
    # FILE alone: Keras' own download, under its own name
    WHERE="$BUNDLE/_internal/resources/weights"
    [ -n "$WEIGHTS_FOR" ] && WHERE="$WHERE/$WEIGHTS_FOR"
    mkdir -p "$WHERE"
    cp "$WEIGHTS" "$WHERE/"
    echo "bundled weights: ${WHERE#"$BUNDLE/_internal/"}/$(basename "$WEIGHTS")"
fi
echo "bundle: $BUNDLE ($(du -sh "$BUNDLE" | cut -f1))"

if [ "$MAKE_DEB" = 1 ]; then
    if command -v dpkg-deb >/dev/null; then
        DEB_PACKAGE=$PACKAGE bash packaging/linux/make_deb.sh "$BUNDLE" "$VERSION" "$DIST"
    else
        echo "dpkg-deb not found: no .deb (the one-folder build is in $BUNDLE)"
    fi
fi
echo "package done in $(( $(date +%s) - start )) s"
