"""A trained model as a value: what training returns, what the window's current-model slot
holds, what reviews, exports and predictors are made from. Nothing changes it once made."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.features.backbones import get_spec
from app.core.features.keys import features_key, key_precision, key_signature
from app.core.intake.dataset import SPLITS, Dataset
from app.core.training.feeds import SplitData
from app.core.training.fit import TrainResult
from app.core.trust.calibration import softmax
from app.core.trust.evaluation import Evaluation
from app.core.trust.fitting import Trust, main_outputs

if TYPE_CHECKING:
    from app.core.delivery.export import ExportReport
    from app.core.delivery.predict import Predictor


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A trained model as a value: the dataset and the cached features' key it was trained on
    (its splits), the trained head, its trust (temperature and unknown detector fitted on
    validation) and its evaluation on the test split. What a training run returns; nothing
    changes it afterwards (a threshold the user moves is passed to :meth:`export`)."""

    dataset: Dataset
    splits: dict[str, SplitData]
    result: TrainResult
    trust: Trust
    evaluation: Evaluation | None
    training_warnings: tuple[str, ...] = ()
    cache_dir: str | None = None  # where its features are cached (None: the user's cache)

    reviewable = True  # its review is made from its splits' cached features
    tag_scores = None  # one class a photo (an OpenedModel of several tags holds them)
    multi_label = False

    @property
    def train_count(self) -> int:
        """Photos in the training split."""
        return len(self.splits["train"])

    @property
    def detector(self):
        return self.trust.detector

    @property
    def classes(self) -> list[str]:
        return list(self.result.classes)

    @property
    def history(self) -> list[dict]:
        return list(self.result.history)

    def current(self) -> TrainResult:
        """The trained head, refused when its features are no longer those it was trained
        on (its backbone's weights file changed on disk since)."""
        result = self.result
        current = features_key(get_spec(result.backbone), result.weights,
                               result.settings.mode, key_signature(result.model_key))
        if current != result.model_key:
            raise RuntimeError(f"the trained model belongs to the {result.backbone} features "
                               "it was trained on, which are no longer the current ones; "
                               "train again")
        return result

    def trust_with(self, threshold: float | None) -> Trust:
        """This model's trust answering "unknown" below ``threshold`` (None: the fitted
        one); the model's own detector is never changed."""
        trust = self.trust
        if threshold is None or trust.detector is None:
            return trust
        detector = copy.copy(trust.detector)
        detector.threshold = float(threshold)
        return replace(trust, detector=detector)

    def export(self, out_dir: str | Path, formats: tuple[str, ...] = ("keras",),
               threshold: float | None = None, evaluation_doc: dict | None = None
               ) -> ExportReport:
        """Write the model folder; ``threshold``: the unknown threshold the user chose
        (default: the fitted one); ``evaluation_doc``: the evaluation and review to keep
        beside the model (:func:`app.core.pipeline.review.review_document`), so that the
        Evaluate page shows them when the folder is opened again."""
        from app.core.delivery.export import export_model

        result = self.current()
        dataset = self.dataset
        return export_model(
            out_dir, spec=get_spec(result.backbone), weights=result.weights, result=result,
            trust=self.trust_with(threshold),
            validation=self.splits["validation"], precision=key_precision(result.model_key),
            extra_metadata={
                "dataset": str(dataset.root),
                "split": {s: len(self.splits[s]) for s in SPLITS},
                "split_fractions": [dataset.split_spec.train, dataset.split_spec.validation,
                                    dataset.split_spec.test],
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
                "left_out_classes": sorted(set(dataset.classes) - set(result.classes)),
            },
            formats=formats, evaluation=evaluation_doc,
        )

    def hardest_training_images(self, n: int = 20) -> list[dict]:
        """The training images with the highest loss under the trained model (calibrated),
        hardest first: where mislabelled photos usually are."""
        from app.core.trust.evaluation import hardest

        result = self.current()
        train = self.splits["train"]
        _, logits = main_outputs(result, train)
        return hardest(result.classes, train, softmax(logits, self.trust.temperature), n)

    def predictor(self) -> Predictor:
        """The in-app classifier (backbone + heads in memory, answering as the export
        does), without exporting. A head-mode model answers photos already in its cache from
        their cached taps (float32 keys: a GPU's mixed-float16 features are computed by
        TensorFlow, not by the predictor's float32 backbone)."""
        from app.core.base.paths import user_cache_dir
        from app.core.delivery.export import answer_taps, classifier_model
        from app.core.delivery.predict import CachedTaps, Predictor
        from app.core.features.backbones import weights_fingerprint

        result = self.current()
        spec = get_spec(result.backbone)
        model = classifier_model(spec, result.weights, result.head, result.base,
                                 self.trust.temperature, answer_taps(spec, result))
        cached = None
        if result.settings.mode == "head" and key_precision(result.model_key) == "float32":
            cached = CachedTaps(Path(self.cache_dir or user_cache_dir()), result.model_key,
                                spec, weights_fingerprint(spec, result.weights))
        return Predictor(model, result.classes, spec.input_size, unknown=self.trust.detector,
                         cached=cached)
