"""The whole path from a folder of photos to an exported classifier, as steps the CLI and the
window both drive: cache what is missing, load the cached taps per split, train, evaluate on
the test split, export."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.core.base.jobs import Cancelled, CancelToken, ProgressCallback, no_progress
from app.core.base.paths import user_cache_dir
from app.core.features.backbones import get_spec
from app.core.features.caching import DEFAULT_BATCH, CacheJob, CacheResult
from app.core.features.keys import features_key, key_precision, key_signature
from app.core.intake.dataset import SPLITS, Dataset, scan_dataset
from app.core.storage.store import FeatureStore
from app.core.training.feeds import FeatureSource, SplitData
from app.core.training.fit import TrainResult, TrainSettings, build_model, predict_split, train_head
from app.core.trust.calibration import log_probs_as_logits, softmax
from app.core.trust.evaluation import Evaluation, score
from app.core.trust.fit import Trust, fit_trust, main_outputs
from app.core.trust.unknown import DEFAULT_METHOD

if TYPE_CHECKING:
    from app.core.delivery.export import ExportReport
    from app.core.delivery.predict import Predictor


def load_splits(dataset: Dataset, model_key: str, cache_dir: str | Path | None = None
                ) -> dict[str, SplitData]:
    """Labels, paths and digests of every split, their features streamed from the store on
    demand (training never runs the frozen backbone, nor holds a whole split in memory)."""
    index = {c: i for i, c in enumerate(dataset.classes)}
    folder = Path(cache_dir or user_cache_dir())
    with FeatureStore(folder) as store:
        digests = {r.digest for r in dataset.images}
        missing = digests - store.cached_digests(model_key, digests)
    if missing:
        raise KeyError(f"{len(missing)} images have no cached features for {model_key}")
    source = FeatureSource(folder, model_key)
    return {split: SplitData(None, np.array([index[r.label] for r in recs], np.int64),
                             [r.path for r in recs], [r.digest for r in recs], source)
            for split in SPLITS for recs in [dataset.subset(split)]}


def evaluate_head(result: TrainResult, data: SplitData, trust: Trust | None = None
                  ) -> Evaluation:
    """Scores of the trained model (main and aux outputs) on ``data``'s cached features; the
    main probabilities calibrated with ``trust``'s temperature, scored before and after."""
    trust = trust or Trust()
    if len(data) == 0:
        empty = np.zeros((0, len(result.classes)))
        return score(result.classes, data.labels, empty, [], uncalibrated=empty,
                     temperature=trust.temperature)
    probs = predict_split(result, data)
    aux = {o: p for o, p in probs.items() if o != "main"}
    features, logits = main_outputs(result, data)
    calibrated = softmax(logits, trust.temperature)
    unknown = None
    if trust.detector is not None:
        unknown = trust.detector.flags(trust.detector.score(features, calibrated))
    ev = score(result.classes, data.labels, calibrated, data.paths, aux,
               uncalibrated=softmax(logits), temperature=trust.temperature, unknown=unknown)
    if trust.note and ev.calibration is not None:
        ev.calibration["note"] = trust.note  # e.g. why T was not allowed to sharpen
    return ev


