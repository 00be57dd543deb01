"""Fixing labels: a move is a real rename, journaled and undoable, never overwrites; an
exclusion keeps the file but leaves it out of training; retraining after either computes no
features; the hardest training images are where the mislabelled ones are."""

import numpy as np
import pytest

from app.core.intake.filing import LabelError, move_image, moves, undo_move
from app.core.intake.labels import set_excluded
from app.core.pipeline.retrain import Retraining
from app.core.training.feeds import SplitData
from app.core.training.fit import TrainSettings
from app.core.trust.evaluation import hardest
from tests.conftest import COLOURS, make_dataset, make_image


def test_a_move_is_a_real_rename_and_undo_puts_it_back(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    src = data / "red" / "red_001.png"
    content = src.read_bytes()
    move = move_image(data, src, "green")
    assert not src.exists() and (data / "green" / "red_001.png").read_bytes() == content
    assert moves(data) == [move] and move.source == "red/red_001.png"
    second = move_image(data, data / "blue" / "blue_000.jpg", "red")
    assert moves(data) == [move, second]
    assert undo_move(data) == second and (data / "blue" / "blue_000.jpg").exists()
    assert undo_move(data) == move and src.read_bytes() == content
    assert not (data / "green" / "red_001.png").exists() and moves(data) == []
    with pytest.raises(LabelError, match="nothing to undo"):
        undo_move(data)


def test_a_move_never_overwrites_and_stays_in_the_data_folder(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    src = data / "red" / "red_000.jpg"
    clash = data / "green" / "red_000.jpg"
    clash.write_bytes(b"someone else's photo")
    with pytest.raises(LabelError, match="already exists"):
        move_image(data, src, "green")
    assert src.exists() and clash.read_bytes() == b"someone else's photo"
    with pytest.raises(LabelError, match="not a class folder"):
        move_image(data, src, "../elsewhere")
    with pytest.raises(LabelError, match="not in the data folder"):
        move_image(data, make_image(tmp_path / "outside.jpg", (1, 2, 3)), "green")
    assert moves(data) == []


def test_hardest_images_are_the_highest_losses():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95]])
    data = SplitData(None, np.array([0, 0, 1, 1]), ["a", "b", "c", "d"])
    top = hardest(["cat", "dog"], data, probs, n=2)
    assert [h["path"] for h in top] == ["b", "c"]  # -log 0.2, then -log 0.4
    assert top[0] == {"path": "b", "label": "cat", "predicted": "dog", "confidence": 0.8,
                      "loss": round(-np.log(0.2), 4)}


@pytest.mark.slow
def test_fixing_labels_then_retraining_computes_no_features(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=12)
    # three red photos filed under green: the mistakes to find
    wrong = [make_image(data / "green" / f"oops_{i}.jpg", COLOURS["red"], seed=400 + i)
             for i in range(3)]
    cache = tmp_path / "cache"
    settings = TrainSettings(epochs=3, batch_size=8, learning_rate=3e-3)
    run = Retraining(data, "tiny", "none", cache, settings)
    run.run_training()
    hard = run.hardest_training_images(n=5)
    assert len(hard) == 5 and {h["path"] for h in hard} <= set(run.splits["train"].paths)
    assert [h["loss"] for h in hard] == sorted((h["loss"] for h in hard), reverse=True)

    for p in wrong:
        move_image(data, p, "red")
    excluded = next(r for r in run.dataset.images if r.label == "blue")
    set_excluded(cache, data, excluded.digest, excluded.path)
    again = Retraining(data, "tiny", "none", cache, settings)
    again.run_training()
    assert again.cache.computed == 0 and again.cache.reused == len(again.dataset.images)
    labels = {r.path: r.label for r in again.dataset.images}
    assert all(labels[str(data / "red" / p.name)] == "red" for p in wrong)
    used = {p for s in again.splits.values() for p in s.paths}
    assert excluded.path not in used
    assert {str(data / "red" / p.name) for p in wrong} <= used
    set_excluded(cache, data, excluded.digest, excluded.path, exclude=False)
    third = Retraining(data, "tiny", "none", cache, settings)
    third.run_cache()
    assert excluded.path in {r.path for r in third.dataset.for_training()[0].images}
