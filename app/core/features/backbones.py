"""Frozen ImageNet backbones and their taps.

Each backbone names three *taps*: ``main`` (global average pool of the last block, GoogLeNet's
main-head input) and ``aux1``/``aux2`` on intermediate blocks at about 2/3 and 4/5 of the depth,
where GoogLeNet put its auxiliary classifiers. Aux taps are stored after GoogLeNet's
parameter-free 5x5/stride-3 average pool, so the trainable aux head is GoogLeNet's own.

The extractor takes raw RGB pixels (0..255, float) and contains its backbone's input scaling,
so the cache, the exported model and prediction can never scale pixels differently.
Keras is imported lazily: describing a backbone costs nothing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.base.errors import UserError, shown
from app.core.base.jobs import KERAS_BUILDS, CancelToken, ProgressCallback, no_progress

if TYPE_CHECKING:
    import keras

RANDOM_WEIGHTS_SEED = 1234
AUX_POOL = (5, 3)  # GoogLeNet: 5x5 average pool, stride 3

_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


class BackboneError(UserError):
    """A backbone or weights choice that cannot be built; the message says what to do."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    title: str
    image_size: int
    constructor: str  # attribute of keras.applications
    aux_layers: tuple[str, str]
    scaling: str  # "tf" ([-1, 1]), "caffe" (BGR, mean subtracted), "none" (model scales)
    hidden: bool = False  # not offered in the GUI (test/self-test backbone)

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec("inception_v3", "Inception v3", 299, "InceptionV3",
                     ("mixed5", "mixed7"), "tf"),
        BackboneSpec("xception", "Xception", 299, "Xception",
                     ("block9_sepconv1_act", "block11_sepconv1_act"), "tf"),
        BackboneSpec("mobilenet", "MobileNet v1", 224, "MobileNet",
                     ("conv_pw_9_relu", "conv_pw_11_relu"), "tf"),
        BackboneSpec("mobilenet_v2", "MobileNet v2", 224, "MobileNetV2",
                     ("block_11_add", "block_14_add"), "tf"),
        BackboneSpec("efficientnet_b0", "EfficientNet B0", 224, "EfficientNetB0",
                     ("block5c_add", "block6b_add"), "none"),
        BackboneSpec("resnet50", "ResNet-50", 224, "ResNet50",
                     ("conv4_block3_out", "conv4_block6_out"), "caffe"),
        BackboneSpec("tiny", "Tiny CNN (tests and self-test only)", 64, "",
                     ("tiny_block2", "tiny_block3"), "tf", hidden=True),
    )
}
DEFAULT_BACKBONE = "inception_v3"


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        choices = ", ".join(n for n, s in BACKBONES.items() if not s.hidden)
        raise BackboneError(f"unknown backbone {name!r}; choose one of {choices}") from None


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(spec: BackboneSpec, weights: str) -> str:
    """A string that changes whenever the backbone's numbers could change; no Keras import."""
    keras_version = importlib.metadata.version("keras")
    if weights == "imagenet":
        if spec.name == "tiny":
            raise BackboneError("the tiny backbone has no ImageNet weights; use --weights none")
        return f"imagenet@keras{keras_version}"
    if weights == "none":
        return f"random{RANDOM_WEIGHTS_SEED}@keras{keras_version}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"weights file {path} not found; give 'imagenet', 'none' or a .weights.h5 file"
        )
    return f"file:{_file_digest(path)}"


def build_backbone(spec: BackboneSpec, weights: str, progress: ProgressCallback = no_progress,
                   cancel: CancelToken | None = None) -> keras.Model:
    """The bare Keras backbone (no top), weights loaded, frozen.

    ImageNet weights come from :mod:`app.core.features.weights` (bundled, cached, or downloaded with
    progress reports of stage ``download``).
    """
    from app.core.base.device import configure

    configure()
    with KERAS_BUILDS:  # random weights come from the global seed: one build at a time
        return _build_backbone(spec, weights, progress, cancel)


