"""Cached features streamed from the store in shuffled batches, so that training, evaluation
and the export parity check hold a few batches in memory, never a whole split.

A :class:`SplitData` is one split's labels, paths and digests plus where its features live: a
:class:`FeatureSource` over the store (the app's path) or arrays in memory (small synthetic
data in tests). Rows read from the store may be kept in RAM up to a fixed budget, so a small
dataset streams from memory after the first epoch and a large one stays bounded.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.core.storage.store import CUT, FeatureStore

RAM_BUDGET_BYTES = 512 << 20  # rows kept in memory across epochs; the rest is re-read


class FeatureSource:
    """Reads rows of one model key's tensors by digest; one store connection per thread."""

    def __init__(self, cache_dir: str | Path, model_key: str, ram_budget: int | None = None
                 ) -> None:
        self.cache_dir, self.model_key = Path(cache_dir), model_key
        self.ram_budget = RAM_BUDGET_BYTES if ram_budget is None else ram_budget
        self._local = threading.local()
        self._ram: dict[tuple[str, str], np.ndarray] = {}
        self._ram_bytes = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # pickles into a child process without its connections
        return {"cache_dir": self.cache_dir, "model_key": self.model_key,
                "ram_budget": self.ram_budget}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _store(self) -> FeatureStore:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = FeatureStore(self.cache_dir)
        return store

    def shapes(self) -> dict[str, tuple[int, ...]]:
        spec = self._store().model_spec(self.model_key)
        if spec is None:
            raise KeyError(f"no features cached for model {self.model_key}")
        return {t: tuple(s) for t, s in spec["shapes"].items()}

    def rows(self, digests: Sequence[str], taps: Sequence[str]) -> dict[str, np.ndarray]:
        """float16 arrays of ``taps`` for ``digests``, in that order."""
        out: dict[str, np.ndarray] = {}
        for tap in taps:
            missing = [d for d in dict.fromkeys(digests) if (tap, d) not in self._ram]
            fetched: dict[str, np.ndarray] = {}
            if missing:
                store = self._store()
                if tap == CUT:
                    arr = store.load_arrays(self.model_key, missing)
                else:
                    arr = getattr(store.load_features(self.model_key, missing, (tap,)), tap)
                fetched = dict(zip(missing, arr))
                self._keep(tap, fetched)
            out[tap] = np.stack([self._ram.get((tap, d), fetched.get(d)) for d in digests]) \
                if digests else np.zeros((0, *self.shapes()[tap]), np.float16)
        return out

    def _keep(self, tap: str, rows: dict[str, np.ndarray]) -> None:
        with self._lock:
            for d, row in rows.items():
                if self._ram_bytes + row.nbytes > self.ram_budget:
                    return
                self._ram[(tap, d)] = np.array(row)  # a copy: never pin a whole shard map
                self._ram_bytes += row.nbytes


@dataclass
class SplitData:
    """One split: integer labels (or, several tags a photo, a multi-hot float32 matrix
    (N, tags)), image paths and digests, and where its features are."""

    features: dict[str, np.ndarray] | None
    labels: np.ndarray
    paths: list[str]
    digests: list[str] = field(default_factory=list)
    source: FeatureSource | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, index: Sequence[int] | np.ndarray, taps: Sequence[str]) -> dict[str, np.ndarray]:
        """Features of the images at ``index`` (positions in this split), as the store keeps
        them (float16): the model casts them to its own dtype on its device, inside the
        compiled step. Converting on the host instead cost ~24 ms a batch of 64 cut tensors and
        capped the feed at ~1,800 a second from RAM (``benchmarks/feed_rate.py``)."""
        index = np.asarray(index, np.int64)
        if self.features is not None:
            return {t: np.asarray(self.features[t][index]) for t in taps}
        assert self.source is not None, "a split needs features or a source"
        return self.source.rows([self.digests[i] for i in index], taps)

    def take(self, index: Sequence[int] | np.ndarray) -> SplitData:
        """The images at ``index`` as a split of their own (features still where they are)."""
        index = np.asarray(index, np.int64)
        feats = (None if self.features is None
                 else {t: a[index] for t, a in self.features.items()})
        return SplitData(feats, self.labels[index], [self.paths[i] for i in index],
                         [self.digests[i] for i in index] if self.digests else [],
                         self.source)

    def shapes(self, taps: Sequence[str]) -> dict[str, tuple[int, ...]]:
        if self.features is not None:
            return {t: tuple(self.features[t].shape[1:]) for t in taps}
        shapes = self.source.shapes()
        return {t: shapes[t] for t in taps}

    def batches(self, taps: Sequence[str], batch_size: int = 256):
        """(index, features) in order, for prediction: a batch in memory at a time."""
        for start in range(0, len(self), batch_size):
            index = np.arange(start, min(start + batch_size, len(self)))
            yield index, model_input(self.rows(index, taps))


def model_input(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows as the model is handed them. Where it computes in float32 (a CPU) they are cast
    here, on the host: it costs the same there, and a float16 tensor handed to TensorFlow on
    a CPU without AVX-512 prints oneDNN's "supports DT_HALF only on platforms with AVX-512"
    to the user's terminal. On a GPU the float16 rows travel as they are (half the bytes)
    and the device casts them inside the compiled step."""
    from app.core.base.device import compute_precision

    if compute_precision() != "float32":
        return x
    return {name: v.astype(np.float32) for name, v in x.items()}


def make_feed(split: SplitData, inputs: Sequence[str], outputs: Sequence[str], n_classes: int,
              batch_size: int, shuffle: bool, seed: int,
              sample_weights: np.ndarray | None = None, flip: bool = False):
    """A Keras ``PyDataset`` over ``split``: (x by input name, one-hot y by output name (the
    multi-hot rows when the split's labels are a matrix: several tags a photo),
    sample weights by output name). Shuffled anew each epoch from ``seed`` when asked;
    ``flip`` mirrors half the cut tensors of each batch left-right (augmentation)."""
    import keras

    class Feed(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(split))
            self.eye = np.eye(n_classes, dtype=np.float32)
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self) -> int:
            return math.ceil(len(split) / batch_size)

        def __getitem__(self, i: int):
            index = self.order[i * batch_size:(i + 1) * batch_size]
            x = split.rows(index, inputs)
            if flip:
                mirror = self.rng.random(len(index)) < 0.5
                for name in x:
                    if x[name].ndim == 4:
                        x[name][mirror] = x[name][mirror][:, :, ::-1]
            x = model_input(x)
            labels = split.labels[index]
            # several tags a photo: the labels are a multi-hot matrix already
            target = labels.astype(np.float32) if labels.ndim == 2 else self.eye[labels]
            y = {o: target for o in outputs}
            if sample_weights is None:
                return x, y
            return x, y, {o: sample_weights[index] for o in outputs}

        def on_epoch_end(self) -> None:
            if shuffle:
                self.rng.shuffle(self.order)

    return Feed()
