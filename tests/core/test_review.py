"""The pure pieces behind the window's review views: what a threshold does on the
validation scores, the slider's scale, the images behind a confusion cell."""

from __future__ import annotations

import numpy as np

from app.core.pipeline.review import ThresholdScale, cell_images, threshold_effect


def test_threshold_effect_counts_the_scores_below_it():
    scores = np.array([0.2, 0.5, 0.5, 0.9])
    assert threshold_effect(scores, 0.5) == {"threshold": 0.5, "flagged": 1, "count": 4,
                                             "fraction": 0.25}
    assert threshold_effect(scores, 0.95)["fraction"] == 1.0
    assert threshold_effect(scores, 0.0)["flagged"] == 0
    assert threshold_effect(None, 0.5)["fraction"] is None


def test_threshold_scale_spans_probabilities_or_the_scores_and_round_trips():
    prob = ThresholdScale.for_scores("max_probability", np.array([0.6, 0.9]), 0.7)
    assert (prob.lo, prob.hi) == (0.0, 1.0)
    assert prob.value(prob.steps) == 1.0 and prob.position(0.7) == 700
    knn = ThresholdScale.for_scores("knn", np.array([-3.0, 1.0]), 0.5)
    assert knn.lo < -3.0 and knn.hi > 1.0  # every score reachable on both sides
    assert abs(knn.value(knn.position(0.5)) - 0.5) < (knn.hi - knn.lo) / knn.steps
    assert threshold_effect(np.array([-3.0, 1.0]), knn.value(knn.steps))["fraction"] == 1.0
    assert threshold_effect(np.array([-3.0, 1.0]), knn.value(0))["fraction"] == 0.0


def test_cell_images_are_the_entries_of_that_cell():
    entries = [{"path": "a", "true": "red", "predicted": "red"},
               {"path": "b", "true": "red", "predicted": "blue"},
               {"path": "c", "true": "blue", "predicted": "red"}]
    assert [e["path"] for e in cell_images(entries, "red", "blue")] == ["b"]
    assert [e["path"] for e in cell_images(entries, "red", "red")] == ["a"]
    assert cell_images(entries, "blue", "blue") == []
