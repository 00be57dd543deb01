"""What the window remembers between runs, kept in a QSettings (injected, so tests use a
temporary file and never the user's real settings)."""

from __future__ import annotations

import json

from PySide6.QtCore import QByteArray, QSettings

from app.core.training.settings import TrainSettings

ORGANISATION = "BottleneckStudio"
APPLICATION = "Bottleneck Studio"


def default_settings() -> QSettings:
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANISATION,
                     APPLICATION)


class Preferences:
    """Typed access to the stored values, each with its default."""

    def __init__(self, store: QSettings) -> None:
        self.store = store

    def _get(self, key: str, default: str = "") -> str:
        value = self.store.value(key, default)
        return str(value) if value is not None else default

    @property
    def last_folder(self) -> str:
        return self._get("data/last_folder")

    @last_folder.setter
    def last_folder(self, value: str) -> None:
        self.store.setValue("data/last_folder", value)

    @property
    def last_model_folder(self) -> str:
        return self._get("predict/last_model_folder")

    @last_model_folder.setter
    def last_model_folder(self, value: str) -> None:
        self.store.setValue("predict/last_model_folder", value)

    @property
    def images_folder(self) -> str:
        """Where images to classify were last added from."""
        return self._get("predict/images_folder")

    @images_folder.setter
    def images_folder(self, value: str) -> None:
        self.store.setValue("predict/images_folder", value)

    @property
    def save_folder(self) -> str:
        """Where predictions were last saved."""
        return self._get("predict/save_folder")

    @save_folder.setter
    def save_folder(self, value: str) -> None:
        self.store.setValue("predict/save_folder", value)

    @property
    def backbone(self) -> str:
        return self._get("features/backbone")

    @backbone.setter
    def backbone(self, value: str) -> None:
        self.store.setValue("features/backbone", value)

    @property
    def weights(self) -> str:
        return self._get("features/weights")

    @weights.setter
    def weights(self, value: str) -> None:
        self.store.setValue("features/weights", value)

    @property
    def weights_file(self) -> str:
        return self._get("features/weights_file")

    @weights_file.setter
    def weights_file(self, value: str) -> None:
        self.store.setValue("features/weights_file", value)

    @property
    def compute_engine(self) -> str:
        """Where features are computed: "local" (this computer) or "ray"."""
        return self._get("features/engine", "local")

    @compute_engine.setter
    def compute_engine(self, value: str) -> None:
        self.store.setValue("features/engine", value)

    @property
    def ray_address(self) -> str:
        """The Ray cluster's address ("" for RAY_ADDRESS or a local Ray)."""
        return self._get("features/ray_address")

    @ray_address.setter
    def ray_address(self, value: str) -> None:
        self.store.setValue("features/ray_address", value)

    @property
    def training(self) -> TrainSettings:
        try:
            return TrainSettings.from_dict(json.loads(self._get("train/settings", "{}")))
        except (ValueError, TypeError):
            return TrainSettings()

    @training.setter
    def training(self, value: TrainSettings) -> None:
        self.store.setValue("train/settings", json.dumps(value.as_dict()))

    def epoch_seconds_per_image(self, backbone: str, mode: str) -> float | None:
        """Seconds per epoch per training image measured on the last run of ``backbone`` in
        ``mode`` (None before any run)."""
        try:
            value = float(self._get(f"timing/{backbone}/{mode}", ""))
        except ValueError:
            return None
        return value if value > 0 else None

    def remember_epoch_seconds(self, backbone: str, mode: str, seconds: float,
                               train_images: int) -> None:
        if seconds > 0 and train_images > 0:
            self.store.setValue(f"timing/{backbone}/{mode}", repr(seconds / train_images))

    def trainable_layers(self, backbone: str) -> list[str]:
        """The backbone layers the last fine-tune run of ``backbone`` trained."""
        try:
            names = json.loads(self._get(f"finetune/{backbone}/layers", "[]"))
        except ValueError:
            return []
        return [str(n) for n in names] if isinstance(names, list) else []

    def remember_trainable_layers(self, backbone: str, names: list[str]) -> None:
        self.store.setValue(f"finetune/{backbone}/layers", json.dumps(list(names)))

    def label_state(self, folder: str) -> dict:
        """What the Label page keeps for the data folder ``folder``: ``inbox`` (the unsorted
        photos and folders added) and ``keys`` (the class of each key)."""
        try:
            state = json.loads(self._get("label/folders", "{}")).get(folder, {})
        except (ValueError, AttributeError):
            return {}
        if not isinstance(state, dict):
            return {}
        return {k: [str(x) for x in v] for k, v in state.items()
                if k in ("inbox", "keys") and isinstance(v, list)}

    def remember_label_state(self, folder: str, **state: list[str]) -> None:
        try:
            folders = json.loads(self._get("label/folders", "{}"))
        except ValueError:
            folders = {}
        if not isinstance(folders, dict):
            folders = {}
        folders[folder] = {**(folders.get(folder) if isinstance(folders.get(folder), dict)
                              else {}), **{k: list(v) for k, v in state.items()}}
        self.store.setValue("label/folders", json.dumps(folders))

    @property
    def accept_threshold(self) -> float:
        """The Label page's "accept every suggestion above", in percent."""
        try:
            return float(self._get("label/accept", "95"))
        except ValueError:
            return 95.0

    @accept_threshold.setter
    def accept_threshold(self, value: float) -> None:
        self.store.setValue("label/accept", repr(float(value)))

    @property
    def last_page(self) -> str:
        return self._get("window/page")

    @last_page.setter
    def last_page(self, value: str) -> None:
        self.store.setValue("window/page", value)

    @property
    def geometry(self) -> QByteArray | None:
        value = self.store.value("window/geometry")
        return value if isinstance(value, QByteArray) else None

    @geometry.setter
    def geometry(self, value: QByteArray) -> None:
        self.store.setValue("window/geometry", value)

    def sync(self) -> None:
        self.store.sync()
