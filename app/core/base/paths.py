"""Where the app keeps its cache, logs and models unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "BottleneckStudio"


def user_cache_dir() -> Path:
    """The feature cache's folder; ``BOTTLENECK_STUDIO_CACHE`` overrides it (tests set it)."""
    override = os.environ.get("BOTTLENECK_STUDIO_CACHE")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def user_data_dir() -> Path:
    """Logs and other per-user data; ``BOTTLENECK_STUDIO_DATA`` overrides it."""
    override = os.environ.get("BOTTLENECK_STUDIO_DATA")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def last_model_dir() -> Path:
    """Where the window keeps the last trained model (a normal model folder), so it survives
    a restart of the app."""
    return user_data_dir() / "last-model"


def user_config_dir() -> Path:
    """Settings and the move journal's secret; ``BOTTLENECK_STUDIO_CONFIG`` overrides it."""
    override = os.environ.get("BOTTLENECK_STUDIO_CONFIG")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
