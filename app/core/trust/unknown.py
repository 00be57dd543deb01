""""Unknown": how much an image looks like the training classes, and a threshold on it.

Four scores, all "higher = more like the training classes", computed from an image's
main-tap features (what the head reads) and its calibrated probabilities:

- ``max_probability``: the calibrated top-1 probability.
- ``knn``: mean cosine similarity to the ``k`` nearest training images' features.
- ``relative_knn`` (the default): the same, minus those neighbours' own mean similarity to
  their ``k`` nearest training images (their "density", computed once at fit time). A photo
  among a class whose photos vary a lot is not penalised for that class's spread, and one that
  sits just off a tight class is: the idea of the local outlier factor (Breunig et al. 2000).
- ``mahalanobis``: minus the smallest Mahalanobis distance to a class mean, with one covariance
  shared by all classes and shrunk towards a multiple of the identity (Ledoit-Wolf), since a
  class has fewer images than the features have dimensions.

The threshold is the score below which only ``1 - keep`` of the known images fall, so that
``keep`` (95%) of images like the known ones stay known. For ``max_probability`` and
``mahalanobis`` the known images are the validation split. For the knn scores on frozen
features (the head-only mode) they are the validation split *and* up to ``LOO_ROWS`` training
images, each scored against the other training images (leave-one-out): nothing was fitted to
make training images' features alike, and ~120 validation images alone set the 5% quantile too
noisily (measured: 19.8% of Oxford-17's test flowers flagged with the validation-only
threshold, 11.1% with the pooled one). In the fine-tune mode the features come out of blocks
trained on the training images, which sit closer together than new ones: the validation split
alone.

What the test needs is written beside an exported model as ``unknown.npz`` (float16; for the
knn scores up to 20,000 training images' features, ~40 MB with MobileNet's 1024, and for
relative_knn one density a row) and described in ``metadata.json``. With fewer than ``k + 1``
training images a density is the mean over the other rows there are (none: 0).
Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.base.errors import SettingsError
from app.core.storage.model_folder import (
    UNKNOWN,
    ModelDirError,
    check_schema,
    check_unknown_arrays,
    load_arrays,
    regular_file,
)

# Measured (benchmarks/unknown_scores.py, Oxford-17, MobileNet, 3 flower classes held out, 17
# non-flower photos; the choice made by 30 random re-splits of the training and validation
# images, the test split untouched): relative_knn separates photos of no flower at all
# perfectly (AUROC 1.000, all flagged) like knn, and flowers of a held-out class far better
# (AUROC 0.92 vs 0.73 over the re-splits), with the same 5% of known images flagged. The
# calibrated max probability flags 15% of the known test flowers: its validation scores are
# optimistic (the head was early-stopped and calibrated on them).
DEFAULT_METHOD = "relative_knn"
KEEP_KNOWN = 0.95
KNN_K = 5
MAX_REFERENCE_ROWS = 20000  # the knn scores keep at most this many training images (a sample)
LOO_ROWS = 2000  # the knn scores: training images scored leave-one-out for the threshold
FILE_NAME = "unknown.npz"
ARRAYS = ("reference", "density", "means", "whitening")  # what unknown.npz may hold
# the knn scores: images scored at a time; with 20,000 reference rows each block is 20 MB of
# similarities and 40 MB of argpartition's int64 indices
CHUNK_ROWS = 256


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def shrunk_covariance(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf: the covariance of already centred rows, shrunk towards ``mu * I``;
    returns it with the shrinkage used."""
    x = np.asarray(centred, np.float64)
    n, d = x.shape
    cov = x.T @ x / n
    mu = np.trace(cov) / d
    x2 = x ** 2
    beta = (np.sum(x2.T @ x2) / n - np.sum(cov ** 2)) / (d * n)
    delta = (np.sum(cov ** 2) - 2 * mu * np.trace(cov) + d * mu ** 2) / d
    beta = min(beta, delta)
    shrinkage = 0.0 if delta <= 0 else float(beta / delta)
    return (1 - shrinkage) * cov + shrinkage * mu * np.eye(d), shrinkage


