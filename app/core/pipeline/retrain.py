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
from app.core.features.keys import features_key, key_signature
from app.core.intake.dataset import SPLITS, Dataset, scan_dataset
from app.core.pipeline.trained import TrainedModel
from app.core.storage.store import FeatureStore
from app.core.training.feeds import FeatureSource, SplitData
from app.core.training.fit import TrainResult, TrainSettings, build_model, predict_split, train_head
from app.core.trust.calibration import log_probs_as_logits, softmax
from app.core.trust.evaluation import Evaluation, score
from app.core.trust.fitting import Trust, fit_trust, main_outputs
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


@dataclass(frozen=True)
class RunChoice:
    """What the user chose for the next run, as a value: the data folder, the backbone and
    its weights, where the backbone runs, and the training settings (their mode among them).
    The window keeps one and replaces it when a choice changes; a job gets it as it was."""

    folder: str = ""
    backbone: str = "inception_v3"
    weights: str = "imagenet"
    settings: TrainSettings = field(default_factory=TrainSettings)
    engine: str = "local"  # where the backbone runs: "local" or "ray"
    ray_address: str = ""

    @property
    def mode(self) -> str:
        return self.settings.mode

    def replace(self, **changes) -> RunChoice:
        return replace(self, **changes)


def cache_features(choice: RunChoice, data: Dataset | str | Path, cache_dir=None,
                   progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
                   retry_skipped: bool = False, batch_size: int = DEFAULT_BATCH
                   ) -> tuple[CacheResult, Dataset]:
    """Cache what ``choice``'s mode trains from (``batch_size`` images a backbone batch), on
    the engine it names, into the store; the result and the dataset as read."""
    return CacheJob(data, choice.backbone, choice.weights, cache_dir, batch_size,
                    retry_skipped=retry_skipped, mode=choice.mode, engine=choice.engine,
                    ray_address=choice.ray_address or None).run(progress, cancel)


def train(choice: RunChoice, dataset: Dataset, cache: CacheResult | None = None,
          cache_dir=None, progress: ProgressCallback = no_progress,
          cancel: CancelToken | None = None, isolated: bool = False,
          unknown_method: str = DEFAULT_METHOD) -> tuple[TrainedModel, CacheResult]:
    """Cache what is missing (unless ``cache`` is this choice's, whole), then train, fit the
    trust and evaluate: a :class:`TrainedModel`, with the cache result it was trained from.
    ``isolated``: the training itself runs in a child process (for a GUI: TensorFlow compiling
    the training step would hold this process's GIL for ~150 ms at a time); the results are
    the same."""
    if (cache is None or cache.cancelled or cache.mode != choice.mode
            or cache.model_key != _key_of(choice, cache)):
        cache, dataset = cache_features(choice, dataset, cache_dir, progress, cancel)
        if cache.cancelled:
            raise Cancelled()
    from app.core.intake.labels import excluded

    left_out = excluded(cache_dir or user_cache_dir(), dataset.root)
    if left_out:
        dataset = dataset.without({d: "excluded from training" for d in left_out})
    dataset, warnings = dataset.for_training()
    backbone = (get_spec(choice.backbone), choice.weights)
    if isolated:
        judged = _train_isolated(dataset, cache.model_key, cache_dir, choice.settings,
                                 backbone, progress, cancel, unknown_method)
    else:
        judged = train_and_judge(dataset, cache.model_key, cache_dir, choice.settings,
                                 backbone, progress, cancel, unknown_method)
    result = replace(judged.result, model_key=cache.model_key, backbone=choice.backbone,
                     weights=choice.weights)
    return TrainedModel(dataset, judged.splits, result, judged.trust, judged.evaluation,
                        tuple(warnings), str(cache_dir) if cache_dir else None), cache


def _key_of(choice: RunChoice, cache: CacheResult) -> str:
    """The model key ``choice`` caches under now (a cache result of another backbone, weights
    file or mode is not this choice's)."""
    return features_key(get_spec(choice.backbone), choice.weights, choice.mode,
                        key_signature(cache.model_key))


def _train_isolated(dataset, model_key, cache_dir, settings, backbone, progress, cancel,
                    unknown_method) -> Judged:
    import tempfile

    from app.core.base.isolation import run_isolated

    with tempfile.TemporaryDirectory(prefix="bottleneck-train-") as tmp:
        weights = str(Path(tmp) / "trained.weights.h5")
        judged: Judged = run_isolated(train_in_child, {
            "dataset": dataset, "model_key": model_key, "cache_dir": cache_dir,
            "settings": settings, "backbone": backbone, "weights_file": weights,
            "unknown_method": unknown_method}, progress, cancel)
        shape = judged.result.shape
        model, head, base, _, _ = build_model(settings, lambda _: shape, backbone)
        model.load_weights(weights)
    judged.result = replace(judged.result, head=head, model=model, base=base)
    judged.splits = load_splits(dataset, model_key, cache_dir)
    return judged


