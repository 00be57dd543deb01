"""What became values, in milliseconds: the current-model slot, the kept last model and
closing, driven by hand with stand-ins for the model and the job runner (no window, no
thread, no Keras)."""

from __future__ import annotations

from types import SimpleNamespace

from PySide6.QtCore import QObject, Signal

from app.gui.closing import Closing
from app.gui.last_model import LastModel
from app.gui.model_slot import ModelSlot
from app.gui.session import Session


def _detector(threshold=0.4):
    return SimpleNamespace(threshold=threshold, method="relative_knn",
                           fitted_threshold=threshold)


def _trained(threshold=0.4, history=({"epoch": 1},)):
    return SimpleNamespace(reviewable=True, evaluation=SimpleNamespace(main_accuracy=0.9),
                           history=list(history), detector=_detector(threshold),
                           predictor=lambda: "built", tag_scores=None,
                           multi_label=False)


def _opened(saved=None):
    return SimpleNamespace(reviewable=False, evaluation=None, history=[], saved=saved,
                           why="none kept", detector=None, folder="/m",
                           predictor=lambda: "from the folder", tag_scores=None,
                           multi_label=False)


def test_a_new_model_bumps_the_generation_and_brings_its_threshold_and_curves(qtbot):
    slot = ModelSlot()
    changes, thresholds = [], []
    slot.changed.connect(lambda: changes.append(slot.generation))
    slot.threshold_changed.connect(thresholds.append)
    slot.set_model(_trained(0.4), "trained")
    assert (slot.generation, slot.threshold, slot.history, slot.predictor) == (
        1, 0.4, [{"epoch": 1}], None)  # a trained model's predictor is built by a job
    slot.set_model(_opened(), "opened")
    assert slot.generation == 2 and slot.threshold is None and slot.predictor == \
        "from the folder" and "none kept" in slot.evaluation_note
    assert changes == [1, 2] and thresholds == []  # a new model is not a moved threshold


def test_a_threshold_set_to_what_it_was_is_not_announced(qtbot):
    slot = ModelSlot()
    slot.set_model(_trained(0.4), "trained")
    said = []
    slot.threshold_changed.connect(said.append)
    assert not slot.set_threshold(0.4)
    assert slot.set_threshold(0.2) and said == [0.2]


def test_a_review_or_predictor_of_an_older_model_is_dropped(qtbot):
    slot = ModelSlot()
    slot.set_model(_trained(), "first")
    old = slot.generation
    slot.set_model(_trained(), "second")
    assert not slot.set_review("old review", old) and slot.review is None
    slot.keep_predictor("old predictor", old)
    assert slot.predictor is None
    assert slot.set_review("review", slot.generation) and slot.review == "review"


class FakeWorker(QObject):
    done = Signal()

    def __init__(self, name, fn, on_result, on_done) -> None:
        super().__init__()
        self.name, self.fn, self.on_result, self.on_done = name, fn, on_result, on_done

    def finish(self, result=None) -> None:
        if self.on_result:
            self.on_result(result)
        if self.on_done:
            self.on_done()


class FakeJobs(QObject):
    busy_changed = Signal(bool)

    def __init__(self) -> None:
        super().__init__()
        self.started: list[FakeWorker] = []

    def start(self, name, fn, *, on_result=None, on_done=None, **_kwargs):
        worker = FakeWorker(name, fn, on_result, on_done)
        self.started.append(worker)
        return worker

    @property
    def running(self):
        return [w for w in self.started if not getattr(w, "ended", False)]


def _last_model(qtbot):
    session = Session()
    jobs = FakeJobs()
    activity = SimpleNamespace(track=lambda *a: None)
    return session, jobs, LastModel(session, jobs, activity)


def test_the_newest_model_waits_for_the_save_in_progress_and_only_the_newest(qtbot):
    session, jobs, kept = _last_model(qtbot)
    first, second, third = _trained(), _trained(), _trained()
    session.slot.set_model(first, "first")
    kept.save(first, session.slot.generation)
    session.slot.set_model(second, "second")
    assert kept.save(second, 2) is None
    session.slot.set_model(third, "third")
    assert kept.save(third, 3) is None  # replaces the one waiting
    assert [w.name for w in jobs.started] == ["saving the model"]
    jobs.started[0].finish("report")
    assert kept.holds == 1 and len(jobs.started) == 2
    jobs.started[1].finish("report")
    assert kept.holds == 3 and len(jobs.started) == 2  # the second was never written


def test_a_moved_threshold_is_written_once_into_the_folder_that_holds_the_model(qtbot):
    session, jobs, kept = _last_model(qtbot)
    session.slot.set_model(_trained(0.4), "trained")
    kept.save(session.slot.model, session.slot.generation)
    jobs.started[0].finish("report")
    assert kept.remember_threshold() is None  # the folder answers with 0.4 already
    session.slot.set_threshold(0.25)
    writer = kept.remember_threshold()
    assert writer.name == "remembering the threshold"
    writer.finish(True)
    assert kept.remember_threshold() is None  # written
    session.slot.set_model(_trained(0.4), "another")
    session.slot.set_threshold(0.1)
    assert kept.remember_threshold() is None  # the folder holds the older model


def test_closing_asks_once_stops_what_can_stop_and_waits_for_a_save(qtbot):
    jobs = FakeJobs()
    training, saving = jobs.start("training", None), jobs.start("saving the model", None)
    cancelled = []
    training.cancel, saving.cancel = (lambda: cancelled.append("training"),
                                      lambda: cancelled.append("saving"))
    asked, closed = [], []
    closing = Closing(jobs, lambda: None, lambda q: asked.append(q) or True,
                      lambda: None, lambda names: None, lambda: closed.append(1))
    assert not closing.allows() and closing.underway
    assert len(asked) == 1 and "Training is running" in asked[0]
    assert cancelled == ["training"]  # the save is waited for, never stopped
    assert not closing.allows() and len(asked) == 1  # asked once
    for w in jobs.started:
        w.ended = True
    closing._when_idle(False)
    assert closing.state == "ready"
    assert closing.allows()
