"""Jobs return results and the GUI thread applies them; a stale result is dropped."""

from __future__ import annotations

import threading

from app.core.base.jobs import CancelToken
from app.core.delivery.predict import Prediction
from app.gui.session import Session
from tests.conftest import make_image
from tests.gui.conftest import open_fake_model


class FakePredictor:
    """Answers one label for every file; ``gate`` (when given) holds the answer back."""

    def __init__(self, label: str, gate: threading.Event | None = None) -> None:
        self.label, self.gate, self.classes = label, gate, [label]
        self.started = threading.Event()
        self.unknown = self.thresholds = None  # no unknown test; one class a photo

    def predict(self, paths, top_k=3, progress=None, cancel=None, threshold=None):
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        return [Prediction(str(p), [{"label": self.label, "probability": 1.0}]) for p in paths]


class TrainedStandIn:
    """A trained model's face (what the slot reads), building ``built`` as its predictor in
    the job's thread."""

    reviewable, evaluation, history, detector, tag_scores = True, None, [], None, None
    multi_label = False

    def __init__(self, built) -> None:
        self.built = built

    def predictor(self):
        return self.built


def test_predict_job_returns_the_predictor_instead_of_storing_it(qtbot, tmp_path):
    image = make_image(tmp_path / "a.png", (200, 40, 40))
    session = Session(tmp_path / "cache")
    built = FakePredictor("red")
    session.slot.set_model(TrainedStandIn(built), "a trained model")

    outcome = session.predict_job([str(image)], 3)(lambda p: None, CancelToken())
    assert session.slot.predictor is None, "the job changed the session from its own thread"
    assert outcome.predictor is built
    assert outcome.results[0].prediction.top[0]["label"] == "red"
    assert session.apply_predictions(outcome)
    assert session.slot.predictor is built


def test_stale_predictions_are_dropped_and_the_old_predictor_not_put_back(qtbot, window,
                                                                         tmp_path):
    image = make_image(tmp_path / "a.png", (200, 40, 40))
    gate = threading.Event()
    old, new = FakePredictor("old", gate), FakePredictor("new")
    open_fake_model(window, old, "old-model")
    worker = window.predict_control.predict_paths([str(image)])
    assert old.started.wait(30)
    open_fake_model(window, new, "new-model")  # e.g. training finished meanwhile
    with qtbot.waitSignal(worker.done, timeout=30000):
        gate.set()
    qtbot.waitUntil(lambda: not window.predict.bar.isVisible())
    assert window.session.slot.predictor is new
    assert window.predict.results == [] and window.predict.table.rowCount() == 0
    assert "model changed" in window.statusBar().currentMessage()
    assert "new-model" in window.predict.model.text()

    worker = window.predict_control.predict_paths([str(image)])  # the new model answers
    qtbot.waitUntil(lambda: window.predict.table.rowCount() == 1, timeout=30000)
    assert window.predict.results[0].prediction.top[0]["label"] == "new"


def test_the_scan_job_runs_no_full_collection_and_leaves_the_records_frozen(qtbot, tmp_path):
    """A full pass of the cyclic collector holds the GIL while it walks every object, so the
    window's event loop waits (40-70 ms a pass, several per 100k-image scan): none runs while
    the scan builds its records (young passes still do), and afterwards the records are out
    of the collector's passes."""
    import gc

    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "photos", per_class=30)  # 90 files: two progress reports
    session = Session(tmp_path / "cache")
    job, token, phase, passes = session.scan_job(str(data)), CancelToken(), ["before"], []

    def seen(generation_phase, info):
        if generation_phase == "start":
            passes.append((phase[0], info["generation"]))

    def progress(p):
        phase[0] = "scan"

    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    gc.callbacks.append(seen)
    gc.set_threshold(1, 1, 1)  # the collector as eager as it can be
    try:
        result = job(progress, token)
        phase[0] = "after"
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(seen)
    assert len(result.dataset.images) == 90
    during = [g for p, g in passes if p == "scan"]
    assert during and 2 not in during  # young passes ran (tests/core/test_jobs.py: no full)
    assert gc.get_freeze_count() > frozen