@dataclass
class Retraining:
    """A script's or the command line's run, step by step: the data side (the dataset and the
    cache of the chosen backbone) and, once trained, the :class:`TrainedModel` it produced
    (:attr:`model`). The window does not use it: it keeps a :class:`RunChoice` and values."""

    data_dir: str | Path
    backbone: str = "inception_v3"
    weights: str = "imagenet"
    cache_dir: str | Path | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    dataset: Dataset | None = None
    cache: CacheResult | None = None
    model: TrainedModel | None = None
    unknown_method: str = DEFAULT_METHOD  # the "unknown" score (app.core.trust.unknown.METHODS)

    @property
    def choice(self) -> RunChoice:
        return RunChoice(str(self.data_dir), self.backbone, self.weights, self.settings)

    def run_cache(self, progress: ProgressCallback = no_progress,
                  cancel: CancelToken | None = None, retry_skipped: bool = False,
                  engine: str = "local", ray_address: str | None = None,
                  batch_size: int = DEFAULT_BATCH) -> CacheResult:
        """Cache what the mode trains from; ``engine`` "ray" computes on a Ray cluster
        (``ray_address``, else RAY_ADDRESS, else a local Ray) into the same store."""
        choice = replace(self.choice, engine=engine, ray_address=ray_address or "")
        self.cache, self.dataset = cache_features(choice, self.dataset or self.data_dir,
                                                  self.cache_dir, progress, cancel,
                                                  retry_skipped, batch_size)
        return self.cache

    def run_training(self, progress: ProgressCallback = no_progress,
                     cancel: CancelToken | None = None, isolated: bool = False
                     ) -> TrainResult:
        if self.dataset is None:
            self.dataset = scan_dataset(self.data_dir)
        self.model, self.cache = train(self.choice, self.dataset, self.cache, self.cache_dir,
                                       progress, cancel, isolated, self.unknown_method)
        return self.model.result

    def run_training_isolated(self, progress: ProgressCallback = no_progress,
                              cancel: CancelToken | None = None) -> TrainResult:
        return self.run_training(progress, cancel, isolated=True)

    # what the trained model holds, read through (None before training)
    @property
    def result(self) -> TrainResult | None:
        return None if self.model is None else self.model.result

    @property
    def evaluation(self) -> Evaluation | None:
        return None if self.model is None else self.model.evaluation

    @property
    def trust(self) -> Trust | None:
        return None if self.model is None else self.model.trust

    @property
    def splits(self) -> dict[str, SplitData] | None:
        return None if self.model is None else self.model.splits

    @property
    def training_warnings(self) -> list[str]:
        return [] if self.model is None else list(self.model.training_warnings)

    def _trained(self) -> TrainedModel:
        if self.model is None:
            raise RuntimeError("train a model first")
        return self.model

    def export(self, out_dir: str | Path, formats: tuple[str, ...] = ("keras",),
               threshold: float | None = None) -> ExportReport:
        """The model folder, with the evaluation and the review kept beside it."""
        from app.core.pipeline.review import review, review_document

        model = self._trained()
        doc = None
        if model.evaluation is not None:
            doc = review_document(model.evaluation, review(model), str(model.dataset.root))
        return model.export(out_dir, formats, threshold, doc)

    def hardest_training_images(self, n: int = 20) -> list[dict]:
        return self._trained().hardest_training_images(n)

    def predictor(self) -> Predictor:
        return self._trained().predictor()


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
    from app.core.delivery.predict import ModelDirError, Predictor, probability_rows
    from app.core.intake.dataset import SplitSpec

    predictor = Predictor.from_dir(model_dir)  # metadata checked against the schema
    if predictor.thresholds is not None:
        raise ModelDirError(f"{model_dir} gives several tags a photo: evaluate it on a "
                            "tagged folder (app.core.pipeline.tagged."
                            "evaluate_tagged_model_dir; evaluate MODEL DATA on the command "
                            "line)")
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
    probs = probability_rows([p for _, p in ok], predictor.classes)
    true = np.array([index[r.label] for r, _ in ok], np.int64)
    temperature = float((predictor.metadata.get("calibration") or {}).get("temperature", 1.0))
    # the model outputs calibrated probabilities; log p is its logits / T up to a constant
    before = softmax(log_probs_as_logits(probs) * temperature)
    unknown = (np.array([p.unknown for _, p in ok], bool)
               if predictor.unknown is not None else None)
    return score(predictor.classes, true, probs, [r.path for r, _ in ok],
                 uncalibrated=before, temperature=temperature, unknown=unknown,
                 skipped=skipped)
