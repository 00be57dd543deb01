#!/usr/bin/env python3
"""Classify images with this model folder, without Bottleneck Studio (Pillow, numpy, and
Keras or ONNX Runtime).

    python predict.py IMAGE [IMAGE ...] [--top 3] [--json] [--runtime auto|keras|onnx]

A multi-label model (``"task": "multi-label"`` in metadata.json) prints each photo's tag set:
every tag whose probability reaches its threshold (``thresholds``), or "none of my tags".

``--runtime onnx`` runs ``model.onnx`` (exported with ``--format onnx``) with ONNX Runtime
alone: no TensorFlow, no Keras (``pip install onnxruntime pillow numpy``; on Windows
``onnxruntime-directml``, on NVIDIA ``onnxruntime-gpu``: this script asks for the best
execution provider installed). ``auto`` (the default) uses it when the folder has it and
onnxruntime is installed, else ``model.keras`` with Keras.

Images are decoded exactly as the app decodes them (``metadata.json``, "preprocessing"): JPEGs
with Pillow's ``draft`` (DCT scaling) to the smallest size still at least the input size, EXIF
orientation applied, transparency composited on white, 16-bit grayscale scaled to 8 bits, then
the whole image squashed to the input size with Pillow's bilinear filter. ``model.keras``
scales the pixels itself and outputs calibrated probabilities; it holds Keras' built-in layers
only, so ``keras.models.load_model`` opens it as it is. When the folder has an unknown
test (``metadata.json``, "unknown"), each answer also says whether the image looks like none of
the training classes.

The app writes this file into every model folder it exports; it imports nothing of the app.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent


def decode(path: str | Path, size: tuple[int, int], draft: bool = True) -> np.ndarray:
    """``(height, width, 3)`` uint8 pixels of ``path`` at ``size`` (width, height), as the
    app decodes them (``draft=False``: without the JPEG DCT scaling)."""
    with warnings.catch_warnings():  # as the app: Pillow's warnings stay off the terminal
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
        with Image.open(path) as im:
            if draft and im.format == "JPEG":
                im.draft("RGB", size)
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
            return np.asarray(rgb.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if im.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        elif peak > 255.0:
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def unknown_arrays(entry: dict, folder: Path = HERE) -> dict[str, np.ndarray]:
    """The arrays of metadata.json's "unknown" entry (its ``file``), as float32; none for a
    score that needs none. Read once: for knn scores up to 20,000 rows of features."""
    if not entry.get("file"):
        return {}
    with np.load(Path(folder) / entry["file"]) as data:
        return {k: np.asarray(data[k], np.float32) for k in data.files}


def unknown_scores(entry: dict, features: np.ndarray | None, probs: np.ndarray,
                   arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The score of metadata.json's "unknown" entry (higher: more like the training classes);
    ``arrays`` from :func:`unknown_arrays`."""
    method = entry["method"]
    if method == "max_probability":
        return probs.max(axis=1)
    feats = np.asarray(features, np.float32)
    if method in ("knn", "relative_knn"):
        unit = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        sims = unit @ arrays["reference"].T
        k = min(int(entry["k"]), sims.shape[1])
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        score = np.take_along_axis(sims, nearest, axis=1).mean(axis=1)
        if method == "relative_knn":  # minus the neighbours' own similarity to theirs
            score = score - arrays["density"][nearest].mean(axis=1)
        return score
    z = feats @ arrays["whitening"]
    means = arrays["means"]
    dist = (z ** 2).sum(1, keepdims=True) - 2 * z @ means.T + (means ** 2).sum(1)[None]
    return -dist.min(axis=1)


def _onnx_available(meta: dict) -> bool:
    if not (meta.get("onnx") or {}).get("file"):
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _onnx_model(meta: dict, needs_features: bool):
    """model.onnx in ONNX Runtime, as a function pixels -> [probabilities(, main tap)]."""
    import onnxruntime as ort

    entry = meta["onnx"]
    if needs_features and "main_tap" not in entry.get("outputs", []):
        raise SystemExit("model.onnx was exported without the features the unknown test needs")
    preferred = ("CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
                 "CPUExecutionProvider")
    have = ort.get_available_providers()
    session = ort.InferenceSession(str(HERE / entry["file"]),
                                   providers=[p for p in preferred if p in have])
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels})


def _keras_model(needs_features: bool):
    import keras

    model = keras.saving.load_model(HERE / "model.keras", safe_mode=True)
    if needs_features:
        model = keras.Model(model.input, [model.output, model.get_layer("main_tap").output])
    def run(pixels):
        result = model.predict_on_batch(pixels)
        return result if isinstance(result, (list, tuple)) else [result]

    return run


def predict(paths: list[str], top: int = 3, runtime: str = "auto") -> list[dict]:
    meta = json.loads((HERE / "metadata.json").read_text("utf-8"))
    classes, (width, height) = meta["classes"], meta["image_size"]
    unknown = meta.get("unknown") or {}
    thresholds = meta.get("thresholds") if meta.get("task") == "multi-label" else None
    needs_features = unknown.get("method") not in (None, "max_probability")
    arrays = unknown_arrays(unknown) if unknown.get("method") else {}
    if runtime == "auto":
        runtime = "onnx" if _onnx_available(meta) else "keras"
    model = (_onnx_model(meta, needs_features) if runtime == "onnx"
             else _keras_model(needs_features))
    out = []
    for path in paths:
        entry = {"path": path, "top": [], "unknown": None, "score": None, "error": None}
        out.append(entry)
        try:
            pixels = decode(path, (width, height))[None].astype(np.float32)
        except Exception as exc:  # one unreadable file never stops the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
            continue
        result = model(pixels)
        probs = np.asarray(result[0])
        feats = np.asarray(result[1]) if needs_features else None
        order = np.argsort(-probs[0])[:max(1, top)]
        entry["top"] = [{"label": classes[j], "probability": float(probs[0, j])} for j in order]
        if thresholds is not None:  # several tags a photo: each tag at or above its threshold
            entry["tags"] = [{"label": classes[j], "probability": float(probs[0, j])}
                             for j in np.argsort(-probs[0])
                             if probs[0, j] >= float(thresholds[classes[j]])]
        if unknown.get("method"):
            score = float(unknown_scores(unknown, feats, probs, arrays)[0])
            entry["score"], entry["unknown"] = score, score < float(unknown["threshold"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with this model folder.")
    parser.add_argument("paths", nargs="+", metavar="IMAGE")
    parser.add_argument("--top", type=int, default=3, help="how many labels per image")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--runtime", choices=("auto", "keras", "onnx"), default="auto",
                        help="model.onnx with ONNX Runtime, or model.keras with Keras "
                             "(auto: ONNX when the folder and onnxruntime have it)")
    args = parser.parse_args(argv)
    results = predict(args.paths, args.top, args.runtime)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    for r in results if not args.json else ():
        if r["error"]:
            print(f"{r['path']}: error: {r['error']}")
            continue
        best = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top"])
        if "tags" in r:
            best = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["tags"]) or (
                "none of my tags")
        flag = " (unknown: like none of the training classes)" if r["unknown"] else ""
        print(f"{r['path']}: {best}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
