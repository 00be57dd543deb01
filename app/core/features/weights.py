"""ImageNet weights: Keras' own files, found bundled or in Keras' cache, else fetched with progress.

Keras downloads its weights silently inside the model constructor. To show progress, offer a
cancel and say clearly when the machine is offline, we ask Keras which file it would fetch
(its constructor runs with ``get_file`` intercepted), then download that very file into
Keras' own cache ourselves, checking Keras' hash when it has one. A weights file bundled with
the installer (``resources/weights/<name>``) or placed in ``BOTTLENECK_STUDIO_WEIGHTS_DIR``
is used first, so an offline workstation works from the first launch.
"""

from __future__ import annotations

import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.core.base.errors import UserError
from app.core.base.jobs import CancelToken, Progress, ProgressCallback, no_progress

_lock = threading.Lock()
_requests: dict[str, WeightsRequest] = {}
CHUNK = 1 << 16


class WeightsUnavailable(UserError):
    """The weights cannot be had; the message says what the user can do instead."""


@dataclass(frozen=True)
class WeightsRequest:
    fname: str
    origin: str
    cache_subdir: str
    file_hash: str | None


class _Captured(Exception):
    def __init__(self, request: WeightsRequest) -> None:
        self.request = request


def resources_dir() -> Path:
    """The app's resources folder, from source and in a PyInstaller bundle alike."""
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return Path(frozen_root) / "resources"
    return Path(__file__).resolve().parents[3] / "resources"  # app/core/features -> the repo


def bundled_local(backbone: str) -> Path | None:
    """A local weights file bundled with the installer for ``backbone``
    (``resources/weights/<backbone>/<file>.weights.h5``, ``build.sh --bundle-weights
    BACKBONE=FILE``): real ImageNet weights that are not Keras' own download, used as the
    local weights file they are (their own cache key), so an offline machine works from the
    first launch with the backbone the installer proposes."""
    folder = resources_dir() / "weights" / backbone
    files = sorted(folder.glob("*.weights.h5")) if folder.is_dir() else []
    return next((f for f in files if f.is_file() and f.stat().st_size > 0), None)


def bundled_choice(backbones) -> tuple[str, Path] | None:
    """The first of ``backbones`` (names, in the order the app offers them) with a bundled
    local weights file, and that file; None when the installer bundled none."""
    for name in backbones:
        found = bundled_local(name)
        if found is not None:
            return name, found
    return None


def keras_cache_dir(subdir: str = "models") -> Path:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / subdir


def request_for(key: str, constructor: Callable[[], object]) -> WeightsRequest:
    """Which file Keras would download when ``constructor()`` builds with ImageNet weights."""
    from keras.src.utils import file_utils

    with _lock:
        if key in _requests:
            return _requests[key]
        real = file_utils.get_file

        def capture(fname=None, origin=None, *args, cache_subdir="datasets", file_hash=None,
                    **kwargs):
            raise _Captured(WeightsRequest(fname or os.path.basename(origin), origin,
                                           cache_subdir, file_hash))

        file_utils.get_file = capture
        try:
            constructor()
        except _Captured as captured:
            _requests[key] = captured.request
            return captured.request
        finally:
            file_utils.get_file = real
    raise WeightsUnavailable(f"{key} did not ask Keras for a weights file")


def _valid(path: Path, file_hash: str | None) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    if not file_hash:
        return True
    from keras.src.utils import file_utils

    return bool(file_utils.validate_file(str(path), file_hash))


def locate(request: WeightsRequest) -> Path | None:
    """A usable copy already on this machine: bundled, in the weights folder, in Keras' cache."""
    places = [resources_dir() / "weights" / request.fname]
    if os.environ.get("BOTTLENECK_STUDIO_WEIGHTS_DIR"):
        places.insert(0, Path(os.environ["BOTTLENECK_STUDIO_WEIGHTS_DIR"]) / request.fname)
    places.append(keras_cache_dir(request.cache_subdir) / request.fname)
    for path in places:
        if _valid(path, request.file_hash):
            return path
    return None


def download(request: WeightsRequest, progress: ProgressCallback = no_progress,
             cancel: CancelToken | None = None, timeout: float = 30.0) -> Path:
    """Fetch ``request`` into Keras' cache with progress; atomic, hash-checked, cancellable."""
    from app.core.base.jobs import RateMeter

    target = keras_cache_dir(request.cache_subdir) / request.fname
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(request.origin, timeout=timeout) as response, \
                open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            meter = RateMeter(total)
            done = 0
            while True:
                if cancel is not None and cancel.cancelled:
                    raise WeightsUnavailable("download cancelled")
                block = response.read(CHUNK)
                if not block:
                    break
                out.write(block)
                done += len(block)
                report = meter.report("download", done, request.fname)
                progress(Progress("download", done, max(total, done), report.rate, report.eta,
                                  f"downloading {request.fname}"))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise WeightsUnavailable(
            f"could not download ImageNet weights {request.fname} ({reason}). If this machine "
            "is offline, choose a local weights file instead (or copy the file into "
            f"{target.parent})"
        ) from exc
    except WeightsUnavailable:
        part.unlink(missing_ok=True)
        raise
    if not _valid(part, request.file_hash):
        part.unlink(missing_ok=True)
        raise WeightsUnavailable(f"the downloaded {request.fname} is damaged (hash mismatch); "
                                 "try again or choose a local weights file")
    os.replace(part, target)
    return target


def imagenet_weights(key: str, constructor: Callable[[], object],
                     progress: ProgressCallback = no_progress,
                     cancel: CancelToken | None = None) -> Path:
    """A local path to Keras' ImageNet weights for ``constructor``, downloading if needed."""
    request = request_for(key, constructor)
    return locate(request) or download(request, progress, cancel)