def _build_backbone(spec: BackboneSpec, weights: str, progress: ProgressCallback,
                    cancel: CancelToken | None) -> keras.Model:
    import keras

    size = (spec.image_size, spec.image_size, 3)
    if weights == "none":
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
    if spec.name == "tiny":
        if weights == "imagenet":
            raise BackboneError("the tiny backbone has no ImageNet weights; use --weights none")
        model = _tiny_backbone(size)
        if weights != "none":
            model.load_weights(str(Path(weights).expanduser()))
        model.trainable = False
        return model
    ctor = functools.partial(getattr(keras.applications, spec.constructor), include_top=False,
                             input_shape=size)
    if weights == "imagenet":
        from app.core.features.weights import WeightsUnavailable, imagenet_weights

        try:
            source: str | None = str(imagenet_weights(
                spec.name, functools.partial(ctor, weights="imagenet"), progress, cancel))
        except WeightsUnavailable as exc:
            raise BackboneError(str(exc)) from exc
    elif weights == "none":
        source = None
    else:
        return _from_file(spec, ctor, str(Path(weights).expanduser()), weights)
    try:
        model = ctor(weights=source)
    except (ValueError, OSError) as exc:
        fits = _which_backbone_fits(source) if source and weights != "imagenet" else ""
        raise BackboneError(
            f"cannot load weights {shown(weights)!r} into {spec.title}: "
            + (fits or str(exc).splitlines()[0][:200])) from exc
    model.trainable = False
    return model


def _from_file(spec: BackboneSpec, ctor, path: str, shown_as: str) -> keras.Model:
    """The backbone with a local weights file's weights, every one of them: a file of another
    shape is refused (Keras loads a file with extra layers, a 1000-class top say, with only a
    warning and leaves the layers it could not match at random values)."""
    import warnings

    model = ctor(weights=None)
    have = _weights_in_file(path)
    try:
        if have is None or have != model.count_params():
            raise ValueError("the file does not hold this backbone's weights")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            model.load_weights(path)
        if any("freshly-initialized" in str(w.message) for w in seen):
            raise ValueError("some of its layers did not match this backbone's")
    except (ValueError, OSError) as exc:
        fits = _which_backbone_fits(path)
        raise BackboneError(f"cannot load weights {shown(shown_as)!r} into {spec.title}: "
                            + (fits or str(exc).splitlines()[0][:200])) from exc
    model.trainable = False
    return model


def _weights_in_file(path: str) -> int | None:
    """How many numbers a Keras ``.weights.h5`` file holds (None: not such a file)."""
    try:
        import h5py

        total = [0]
        with h5py.File(path, "r") as fh:
            fh.visititems(lambda _k, v: total.__setitem__(
                0, total[0] + (v.size if isinstance(v, h5py.Dataset) else 0)))
        return total[0]
    except (OSError, ValueError, ImportError):
        return None


def _which_backbone_fits(path: str) -> str:
    """Why a weights file did not load, in a person's words: which backbone (without its
    ImageNet top) holds exactly as many weights as the file, or that none does. Builds each
    backbone once with random weights, only on this error path."""
    import keras

    have = _weights_in_file(path)
    if have is None:
        return "the file is not a Keras weights file (.weights.h5)"
    for other in BACKBONES.values():
        if other.name == "tiny":
            continue
        size = (other.image_size, other.image_size, 3)
        model = getattr(keras.applications, other.constructor)(include_top=False,
                                                               weights=None, input_shape=size)
        count = model.count_params()
        keras.backend.clear_session()
        if count == have:
            return (f"the file holds weights for {other.title} (without its ImageNet top): "
                    f"choose that backbone")
        if 1_000_000 < have - count < 3_000_000 and (have - count) % 1000 == 0:
            return (f"the file holds {other.title} with its 1000-class ImageNet top: use the "
                    f"file without the top (include_top=False)")
    return f"it fits none of the backbones ({have:,} weights in the file)"


def _tiny_backbone(size: tuple[int, int, int]) -> keras.Model:
    import keras
    from keras import layers

    inp = keras.Input(size)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="tiny_block1")(inp)
    x = layers.MaxPooling2D(2, name="tiny_pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="tiny_block2")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="tiny_block3")(x)
    x = layers.MaxPooling2D(2, name="tiny_pool2")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="tiny_block4")(x)
    return keras.Model(inp, x, name="tiny")


