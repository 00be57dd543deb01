"""Memory stays bounded whatever the input: decode threads share one budget of pixels, and a
model folder's evaluation is read only up to a size whose JSON fits in memory."""

from __future__ import annotations

import json
import threading

import numpy as np
from PIL import Image

from app.core.intake import imaging
from app.core.pipeline.review import MAX_EVALUATION_BYTES, saved_review


def test_decode_threads_never_hold_more_pixels_than_the_budget(tmp_path, monkeypatch):
    big = []
    for i in range(6):
        path = tmp_path / f"big{i}.png"
        Image.fromarray(np.full((600, 800, 3), 40 * i, np.uint8)).save(path)
        big.append(path)
    budget = imaging.PixelBudget(1_000_000)  # room for two of these at once, not three
    monkeypatch.setattr(imaging, "BUDGET", budget)
    out = [None] * len(big)
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(
        i, imaging.load_rgb(big[i], (32, 32)))) for i in range(len(big))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o is not None and o.shape == (32, 32, 3) for o in out)
    assert 0 < budget.peak <= 1_000_000 and budget.lent == 0


def test_a_photo_larger_than_the_budget_still_decodes_alone(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(path)
    budget = imaging.PixelBudget(1000)
    monkeypatch.setattr(imaging, "BUDGET", budget)
    assert imaging.load_rgb(path, (8, 8)).shape == (8, 8, 3)
    assert budget.peak == 1000 and budget.lent == 0


def test_an_evaluation_too_large_to_read_safely_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    padding = "x" * 100
    rows = [{"path": padding, "i": i} for i in range(MAX_EVALUATION_BYTES // 100)]
    (folder / "evaluation.json").write_text(json.dumps({"evaluation_version": 1,
                                                        "rows": rows}))
    review, why = saved_review(folder, ["a", "b"])
    assert review is None and "larger than 16 MB" in why and "\n" not in why