class Score:
    """One "unknown" score: what it reads, what it keeps beside a model, how it is fitted and
    computed, and how it is said (in ``metadata.json`` and in the window). Higher scores mean
    more like the training classes."""

    name = ""
    reads_features = True  # False: only the calibrated probabilities
    arrays: tuple[str, ...] = ()  # what it keeps in unknown.npz

    def describe_arrays(self, k: int) -> dict[str, str]:
        return {}

    def how(self, k: int) -> str:  # metadata.json's "score"
        raise NotImplementedError

    def said(self, k: int) -> str:  # the window's words for it
        raise NotImplementedError

    def fit(self, det: UnknownDetector, feats: np.ndarray, labels: np.ndarray, n_classes: int,
            rng: np.random.Generator, pool_training: bool) -> np.ndarray:
        """Fill ``det``'s arrays from the training split; returns extra known-image scores
        for the threshold (training images scored without themselves), possibly none."""
        return np.zeros(0)

    def score(self, det: UnknownDetector, feats: np.ndarray | None, probs: np.ndarray,
              leave_out: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def width(self, det: UnknownDetector) -> int | None:
        """The feature width a loaded detector's arrays expect (None: it reads none)."""
        return None


class MaxProbability(Score):
    name, reads_features = "max_probability", False

    def how(self, k: int) -> str:
        return "the calibrated top-1 probability"

    def said(self, k: int) -> str:
        return "top probability"

    def score(self, det, feats, probs, leave_out):
        return np.asarray(probs, np.float64).max(axis=1)


_REFERENCE = "training images' main-tap features divided by their length, float16 (N, D)"


class Knn(Score):
    name, arrays = "knn", ("reference",)

    def describe_arrays(self, k: int) -> dict[str, str]:
        return {"reference": _REFERENCE}

    def how(self, k: int) -> str:
        return (f"mean cosine similarity of the main-tap features (the model's layer "
                f"'main_tap') to the {k} most similar rows of reference")

    def said(self, k: int) -> str:
        return f"similarity to the nearest training images (cosine, mean of {k})"

    def fit(self, det, feats, labels, n_classes, rng, pool_training):
        feats = np.asarray(feats, np.float32)
        if len(feats) > MAX_REFERENCE_ROWS:
            rows = rng.choice(len(feats), MAX_REFERENCE_ROWS, replace=False)
            feats = feats[np.sort(rows)]
        if not len(feats):
            raise SettingsError("the training split is empty: no image to compare with")
        det.reference = _normalise(feats).astype(np.float16).astype(np.float32)
        self.fit_more(det)
        if not pool_training or len(feats) <= det.k:  # too few to score one without itself
            return np.zeros(0)
        loo = np.sort(rng.choice(len(feats), min(LOO_ROWS, len(feats)), replace=False))
        det.known_images = (f"the validation images and {len(loo)} training images "
                            "(each scored without itself)")
        return det.score(feats[loo], np.zeros((len(loo), 1)), leave_out=loo)

    def fit_more(self, det: UnknownDetector) -> None:
        pass

    def score(self, det, feats, probs, leave_out):
        return det._nearest(np.asarray(feats, np.float32), leave_out)[0].mean(axis=1) \
            .astype(np.float64)

    def width(self, det):
        return None if det.reference is None else int(det.reference.shape[1])


class RelativeKnn(Knn):
    name, arrays = "relative_knn", ("reference", "density")

    def describe_arrays(self, k: int) -> dict[str, str]:
        return {"reference": _REFERENCE,
                "density": f"for each row of reference, the mean cosine similarity of its "
                           f"{k} most similar other rows, float16 (N,)"}

    def how(self, k: int) -> str:
        return super().how(k) + ", minus the mean of those rows' density"

    def said(self, k: int) -> str:
        return super().said(k) + " minus how alike those images are among themselves"

    def fit_more(self, det):
        det.density = _density(det)

    def score(self, det, feats, probs, leave_out):
        top, idx = det._nearest(np.asarray(feats, np.float32), leave_out)
        density = np.asarray(det.density, np.float32)
        return (top.mean(axis=1) - density[idx].mean(axis=1)).astype(np.float64)


class Mahalanobis(Score):
    name, arrays = "mahalanobis", ("means", "whitening")

    def describe_arrays(self, k: int) -> dict[str, str]:
        return {"means": "class means of the main-tap features, multiplied by whitening, "
                         "float16 (C, D)",
                "whitening": "W with W W^T = inverse of the shared (Ledoit-Wolf shrunk) "
                             "covariance, float16 (D, D)"}

    def how(self, k: int) -> str:
        return ("minus the smallest squared distance between features @ whitening and a row "
                "of means")

    def said(self, k: int) -> str:
        return "closeness to the nearest class centre (minus a Mahalanobis distance)"

    def fit(self, det, feats, labels, n_classes, rng, pool_training):
        feats = np.asarray(feats, np.float64)
        labels = np.asarray(labels, np.int64)
        present = [c for c in range(n_classes) if (labels == c).any()]
        means = np.stack([feats[labels == c].mean(0) for c in present])
        centred = feats - means[np.searchsorted(present, labels)]
        cov, _ = shrunk_covariance(centred)
        eigval, eigvec = np.linalg.eigh(cov)
        w = eigvec / np.sqrt(np.maximum(eigval, eigval.max() * 1e-9))[None]
        det.whitening = w.astype(np.float16).astype(np.float32)
        det.means = (means @ w).astype(np.float16).astype(np.float32)
        return np.zeros(0)

    def score(self, det, feats, probs, leave_out):
        z = np.asarray(feats, np.float32) @ np.asarray(det.whitening, np.float32)
        means = np.asarray(det.means, np.float32)
        dist = ((z ** 2).sum(1, keepdims=True) - 2 * z @ means.T + (means ** 2).sum(1)[None])
        return -dist.min(axis=1).astype(np.float64)

    def width(self, det):
        return None if det.whitening is None else int(det.whitening.shape[0])


SCORES: dict[str, Score] = {s.name: s for s in (MaxProbability(), Knn(), RelativeKnn(),
                                                Mahalanobis())}
METHODS = tuple(SCORES)


def get_score(method: str) -> Score:
    if method not in SCORES:
        raise SettingsError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return SCORES[method]


@dataclass
class UnknownDetector:
    """A score for "looks like the training classes" and the threshold under which an image
    is called unknown."""

    method: str
    threshold: float = float("nan")
    k: int = KNN_K
    reference: np.ndarray | None = None  # knn, relative_knn: unit-length training features
    density: np.ndarray | None = None  # relative_knn: each reference row's own knn similarity
    means: np.ndarray | None = None  # mahalanobis: class means, whitened
    whitening: np.ndarray | None = None  # mahalanobis: W with W W^T = shared covariance^-1
    keep: float = KEEP_KNOWN
    known_images: str = "the validation images"  # what the threshold's quantile was taken on
    fitted: float = float("nan")  # the threshold as fitted (``threshold`` may be moved since)

    @property
    def fitted_threshold(self) -> float:
        """The threshold as fitted (a detector made by hand has only ``threshold``)."""
        return float(self.fitted) if np.isfinite(self.fitted) else float(self.threshold)

    @property
    def kind(self) -> Score:
        return get_score(self.method)

    @property
    def needs_features(self) -> bool:
        return self.kind.reads_features

    def score(self, features: np.ndarray | None, probs: np.ndarray,
              leave_out: np.ndarray | None = None) -> np.ndarray:
        """One score per image (rows of ``features`` and calibrated ``probs``). knn scores only:
        ``leave_out[i]`` is the row of ``reference`` that image i is (scored without itself)."""
        return self.kind.score(self, features, probs, leave_out)

    def _nearest(self, feats: np.ndarray, leave_out: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The cosine similarities of each row of ``feats`` to its ``k`` most similar rows of
        ``reference``, and those rows' indices (``leave_out[i]``: a row image i may not use).
        ``CHUNK_ROWS`` rows at a time: memory stays (rows, reference rows) small whatever
        the number of images scored."""
        reference = np.asarray(self.reference, np.float32)
        k = min(self.k, len(reference) - (leave_out is not None))
        feats = _normalise(feats)
        top = np.empty((len(feats), k), np.float32)
        idx = np.empty((len(feats), k), np.int64)
        for start in range(0, len(feats), CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            sims = feats[part] @ reference.T
            if leave_out is not None:
                sims[np.arange(len(sims)), leave_out[part]] = -np.inf
            np.negative(sims, out=sims)
            idx[part] = np.argpartition(sims, k - 1, axis=1)[:, :k]
            top[part] = -np.take_along_axis(sims, idx[part], axis=1)
        return top, idx

    def flags(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """True where an image is unknown: its score below ``threshold`` (default: the
        detector's own)."""
        return np.asarray(scores) < (self.threshold if threshold is None else threshold)

    def metadata(self) -> dict:
        """What ``metadata.json`` says about the test (the arrays are in ``unknown.npz``)."""
        arrays = self.kind.describe_arrays(self.k)
        how = self.kind.how(self.k)
        return {"method": self.method, "threshold": float(self.threshold), "k": self.k,
                "fitted_threshold": self.fitted_threshold,
                "threshold_set_by": threshold_origin(self.threshold, self.fitted_threshold),
                "keep_known": self.keep, "file": FILE_NAME if arrays else None,
                "arrays": arrays,
                "score": f"{how}; higher means more like the training classes",
                "rule": "unknown when score < threshold; the fitted threshold keeps "
                        f"{self.keep:.0%} of {self.known_images} known",
                "known_images": self.known_images}

    def save(self, folder: str | Path) -> None:
        arrays = {name: np.asarray(getattr(self, name), np.float16)
                  for name in ARRAYS if getattr(self, name) is not None}
        if arrays:
            with open(Path(folder) / FILE_NAME, "wb") as fh:
                np.savez(fh, **arrays)

    @classmethod
    def load(cls, folder: str | Path, meta: dict, n_classes: int | None = None
             ) -> UnknownDetector:
        """From a model folder's ``metadata.json`` entry ``unknown`` and its arrays; raises
        ValueError (a ModelDirError, for a folder's damage) when they are missing or
        damaged. The entry is checked against the schema first; the arrays file must be a
        regular file inside ``folder``, its arrays of sane headers, shapes and finite
        values (``n_classes``: at most one class mean per class)."""
        if not isinstance(meta, dict):
            raise ModelDirError("metadata.json: unknown must be an object")
        method = meta.get("method")
        if method not in SCORES:
            raise SettingsError(f"unknown-image method {method!r} not understood")
        check_schema(meta, UNKNOWN, "unknown.")
        if "threshold" not in meta:
            raise ModelDirError("metadata.json: unknown.threshold is missing")
        det = cls(method, float(meta["threshold"]), int(meta.get("k", KNN_K)),
                  keep=float(meta.get("keep_known", KEEP_KNOWN)))
        det.known_images = str(meta.get("known_images") or det.known_images)
        det.fitted = float(meta.get("fitted_threshold", det.threshold))
        name = meta.get("file")
        if name:
            arrays = load_arrays(regular_file(folder, name, "unknown.file"), ARRAYS)
            check_unknown_arrays(arrays, method, n_classes, name)
            for key, value in arrays.items():
                setattr(det, key, value)
        elif SCORES[method].arrays:
            raise ModelDirError(f"metadata.json: unknown.file must name the arrays of "
                                f"method {method}")
        return det


def feature_width(det: UnknownDetector) -> int | None:
    """The feature width D a loaded detector's arrays expect (None: it reads no features)."""
    return det.kind.width(det)


def threshold_origin(threshold: float, fitted: float) -> str:
    """``metadata.json``'s ``threshold_set_by``: the fit, or the user's slider."""
    return "the fit" if float(threshold) == float(fitted) else "the user (Evaluate page)"


def fit_detector(method: str, train_features: np.ndarray | None, train_labels: np.ndarray,
                 n_classes: int, val_features: np.ndarray | None, val_probs: np.ndarray,
                 keep: float = KEEP_KNOWN, k: int = KNN_K, seed: int = 0,
                 pool_training: bool = True) -> UnknownDetector:
    """Build the ``method``'s score from the training split and set its threshold so that
    ``keep`` of the known images stay known: the validation split, plus (knn scores) training images
    scored leave-one-out. Needs at least one validation image."""
    score = get_score(method)
    det = UnknownDetector(method, k=k, keep=keep)
    extra = np.zeros(0)
    if score.reads_features:
        extra = score.fit(det, train_features, train_labels, n_classes,
                          np.random.default_rng(seed), pool_training)
    if len(val_probs) == 0:
        raise SettingsError("the validation split is empty: no threshold can be set")
    scores = np.concatenate([det.score(val_features, val_probs), extra])
    det.threshold = det.fitted = float(np.quantile(scores, 1 - keep))
    return det


def _density(det: UnknownDetector) -> np.ndarray:
    """Each reference row's mean similarity to its ``k`` most similar other rows, float16
    values (what ``unknown.npz`` stores); zeros when there is no other row."""
    n = len(det.reference)
    if n < 2:
        return np.zeros(n, np.float32)
    density = det._nearest(det.reference, np.arange(n))[0].mean(axis=1)
    return density.astype(np.float16).astype(np.float32)


def reference_rows(n: int, seed: int = 0) -> np.ndarray:
    """Which of ``n`` training images a detector is built from (all, or a fixed sample of
    ``MAX_REFERENCE_ROWS``): only theirs need features computed."""
    if n <= MAX_REFERENCE_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_REFERENCE_ROWS, replace=False))


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that a known image scores higher than an unknown one (ties count half)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        return float("nan")
    both = np.concatenate([known, unknown])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    i = 0
    while i < len(both):  # average ranks over ties
        j = i
        while j + 1 < len(both) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_known = ranks[:len(known)].sum()
    return float((r_known - len(known) * (len(known) + 1) / 2) / (len(known) * len(unknown)))

