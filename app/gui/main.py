"""Entry point of the window: ``run_gui`` shows it fast and loads TensorFlow afterwards.

Nothing imported here imports TensorFlow or Keras (check: ``python -X importtime -c
"import app.gui.main"``). With ``BOTTLENECK_STUDIO_FIRST_PAINT`` set, the time of the first
paint of the window is printed (``first-paint <seconds since the epoch>``) for the benchmark.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from app.gui import theme
from app.gui.errors import log, setup_logging
from app.gui.preferences import APPLICATION, ORGANISATION
from app.gui.window import MainWindow

ICON = Path(__file__).resolve().parents[2] / "resources" / "icon.svg"


# Qt's X11 plugin loads these; without them Qt aborts with a raw "could not load the Qt
# platform plugin xcb" and no hint of which package is missing (libxcb-cursor0 was, in a walk)
XCB_LIBRARIES = {"libxcb-cursor.so.0": "libxcb-cursor0", "libxkbcommon-x11.so.0":
                 "libxkbcommon-x11-0", "libxcb-icccm.so.4": "libxcb-icccm4",
                 "libxcb-keysyms.so.1": "libxcb-keysyms1", "libxcb-shape.so.0":
                 "libxcb-shape0", "libxcb-render-util.so.0": "libxcb-render-util0"}


def missing_x11_libraries(platform: str | None = None) -> list[str]:
    """The Debian packages of the libraries Qt's X11 plugin needs that cannot be loaded here
    (none off Linux, or when another platform plugin is chosen)."""
    import ctypes

    platform = platform if platform is not None else os.environ.get("QT_QPA_PLATFORM", "")
    if not sys.platform.startswith("linux") or (platform and not platform.startswith("xcb")):
        return []
    if not platform and os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("DISPLAY"):
        return []
    missing = []
    for library, package in XCB_LIBRARIES.items():
        try:
            ctypes.CDLL(library)
        except OSError:
            missing.append(package)
    return missing


def run_gui(data_dir: str | None = None) -> int:
    """Open the window (on ``data_dir`` when given) and run until it closes; the exit code."""
    missing = missing_x11_libraries()
    if missing:
        print(f"error: the window needs {', '.join(missing)} (sudo apt-get install "
              f"{' '.join(missing)}); the commands (python -m app --help) work without them",
              file=sys.stderr)
        return 2
    setup_logging()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    if ICON.is_file():
        app.setWindowIcon(QIcon(str(ICON)))
    theme.apply(app)
    window = MainWindow(folder=str(data_dir) if data_dir else None)  # else the last folder

    def excepthook(kind, value, tb):  # a bug in a slot: a message, not a dead terminal
        log.error("unexpected error:\n%s", "".join(traceback.format_exception(kind, value, tb)))
        window.banner.show_error(f"{kind.__name__}: {value}")

    sys.excepthook = excepthook
    if os.environ.get("BOTTLENECK_STUDIO_FIRST_PAINT"):
        window.first_painted.connect(lambda: print(f"first-paint {time.time():.4f}", flush=True))
    if os.environ.get("BOTTLENECK_STUDIO_QUIT_AFTER_PAINT"):
        window.first_painted.connect(lambda: QTimer.singleShot(0, window.close))
    window.show()
    return app.exec()
