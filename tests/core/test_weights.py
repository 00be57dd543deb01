import io
import urllib.error

import pytest

from app.core.features import weights as w
from app.core.features.backbones import BackboneError, build_backbone, get_spec


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


def test_keras_is_asked_which_file_it_would_download():
    import functools

    import keras

    ctor = functools.partial(keras.applications.MobileNet, include_top=False,
                             input_shape=(224, 224, 3), weights="imagenet")
    req = w.request_for("mobilenet-test", ctor)
    assert req.fname == "mobilenet_1_0_224_tf_no_top.h5"
    assert req.origin.startswith("https://") and req.origin.endswith(req.fname)
    assert req.cache_subdir == "models"


def test_download_reports_progress_and_lands_in_keras_cache(keras_home, monkeypatch):
    payload = b"x" * (3 * w.CHUNK + 5)
    monkeypatch.setattr(w.urllib.request, "urlopen", lambda url, timeout: FakeResponse(payload))
    seen = []
    req = w.WeightsRequest("f.h5", "https://example.invalid/f.h5", "models", None)
    path = w.download(req, seen.append)
    assert path == keras_home / "models" / "f.h5" and path.read_bytes() == payload
    assert [p.stage for p in seen] == ["download"] * 4 and seen[-1].done == len(payload)
    assert w.locate(req) == path


def test_offline_gives_a_clear_message_and_leaves_nothing(keras_home, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(w.urllib.request, "urlopen", offline)
    req = w.WeightsRequest("f.h5", "https://example.invalid/f.h5", "models", None)
    with pytest.raises(w.WeightsUnavailable, match="offline, choose a local weights file"):
        w.download(req)
    assert not list((keras_home / "models").iterdir())


def test_damaged_download_is_refused(keras_home, monkeypatch):
    monkeypatch.setattr(w.urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"abc"))
    req = w.WeightsRequest("f.h5", "https://example.invalid/f.h5", "models", "0" * 64)
    with pytest.raises(w.WeightsUnavailable, match="damaged"):
        w.download(req)
    assert not (keras_home / "models" / "f.h5").exists()


def test_a_weights_folder_is_used_before_any_download(tmp_path, keras_home, monkeypatch):
    (tmp_path / "offline").mkdir()
    (tmp_path / "offline" / "f.h5").write_bytes(b"weights")
    monkeypatch.setenv("BOTTLENECK_STUDIO_WEIGHTS_DIR", str(tmp_path / "offline"))
    monkeypatch.setattr(w.urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    req = w.WeightsRequest("f.h5", "https://example.invalid/f.h5", "models", None)
    assert w.locate(req) == tmp_path / "offline" / "f.h5"


def test_backbone_build_turns_unavailable_weights_into_a_backbone_error(monkeypatch):
    def unavailable(*a, **k):
        raise w.WeightsUnavailable("offline: choose a local weights file")

    monkeypatch.setattr(w, "imagenet_weights", unavailable)
    with pytest.raises(BackboneError, match="local weights file"):
        build_backbone(get_spec("mobilenet"), "imagenet")
    with pytest.raises(BackboneError, match="no ImageNet weights"):
        build_backbone(get_spec("tiny"), "imagenet")


@pytest.mark.slow
def test_a_weights_file_of_another_shape_is_refused_with_what_it_fits(tmp_path):
    """Keras loads a file holding extra layers (the 1000-class top) with only a warning and
    leaves what it could not match random: the app refuses it and says what the file is."""
    import keras

    from app.core.features.backbones import BackboneError, build_extractor, get_spec

    with_top = tmp_path / "mobilenet_top.weights.h5"
    keras.applications.MobileNet(weights=None, include_top=True).save_weights(with_top)
    no_top = tmp_path / "mobilenet.weights.h5"
    keras.applications.MobileNet(weights=None, include_top=False,
                                 input_shape=(224, 224, 3)).save_weights(no_top)
    with pytest.raises(BackboneError, match="1000-class ImageNet top"):
        build_extractor(get_spec("mobilenet"), str(with_top))
    with pytest.raises(BackboneError, match="holds weights for MobileNet v1"):
        build_extractor(get_spec("mobilenet_v2"), str(no_top))
    assert build_extractor(get_spec("mobilenet"), str(no_top)) is not None