@dataclass
class Retraining:
    """One run's inputs and everything it produced so far."""

    data_dir: str | Path
    backbone: str = "inception_v3"
    weights: str = "imagenet"
    cache_dir: str | Path | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    dataset: Dataset | None = None
    cache: CacheResult | None = None
    splits: dict[str, SplitData] | None = None
    result: TrainResult | None = None
    evaluation: Evaluation | None = None
    trust: Trust | None = None  # temperature fitted on the validation split after training
    unknown_method: str = DEFAULT_METHOD  # the "unknown" score (app.core.trust.unknown.METHODS)
    training_warnings: list[str] = field(default_factory=list)  # classes left out

    def run_cache(self, progress: ProgressCallback = no_progress,
                  cancel: CancelToken | None = None, retry_skipped: bool = False,
                  engine: str = "local", ray_address: str | None = None,
                  batch_size: int = DEFAULT_BATCH) -> CacheResult:
        """Cache what the mode trains from (``batch_size`` images a backbone batch);
        ``engine`` "ray" computes on a Ray cluster (``ray_address``, else RAY_ADDRESS, else a
        local Ray) into the same store."""
        self.cache, self.dataset = CacheJob(self.dataset or self.data_dir, self.backbone,
                                            self.weights, self.cache_dir, batch_size,
                                            retry_skipped=retry_skipped,
                                            mode=self.settings.mode, engine=engine,
                                            ray_address=ray_address).run(progress, cancel)
        return self.cache

    def _ensure_cached(self, progress: ProgressCallback, cancel: CancelToken | None) -> Dataset:
        """Cache what is missing; the dataset training uses (images excluded by the user and
        classes with < 2 images left out, the latter listed in :attr:`training_warnings`)."""
        if self.cache is None or self.cache.cancelled or self.cache.mode != self.settings.mode:
            self.run_cache(progress, cancel)
            if self.cache.cancelled:
                raise Cancelled()
        from app.core.intake.labels import excluded

        dataset = self.dataset
        left_out = excluded(self.cache_dir or user_cache_dir(), dataset.root)
        if left_out:
            dataset = dataset.without({d: "excluded from training" for d in left_out})
        dataset, self.training_warnings = dataset.for_training()
        return dataset

    def _stamp(self, result: TrainResult) -> TrainResult:
        result.model_key, result.backbone, result.weights = (self.cache.model_key, self.backbone,
                                                             self.weights)
        return result

    def run_training(self, progress: ProgressCallback = no_progress,
                     cancel: CancelToken | None = None) -> TrainResult:
        dataset = self._ensure_cached(progress, cancel)
        judged = train_and_judge(dataset, self.cache.model_key, self.cache_dir, self.settings,
                                 self._backbone(), progress, cancel, self.unknown_method)
        return self._adopt(judged)

    def _adopt(self, judged: Judged) -> TrainResult:
        self.splits, self.result = judged.splits, self._stamp(judged.result)
        self.trust, self.evaluation = judged.trust, judged.evaluation
        return self.result

    def run_training_isolated(self, progress: ProgressCallback = no_progress,
                              cancel: CancelToken | None = None) -> TrainResult:
        """:meth:`run_training` with the training itself in a child process.

        For a GUI: TensorFlow compiling the training step would hold this process's GIL for
        ~150 ms at a time. The trained model comes back as a weights file; results are the
        same.
        """
        import tempfile

        from app.core.base.isolation import run_isolated

        dataset = self._ensure_cached(progress, cancel)
        with tempfile.TemporaryDirectory(prefix="bottleneck-train-") as tmp:
            weights = str(Path(tmp) / "trained.weights.h5")
            judged: Judged = run_isolated(train_in_child, {
                "dataset": dataset, "model_key": self.cache.model_key,
                "cache_dir": self.cache_dir, "settings": self.settings,
                "backbone": self._backbone(), "weights_file": weights,
                "unknown_method": self.unknown_method}, progress, cancel)
            shape = judged.result.shape
            model, head, base, _, _ = build_model(self.settings, lambda _: shape,
                                                  self._backbone())
            model.load_weights(weights)
        judged.result = replace(judged.result, head=head, model=model, base=base)
        judged.splits = load_splits(dataset, self.cache.model_key, self.cache_dir)
        return self._adopt(judged)

    def _backbone(self) -> tuple:
        return (get_spec(self.backbone), self.weights)

    def _trained(self) -> TrainResult:
        """The trained head, refused when it no longer matches the features it was trained on
        (another backbone cached since, or its weights file changed on disk)."""
        result = self.result
        if result is None or self.splits is None:
            raise RuntimeError("train a model first")
        current = features_key(get_spec(result.backbone), result.weights,
                               result.settings.mode, key_signature(result.model_key))
        if current != result.model_key or (self.cache is not None
                                           and self.cache.model_key != result.model_key):
            raise RuntimeError(f"the trained model belongs to the {result.backbone} features "
                               "it was trained on, which are no longer the current ones; "
                               "train again")
        return result

    def export(self, out_dir: str | Path, formats: tuple[str, ...] = ("keras",),
               trust: Trust | None = None, review=None) -> ExportReport:
        """``trust``: this run's with the unknown threshold the user chose (default: the
        fitted one). The evaluation and ``review`` (default: made now) go into the folder,
        so that the Evaluate page shows them when the folder is opened again."""
        from app.core.delivery.export import export_model
        from app.core.pipeline.review import review as review_of
        from app.core.pipeline.review import review_document

        result = self._trained()
        trust = trust or self.trust or Trust(note="no calibration was fitted")
        evaluation = None
        if self.evaluation is not None:
            review = review or review_of(self)
            evaluation = review_document(self.evaluation, review, str(self.dataset.root))
        return export_model(
            out_dir, spec=get_spec(result.backbone), weights=result.weights, result=result,
            trust=trust,
            validation=self.splits["validation"], precision=key_precision(result.model_key),
            extra_metadata={
                "dataset": str(self.dataset.root),
                "split": {s: len(self.splits[s]) for s in SPLITS},
                "split_fractions": [self.dataset.split_spec.train,
                                    self.dataset.split_spec.validation,
                                    self.dataset.split_spec.test],
                "test": None if self.evaluation is None else {
                    k: getattr(self.evaluation, k) for k in
                    ("count", "main_accuracy", "accuracy_interval", "balanced_accuracy",
                     "aux1_accuracy", "aux2_accuracy", "few_images", "calibration",
                     "unknown_rate")},
                "training": result.summary()["settings"],
                "mode": result.settings.mode,
                "trainable_backbone_layers": result.trainable_backbone_layers,
                "best_epoch": result.best_epoch,
                "cancelled": result.cancelled,
                "left_out_classes": sorted(set(self.dataset.classes) - set(result.classes)),
            },
            formats=formats, evaluation=evaluation,
        )

    def hardest_training_images(self, n: int = 20) -> list[dict]:
        """The training images with the highest loss under the trained model (calibrated),
        hardest first: where mislabelled photos usually are."""
        from app.core.trust.evaluation import hardest

        result = self._trained()
        train = self.splits["train"]
        _, logits = main_outputs(result, train)
        temperature = self.trust.temperature if self.trust else 1.0
        return hardest(result.classes, train, softmax(logits, temperature), n)

    def predictor(self) -> Predictor:
        """The in-app classifier (backbone + heads in memory, answering as the export
        does), without exporting. A head-mode model answers photos already in this run's
        cache from their cached taps (float32 keys: a GPU's mixed-float16 features are
        computed by TensorFlow, not by the predictor's float32 backbone)."""
        from app.core.delivery.export import answer_taps, classifier_model
        from app.core.delivery.predict import CachedTaps, Predictor
        from app.core.features.backbones import weights_fingerprint

        result = self._trained()
        spec = get_spec(result.backbone)
        trust = self.trust or Trust()
        model = classifier_model(spec, result.weights, result.head, result.base,
                                 trust.temperature, answer_taps(spec, result))
        cached = None
        if result.settings.mode == "head" and key_precision(result.model_key) == "float32":
            cached = CachedTaps(Path(self.cache_dir or user_cache_dir()), result.model_key,
                                spec, weights_fingerprint(spec, result.weights))
        return Predictor(model, result.classes, spec.input_size, unknown=trust.detector,
                         cached=cached)


