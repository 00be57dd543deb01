"""Where the Features page computes: this computer, or a Ray cluster at an address."""

from __future__ import annotations

import importlib.util

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

INSTALL_RAY = 'pip install "bottleneck-studio[cluster]"'
LOCAL, RAY = "local", "ray"


def ray_installed() -> bool:
    """Whether Ray can be imported, without importing it (that takes seconds)."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


class ComputeOn(QWidget):
    """The choice "(•) this computer  ( ) Ray cluster at [address]". The Ray choice is
    disabled, with the command that installs it, when Ray is not installed."""

    changed = Signal()  # the user chose another place or address

    def __init__(self, parent: QWidget | None = None, has_ray: bool | None = None) -> None:
        super().__init__(parent)
        self.has_ray = ray_installed() if has_ray is None else has_ray
        self.local = QRadioButton("this &computer")
        self.local.setToolTip("The backbone runs in this app, on this computer's GPU or CPU")
        self.ray = QRadioButton("Ray c&luster at")
        self.address = QLineEdit()
        self.address.setPlaceholderText("empty: RAY_ADDRESS, else a local Ray on this computer")
        self.address.setToolTip("The cluster's address, e.g. ray://head-node:10001 or "
                                "head-node:6379; its workers must see the images and the "
                                "cache folder at the same paths (a shared filesystem)")
        self.group = QButtonGroup(self)
        self.group.addButton(self.local)
        self.group.addButton(self.ray)
        self.local.setChecked(True)
        self.running = False
        self.remembered = LOCAL
        if self.has_ray:
            self.ray.setToolTip("Ray Data decodes the images and runs the backbone on a Ray "
                                "cluster (one backbone per GPU); the features land in the same "
                                "cache")
        else:
            self.ray.setEnabled(False)
            self.address.setPlaceholderText(f"needs Ray: {INSTALL_RAY}")
            self.ray.setToolTip(f"Ray is not installed. To compute on a Ray cluster: "
                                f"{INSTALL_RAY}")
        self.token = QLabel("")  # where the cluster's token comes from, or where to put it
        self.token.setWordWrap(True)
        self.token.setTextInteractionFlags(self.token.textInteractionFlags()
                                           | Qt.TextInteractionFlag.TextSelectableByMouse)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        row = QHBoxLayout()
        row.addWidget(self.local)
        row.addWidget(self.ray)
        row.addWidget(self.address, 1)
        outer.addLayout(row)
        outer.addWidget(self.token)
        self.ray.toggled.connect(lambda _on: self._update())
        self.address.textChanged.connect(lambda _text: self._update())
        self.ray.toggled.connect(lambda _on: self.changed.emit())
        self.address.textChanged.connect(lambda _text: self.changed.emit())
        self._update()

    def engine(self) -> str:
        return RAY if self.ray.isChecked() and self.has_ray else LOCAL

    def ray_address(self) -> str | None:
        return self.address.text().strip() or None

    def job_args(self) -> dict:
        """The caching job's ``engine`` and ``ray_address``."""
        return {"engine": self.engine(), "ray_address": self.ray_address()}

    def chosen(self) -> str:
        """The choice to remember: without Ray, the one remembered before stays."""
        return self.engine() if self.has_ray else self.remembered

    def set_engine(self, engine: str, address: str = "") -> None:
        """Restore a remembered choice; Ray falls back to this computer when not installed
        (the address is kept for when it is)."""
        self.address.setText(address)
        self.remembered = engine
        (self.ray if engine == RAY and self.has_ray else self.local).setChecked(True)
        self._update()

    def set_running(self, running: bool) -> None:
        self.local.setEnabled(not running)
        self.ray.setEnabled(not running and self.has_ray)
        self.running = running
        self._update()

    def _update(self) -> None:
        self.address.setEnabled(self.ray.isChecked() and not self.running)
        remote = self.ray.isChecked() and self.has_ray and self.ray_address() is not None
        self.token.setVisible(remote)
        if remote:
            from app.core.features.engines.ray import TOKEN_HELP, ray_token

            found = ray_token()
            self.token.setText(f"Ray token: from {found} (used for this cluster)" if found
                               else "No Ray token found. A cluster started with `ray start` "
                                    f"(Ray 2.59 or later) asks for one: {TOKEN_HELP}.")