def pixel_input(spec: BackboneSpec):
    """A caching extractor's input: uint8 pixels (a quarter of float32's bytes to move to the
    device), made float and scaled inside the graph. Returns ``(input, scaled tensor)``."""
    import keras

    inp = keras.Input((spec.image_size, spec.image_size, 3), dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1.0, name="pixels_to_float")(inp)  # a cast to compute dtype
    scale = scaling_layer(spec)
    return inp, (scale(x) if scale is not None else x)


def scaling_layer(spec: BackboneSpec) -> keras.layers.Layer | None:
    """The backbone's input scaling as a built-in Keras layer (saved and loaded safely)."""
    import keras
    import numpy as np

    if spec.scaling == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_pixels")
    if spec.scaling == "caffe":
        # RGB -> BGR and ImageNet mean subtracted, as a fixed 1x1 convolution.
        layer = keras.layers.Conv2D(3, 1, name="scale_pixels_caffe", trainable=False)
        layer.build((None, None, None, 3))
        kernel = np.zeros((1, 1, 3, 3), np.float32)
        for out_ch, in_ch in enumerate((2, 1, 0)):
            kernel[0, 0, in_ch, out_ch] = 1.0
        layer.set_weights([kernel, -np.asarray(_IMAGENET_MEAN_BGR, np.float32)])
        return layer
    return None


def build_extractor(spec: BackboneSpec, weights: str, backbone: keras.Model | None = None,
                    progress: ProgressCallback = no_progress,
                    cancel: CancelToken | None = None) -> keras.Model:
    """Pixels (0..255) -> ``[main (N, C), aux1 (N, h, w, c), aux2 (N, h, w, c)]``."""
    from app.core.base.device import configure

    configure()
    import keras

    base = backbone if backbone is not None else build_backbone(spec, weights, progress, cancel)
    inp, x = pixel_input(spec)
    model = keras.Model(inp, _pooled_taps(spec, base, x, spec.aux_layers),
                        name=f"{spec.name}_extractor")
    model.trainable = False
    return model


def build_image_model(spec: BackboneSpec, weights: str, backbone: keras.Model | None = None,
                      aux_layers: tuple[str, str] | None = None) -> keras.Model:
    """Pixels (0..255) -> the main tap (layer ``main_tap``): the front half of an exported
    classifier; with ``aux_layers`` (the backbone layers the aux taps come from) ->
    ``[main_tap, aux1_tap, aux2_tap]``, pooled as the cache pools them."""
    from app.core.base.device import configure

    configure()
    import keras
    from keras import layers

    base = backbone if backbone is not None else build_backbone(spec, weights)
    inp = keras.Input((spec.image_size, spec.image_size, 3), name="pixels")
    scale = scaling_layer(spec)
    x = scale(inp) if scale is not None else inp
    if aux_layers is None:
        out = layers.GlobalAveragePooling2D(name="main_tap")(base(x))
        return keras.Model(inp, out, name=f"{spec.name}_features")
    return keras.Model(inp, _pooled_taps(spec, base, x, aux_layers),
                       name=f"{spec.name}_features")


def pool_taps(main, aux1, aux2) -> list:
    """The main map global-average-pooled (layer ``main_tap``) and the two aux maps pooled
    5x5/3 (``aux1_tap``, ``aux2_tap``), GoogLeNet's way: how the cache, the fine-tune model
    and the exported model pool the taps, layer names included."""
    from keras import layers

    return [layers.GlobalAveragePooling2D(name="main_tap")(main),
            layers.AveragePooling2D(AUX_POOL[0], strides=AUX_POOL[1], name="aux1_tap")(aux1),
            layers.AveragePooling2D(AUX_POOL[0], strides=AUX_POOL[1], name="aux2_tap")(aux2)]


def _pooled_taps(spec: BackboneSpec, base: keras.Model, x, aux_layers) -> list:
    """:func:`pool_taps` of ``base``'s output and of its ``aux_layers``, on the tensor ``x``."""
    import keras

    taps = keras.Model(base.input, [base.output, *(base.get_layer(n).output
                                                   for n in aux_layers)],
                       name=f"{spec.name}_taps")
    return pool_taps(*taps(x))