@dataclass
class Judged:
    """One training run and what was learned about it: the splits it read, the trained
    result, its trust (temperature, unknown detector, fitted on validation) and its
    evaluation on the test split."""

    splits: dict[str, SplitData] | None
    result: TrainResult
    trust: Trust
    evaluation: Evaluation


def train_and_judge(dataset: Dataset, model_key: str, cache_dir: str | Path | None,
                    settings: TrainSettings, backbone: tuple,
                    progress: ProgressCallback = no_progress,
                    cancel: CancelToken | None = None,
                    unknown_method: str = DEFAULT_METHOD) -> Judged:
    """load -> train -> trust -> evaluate, the one pipeline both the in-process and the
    child-process training run."""
    splits = load_splits(dataset, model_key, cache_dir)
    result = train_head(splits["train"], splits["validation"], dataset.classes, settings,
                        progress, cancel, backbone)
    trust = fit_trust(result, splits, unknown_method)
    return Judged(splits, result, trust, evaluate_head(result, splits["test"], trust))


def train_in_child(dataset: Dataset, model_key: str, cache_dir: str | Path | None,
                   settings: TrainSettings, backbone: tuple, weights_file: str,
                   progress: ProgressCallback = no_progress,
                   cancel: CancelToken | None = None,
                   unknown_method: str = DEFAULT_METHOD) -> Judged:
    """The child-process half of :meth:`Retraining.run_training_isolated`: the trained
    model (head, and top blocks when fine-tuning) is saved to ``weights_file``; what comes
    back is the same :class:`Judged`, without its Keras models and splits (they do not
    pickle; the parent rebuilds them)."""
    judged = train_and_judge(dataset, model_key, cache_dir, settings, backbone, progress,
                             cancel, unknown_method)
    judged.result.model.save_weights(weights_file)
    judged.result = replace(judged.result, head=None, model=None, base=None)
    judged.splits = None
    return judged


