"""Honest numbers: the test accuracy carries its 95% Wilson interval and a class with fewer
than 5 test images is flagged, so "100% on 34 images" reads as what it is."""

import numpy as np
import pytest

from app.core.trust.evaluation import score, wilson


@pytest.mark.parametrize("k,n,low,high", [
    (34, 34, 0.8985, 1.0),  # "100% on 34 images"
    (5, 10, 0.2366, 0.7634),
    (0, 10, 0.0, 0.2775),
    (142, 150, 0.8983, 0.9727),
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_evaluation_flags_small_classes_and_carries_the_interval():
    # a: 5 images (enough), b: 4 (too few), c: none in this split
    true = np.array([0] * 5 + [1] * 4)
    probs = np.eye(3)[true]
    ev = score(["a", "b", "c"], true, probs, [f"{i}.jpg" for i in range(9)])
    assert ev.main_accuracy == 1.0
    assert ev.accuracy_interval == [round(v, 4) for v in wilson(9, 9)]
    assert ev.accuracy_interval[0] < 0.75
    assert ev.few_images == ["b", "c"]
    assert [ev.per_class[c]["few_images"] for c in "abc"] == [False, True, True]
    assert "accuracy_interval" in ev.as_dict() and "few_images" in ev.as_dict()