def evaluate_model_dir(model_dir: str | Path, data_dir: str | Path, split: str = "test",
                       progress: ProgressCallback = no_progress,
                       cancel: CancelToken | None = None) -> Evaluation:
    """Evaluate an exported model on the images of ``data_dir`` (its ``split``, or all).
    Images that cannot be scored (the scan skipped them, they do not decode, the model
    answers NaN) are listed in the result's ``skipped`` with why, never dropped silently."""
    from app.core.delivery.predict import ModelDirError, Predictor
    from app.core.intake.dataset import SplitSpec

    predictor = Predictor.from_dir(model_dir)  # metadata checked against the schema
    fractions = predictor.metadata.get("split_fractions")
    ds = scan_dataset(data_dir, split=SplitSpec(*fractions) if fractions else None)
    left_out = set(predictor.metadata.get("left_out_classes") or ())
    unknown = sorted({r.label for r in ds.images} - set(predictor.classes) - left_out)
    if unknown:
        raise ModelDirError(f"{data_dir} has classes the model does not know: "
                            f"{', '.join(unknown)}")
    recs = [r for r in (ds.images if split == "all" else ds.subset(split))
            if r.label not in left_out]
    preds = predictor.predict([r.path for r in recs], top_k=len(predictor.classes),
                              progress=progress, cancel=cancel)
    skipped = [s.as_dict() for s in ds.skipped]  # no split known: they never decoded
    skipped += [{"path": p.path, "reason": p.error} for p in preds if p.error is not None]
    index = {c: i for i, c in enumerate(predictor.classes)}
    ok = [(r, p) for r, p in zip(recs, preds) if p.error is None]
    probs = np.zeros((len(ok), len(index)))
    for row, (_, p) in enumerate(ok):
        for t in p.top:
            probs[row, index[t["label"]]] = t["probability"]
    true = np.array([index[r.label] for r, _ in ok], np.int64)
    temperature = float((predictor.metadata.get("calibration") or {}).get("temperature", 1.0))
    # the model outputs calibrated probabilities; log p is its logits / T up to a constant
    before = softmax(log_probs_as_logits(probs) * temperature)
    unknown = (np.array([p.unknown for _, p in ok], bool)
               if predictor.unknown is not None else None)
    return score(predictor.classes, true, probs, [r.path for r, _ in ok],
                 uncalibrated=before, temperature=temperature, unknown=unknown,
                 skipped=skipped)
