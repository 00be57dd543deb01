"""Labeling with few labels: the queue asks about typical photos of uncovered groups first,
then uncertain and diverse ones; suggestions say when their confidence is not calibrated yet;
filing photos never overwrites, is journaled before the file appears, and undoes exactly."""

import io
import json
import sys

import numpy as np
import pytest

from app import cli
from app.core import labeling
from app.core.intake import journal
from app.core.intake.filing import (
    LabelError,
    create_class,
    label_image,
    label_many,
    moves,
    operations,
    undo_move,
)
from tests.conftest import COLOURS, killed_after_journal, make_dataset, make_image


def _blobs(centres, per, spread, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + rng.normal(0, spread, (per, len(c))) for c in centres])
    return labeling.unit(x), np.repeat(np.arange(len(centres)), per)


def test_cold_start_asks_for_the_most_typical_photo_of_each_group():
    centres = np.eye(3, 16) * 5
    x, y = _blobs(centres, 40, 0.6)
    q = labeling.next_batch(x, x[:0], None, 3, seed=1, random_share=0)
    assert sorted(y[q.indices]) == [0, 1, 2]  # one from each group
    for i in q.indices:  # and it is among the most typical of its group
        members = np.flatnonzero(y == y[i])
        sims = x[members] @ labeling.unit(centres[[y[i]]]).T
        assert (x[i] @ labeling.unit(centres[[y[i]]]).T)[0] >= np.quantile(sims, 0.75)
    assert all(a.reason.startswith("typical") for a in q.asks)


def test_the_queue_prefers_uncertain_and_diverse_photos():
    rng = np.random.default_rng(0)
    a, b = np.eye(2, 16)[0] * 3, np.eye(2, 16)[1] * 3
    labelled, y = _blobs([a, b], 10, 0.3)
    easy, _ = _blobs([a * 2 - b * 0.2, b * 2 - a * 0.2], 30, 0.3, seed=1)
    # two separate places near the boundary between the classes, each a tight bunch; "up"
    # sits right on it, "down" a little towards a: margins alone would ask twice about "up"
    up = (a + b) / 2 + np.eye(3, 16)[2] * 2
    down = (a + b) / 2 - np.eye(3, 16)[2] * 2 + (a - b) * 0.08
    hard = labeling.unit(np.concatenate([up + rng.normal(0, 0.05, (8, 16)),
                                         down + rng.normal(0, 0.05, (8, 16))]))
    pool = np.concatenate([easy, hard])
    model = labeling.fit_model(labelled, y, 2)
    q = labeling.next_batch(pool, labelled, model, 2, seed=0, random_share=0, typical_share=0)
    picked = np.array(q.indices)
    assert (picked >= len(easy)).all(), "asked about an easy photo"
    assert {int(i >= len(easy) + 8) for i in picked} == {0, 1}, "two from the same bunch"
    assert all(a.reason == "uncertain" for a in q.asks)


def test_a_random_share_is_asked_too():
    x, _ = _blobs(np.eye(4, 16) * 4, 30, 0.5)
    q = labeling.next_batch(x, x[:0], None, 20, seed=3, random_share=0.25)
    assert sum(a.reason == "random" for a in q.asks) == 5 and len(set(q.indices)) == 20


def test_suggestions_say_when_their_confidence_is_calibrated():
    x, y = _blobs(np.eye(3, 16) * 4, 30, 0.8)
    few = labeling.fit_model(x[[0, 30, 60]], y[[0, 30, 60]], 3)
    assert not labeling.suggest(few, x).calibrated
    many = labeling.fit_model(x[::2], y[::2], 3)
    sug = labeling.suggest(many, x[1::2])
    assert sug.calibrated and (sug.label == y[1::2]).mean() > 0.9
    # none answered wrong out of fold: the temperature may soften, never sharpen (it went
    # to its lower bound, 0.05, and every suggestion read 100%)
    assert many.temperature >= 1.0
    idx, wrong = sug.confident(0.9)
    assert len(idx) and wrong == pytest.approx(float((1 - sug.confidence[idx]).sum()))


def test_a_photo_far_from_every_class_is_maybe_a_new_class():
    x, y = _blobs(np.eye(3, 16) * 4, 30, 0.5)
    model = labeling.fit_model(x, y, 3)
    stranger = labeling.unit(np.eye(4, 16)[3:] * 4)
    assert labeling.suggest(model, stranger).new_class.all()
    assert labeling.suggest(model, x).new_class.mean() < 0.1


def test_groups_put_alike_photos_together_most_typical_first():
    x, y = _blobs(np.eye(3, 16) * 5, 20, 0.5)
    groups = labeling.make_groups(x, 3, seed=0)
    assert sorted(len(g.members) for g in groups) == [20, 20, 20]
    assert all(len(set(y[g.members])) == 1 for g in groups)
    assert all(g.typical == sorted(g.typical, reverse=True) for g in groups)


def test_naming_a_group_files_exactly_the_photos_left_in_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    inbox = [make_image(tmp_path / "pile" / f"p{i}.jpg", COLOURS["red"], seed=i)
             for i in range(5)]
    create_class(data, "red")
    kept = inbox[:2] + inbox[3:]  # the user took p2 out of the group
    filing = label_many(data, kept, "red")
    assert filing.refused == [] and sorted(p.name for p in (data / "red").iterdir()) == [
        "p0.jpg", "p1.jpg", "p3.jpg", "p4.jpg"]
    assert all(p.exists() for p in inbox)  # outside the data folder: copied, never moved
    assert [m.op for m in moves(data)] == ["copy"] * 4
    assert len(operations(data)) == 1  # one operation: undone at once


def test_loose_photos_in_the_data_folder_are_moved_and_undo_puts_them_back(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=1)
    loose = make_image(data / "holiday.jpg", COLOURS["green"])
    content = loose.read_bytes()
    m = label_image(data, loose, "green")
    assert m.op == "move" and not loose.exists()
    assert (data / "green" / "holiday.jpg").read_bytes() == content
    assert undo_move(data) == m and loose.read_bytes() == content


def test_filing_never_overwrites_and_undo_removes_only_an_unchanged_copy(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=1)
    outside = make_image(tmp_path / "pile" / "red_000.jpg", COLOURS["red"], seed=9)
    before = (data / "red" / "red_000.jpg").read_bytes()
    with pytest.raises(LabelError, match="already exists"):
        label_image(data, outside, "red")
    assert (data / "red" / "red_000.jpg").read_bytes() == before
    m = label_image(data, outside, "green")
    copy = data / "green" / "red_000.jpg"
    copy.write_bytes(b"the user edited it since")
    with pytest.raises(LabelError, match="changed since.*no longer offered for undo"):
        undo_move(data)
    # reported and closed: never removed, and no wall in front of earlier operations
    assert copy.read_bytes() == b"the user edited it since" and moves(data) == []
    other = make_image(tmp_path / "pile" / "other.jpg", COLOURS["green"], seed=3)
    m = label_image(data, other, "green")
    assert undo_move(data) == m and not (data / "green" / "other.jpg").exists()
    assert other.exists()


def test_a_crash_between_journal_and_copy_leaves_nothing_half_done(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=1)
    first = label_image(data, make_image(tmp_path / "a.jpg", COLOURS["red"]), "red")
    # what a kill -9 after the journal line and before the link leaves
    killed_after_journal(data, journal.Move(str(tmp_path / "b.jpg"), "red/b.jpg", op="copy",
                                            digest="0" * 32))
    assert len(moves(data)) == 2
    # the next writer closes the copy that never happened, then undoes the one before
    assert undo_move(data) == first and not (data / "red" / "a.jpg").exists()
    assert moves(data) == [] and (tmp_path / "a.jpg").exists()


def test_class_names_that_cannot_be_classes_are_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for bad in ("", ".hidden", "a/b", "..", "new\nline"):
        with pytest.raises(LabelError):
            create_class(data, bad)
    assert list(data.iterdir()) == []


def _label_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = cli.main(["label", *map(str, args)])
    finally:
        sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


def test_label_from_the_command_line_queue_assign_and_undo(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pile = make_dataset(tmp_path / "pile", per_class=4)
    photos = sorted(pile.rglob("*.*"))
    common = ["--backbone", "tiny", "--weights", "none", "--cache-dir", tmp_path / "cache",
              "--inbox", pile, "--json"]
    code, out, err = _label_cli(data, *common, "--next", 3)
    doc = json.loads(out)
    assert code == 0 and doc["labelled"] == 0 and doc["unsorted"] == 12
    assert len(doc["queue"]) == 3 and all(q["suggested"] is None for q in doc["queue"])
    first = photos[0]
    code, out, err = _label_cli(data, *common, "--create", "--assign",
                                f"{first}={first.parent.name}")
    doc = json.loads(out)
    assert code == 0 and doc["labelled"] == 1 and doc["unsorted"] == 11
    assert (data / first.parent.name / first.name).exists() and first.exists()
    # one class: no suggestion (every photo read "blue ~100%" before a second class existed)
    assert all(q["suggested"] is None for q in doc["queue"])
    second = next(p for p in photos if p.parent.name != first.parent.name)
    code, out, err = _label_cli(data, *common, "--create", "--assign",
                                f"{second}={second.parent.name}")
    doc = json.loads(out)
    assert code == 0 and all(q["suggested"] in (first.parent.name, second.parent.name)
                             for q in doc["queue"])
    code, out, err = _label_cli(data, *common, "--accept-above", "0.5")
    assert code == 2 and "calibrated" in err  # one label: no bulk accept on a rough guess
    code, out, err = _label_cli(data, *common, "--undo")
    assert code == 0 and json.loads(out)["labelled"] == 1  # the latest filing only
    assert (data / first.parent.name / first.name).exists()
    assert not (data / second.parent.name / second.name).exists()
    code, out, err = _label_cli(data, *common, "--undo")
    assert code == 0 and json.loads(out)["labelled"] == 0
    assert not (data / first.parent.name / first.name).exists()


def test_sorting_a_folder_by_prediction_previews_files_and_undoes(tmp_path):
    from app.core.delivery.predict import Prediction
    from app.core.intake.filing import undo
    from app.core.intake.sorting import sort_into, sort_plan

    photos = [make_image(tmp_path / "camera" / f"p{i}.jpg", COLOURS["red"], seed=i)
              for i in range(4)]
    preds = [Prediction(str(photos[0]), [{"label": "red", "probability": 0.9}], unknown=False),
             Prediction(str(photos[1]), [{"label": "green", "probability": 0.8}], unknown=False),
             Prediction(str(photos[2]), [{"label": "red", "probability": 0.6}], unknown=True),
             Prediction(str(photos[3]), error="cannot decode")]
    plan = sort_plan(preds)
    assert plan.counts() == {"_unknown": 1, "green": 1, "red": 1}
    assert plan.errors == [(str(photos[3]), "cannot decode")]
    out = tmp_path / "sorted"
    (out / "red").mkdir(parents=True)
    (out / "red" / "p0.jpg").write_bytes(b"already there")  # never overwritten
    filing = sort_into(out, plan)
    assert len(filing.done) == 2 and [p for p, _ in filing.refused] == [str(photos[0])]
    assert (out / "red" / "p0.jpg").read_bytes() == b"already there"
    assert (out / "green" / "p1.jpg").read_bytes() == photos[1].read_bytes()
    assert (out / "_unknown" / "p2.jpg").exists() and all(p.exists() for p in photos)
    assert len(undo(out, kind="sort").undone) == 2
    assert not (out / "green" / "p1.jpg").exists() and not (out / "_unknown" / "p2.jpg").exists()
    assert (out / "red" / "p0.jpg").read_bytes() == b"already there"


def test_a_copy_killed_half_way_leaves_no_litter_after_the_next_label(tmp_path):
    import subprocess

    data = make_dataset(tmp_path / "d", per_class=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    litter = data / "red" / f".x.jpg.{dead.pid}-0123abcd.copy"
    litter.write_bytes(b"half")
    mine = data / "red" / ".notes.copy"  # not of the app's naming: stays
    mine.write_text("user's")
    label_image(data, make_image(tmp_path / "a.jpg", COLOURS["red"]), "red")
    assert not litter.exists() and mine.exists()


def test_the_unlabelled_photos_make_the_model_better_with_few_labels():
    """Two labels a class: the unlabelled pool (its centre, and its surest suggestions lent as
    labels) makes the suggestions more accurate in every draw."""
    rng = np.random.default_rng(3)
    d = 32
    centres = rng.normal(size=(3, d))
    common = rng.normal(size=d) * 4  # what every photo shares says nothing of its class
    def draw(per):
        x = np.concatenate([common + c + rng.normal(size=(per, d)) * 2.5 for c in centres])
        return x, np.repeat(np.arange(3), per)
    x, y = draw(300)
    test, ty = draw(200)
    gains = []
    for _ in range(10):
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 2, replace=False)
                              for c in range(3)])
        rest = np.setdiff1d(np.arange(len(x)), idx)
        alone = labeling.fit_model(x[idx], y[idx], 3)
        helped = labeling.fit_model(x[idx], y[idx], 3, pool=x[rest])
        gains.append((helped.probabilities(test).argmax(1) == ty).mean()
                     - (alone.probabilities(test).argmax(1) == ty).mean())
    assert min(gains) > 0 and np.mean(gains) > 0.03


def test_the_pool_is_answered_by_a_model_it_did_not_teach():
    """Self-training lends the surest unlabelled photos as labels; their suggestions come from
    the model self-trained on the other half of the pool, so a photo's confidence is not
    inflated by having taught the model that answers it."""
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(3, 32))
    x = np.concatenate([c + rng.normal(size=(200, 32)) * 2.5 for c in centres])
    y = np.repeat(np.arange(3), 200)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 4, replace=False)
                          for c in range(3)])
    pool = x[np.setdiff1d(np.arange(len(x)), idx)]
    model = labeling.fit_model(x[idx], y[idx], 3, pool=pool)
    own = labeling.suggest(model, pool)  # the array it was fitted with: cross-fitted answers
    taught = labeling.suggest(model, pool.copy())  # the same rows, as new photos
    assert own.confidence.mean() < taught.confidence.mean()
    assert (own.label == taught.label).mean() > 0.8  # the same answers, less sure


def test_photos_are_measured_by_the_aux_taps_too_each_tap_weighing_the_same():
    rng = np.random.default_rng(0)
    main = np.tile(rng.normal(size=(1, 32)), (2, 1))  # the same last layer for both photos
    aux1 = rng.normal(size=(2, 4, 4, 16))  # but other intermediate grids
    aux2 = rng.normal(size=(2, 4, 4, 16)) * 1000  # a tap on a larger scale
    x = labeling.photo_features(main, aux1, aux2)
    assert np.allclose(np.linalg.norm(x, axis=1), 1)
    assert float(x[0] @ x[1]) < 0.99  # told apart by what the last layer pooled away
    # each tap weighs the same, whatever its scale: scaling one changes nothing
    again = labeling.photo_features(main * 7, aux1 / 3, aux2 / 1000)
    assert np.allclose(x, again, atol=1e-6)
    # the grid is averaged: where in the grid a pattern is does not matter
    moved = labeling.photo_features(main, aux1[:, ::-1, ::-1], aux2[:, ::-1])
    assert np.allclose(x, moved, atol=1e-6)


def _easy_and_hard():
    """The same 4 classes as an easy task (classes apart) and a hard one (classes overlap),
    a main tap alone on the hard scale, their labels, and 6 labelled photos per class."""
    centres = np.random.default_rng(3).normal(size=(4, 24))
    easy, y = _blobs(centres, 30, 0.05, seed=1)
    hard, _ = _blobs(centres, 30, 3.0, seed=2)
    main, _ = _blobs(centres, 30, 3.0, seed=4)
    lab = np.concatenate([np.flatnonzero(y == c)[:6] for c in range(4)])
    return easy, hard, main, y, lab, np.setdiff1d(np.arange(len(y)), lab)


def test_a_hard_task_asks_on_the_main_tap_an_easy_one_on_every_tap():
    easy, hard, main, y, lab, free = _easy_and_hard()
    for x, expect_main in ((easy, False), (hard, True)):
        model = labeling.fit_model(x[lab], y[lab], 4, seed=1, pool=x[free])
        assert labeling.is_hard(model) is expect_main
        q = labeling.ask(x[free], x[lab], y[lab], 4, model, 8, seed=1, pool_main=main[free],
                         labelled_main=main[lab])
        if expect_main:
            main_model = labeling.fit_model(main[lab], y[lab], 4, seed=1, pool=main[free])
            want = labeling.next_batch(main[free], main[lab], main_model, 8, seed=1 + len(lab))
        else:
            want = labeling.next_batch(x[free], x[lab], model, 8, seed=1 + len(lab))
        assert q.indices == want.indices


def test_a_hard_task_asks_half_its_questions_at_random_and_covers_no_groups():
    easy, hard, _, y, lab, free = _easy_and_hard()
    assert len(lab) < labeling.COVER_FIRST  # an easy task still covers its groups first
    for x, randoms, covers in ((easy, 2, True), (hard, 10, False)):
        model = labeling.fit_model(x[lab], y[lab], 4, seed=1, pool=x[free])
        q = labeling.next_batch(x[free], x[lab], model, 20, seed=1)
        reasons = [a.reason for a in q.asks]
        assert reasons.count("random") == randoms
        assert any(r.startswith("typical") for r in reasons) is covers
        assert len(set(q.indices)) == 20


def test_the_calibration_holds_for_every_draw_once_each_class_has_two_labels():
    """At 101 labels the Label page said "once there are 20 labels..." for a while and
    disabled Accept: random folds left a class of two labels out of a fold's training part.
    Stratified folds keep every class in every training part."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(17, 16))
    y = np.concatenate([np.full(6, c) for c in range(16)] + [np.full(2, 16)])[:101]
    y = np.concatenate([y, np.full(101 - len(y), 0)])
    x = centres[y] + 0.3 * rng.normal(size=(len(y), 16))
    for seed in range(25):
        model = labeling.fit_model(x, y, 17, seed=seed)
        assert model.calibrated, seed


def test_maybe_a_new_class_is_set_by_the_labelled_photos_own_scores():
    """The threshold is what all but 2% of the labelled photos score, each without itself
    (as the unknown test's is set), on the likeness relative to the neighbours' own density;
    a class never labelled is flagged, photos among the labelled ones are not."""
    rng = np.random.default_rng(5)
    d = 64
    centres = 2.0 * rng.normal(size=(4, d))
    photos = [centres[c] + rng.normal(size=(80, d)) for c in range(4)]
    labelled = np.concatenate([p[:40] for p in photos[:3]])
    labels = np.repeat(np.arange(3), 40)
    model = labeling.fit_model(labelled, labels, 4, pool=np.concatenate(photos))
    ul = labeling.unit(labelled)
    sims = ul @ ul.T
    np.fill_diagonal(sims, -np.inf)  # each labelled photo without itself
    own = labeling._relative(sims, model.density)
    assert (own < model.novelty).mean() <= 1 - labeling.KEEP_KNOWN + 1 / len(own)
    assert labeling.suggest(model, photos[3]).new_class.mean() > 0.9
    assert labeling.suggest(model, labelled + 0.01).new_class.mean() <= 0.05


def test_a_refresh_after_a_label_reads_only_new_photos_and_answers_as_a_fresh_one(
        tmp_path, monkeypatch):
    """A refresh built on the last one (the Label page's after every label) reads from the
    store and caches only photos it has not seen, and shows what a refresh from nothing shows."""
    from app.core.features.caching import CacheJob
    from app.core.storage.store import FeatureStore

    data = tmp_path / "data"
    data.mkdir()
    pile = make_dataset(tmp_path / "pile", per_class=6)
    photos = sorted(pile.rglob("*.jpg"))
    for colour in {p.parent.name for p in photos}:
        create_class(data, colour)
    args = dict(backbone="tiny", weights="none", cache_dir=tmp_path / "cache", seed=3)
    for photo in photos[:1] + photos[6:7] + photos[12:13]:  # one of each colour
        label_image(data, photo, photo.parent.name)
    first = labeling.refresh(data, pile, **args)

    read, cached = [], []
    real_load, real_run = FeatureStore.load_features, CacheJob.run
    monkeypatch.setattr(FeatureStore, "load_features", lambda self, key, digests: (
        read.extend(digests), real_load(self, key, digests))[1])
    monkeypatch.setattr(CacheJob, "run", lambda self, *a, **k: (
        cached.extend(r.path for r in self.data.images), real_run(self, *a, **k))[1])
    label_image(data, photos[2], photos[2].parent.name)
    new = tmp_path / "pile" / "late.jpg"
    make_image(new, (200, 40, 40))
    again = labeling.refresh(data, pile, previous=first, **args)
    assert cached == [str(new)]  # the new photo alone: nothing read before is cached again
    assert len(read) == 1
    monkeypatch.undo()
    fresh = labeling.refresh(data, pile, **args)
    assert again.pool.paths == fresh.pool.paths and str(new) in fresh.pool.paths
    assert again.pool.labelled_paths == fresh.pool.labelled_paths
    np.testing.assert_allclose(again.pool.unsorted, fresh.pool.unsorted, atol=1e-6)
    assert (again.suggestions.label == fresh.suggestions.label).all()


def test_a_refresh_cancelled_while_its_model_is_fitted_stops_before_the_queue(
        tmp_path, monkeypatch):
    """A newer refresh cancels the one running (the Label page's one job slot): at 20,000
    photos the cancelled one went on fitting, asking and grouping for seconds, beside the
    new one, on the same two cores."""
    from app.core.base.jobs import Cancelled, CancelToken
    from app.core.labeling import pool as pool_module

    data = tmp_path / "data"
    data.mkdir()
    pile = make_dataset(tmp_path / "pile", per_class=4)
    photos = sorted(pile.rglob("*.jpg"))
    for photo in photos[:1] + photos[4:5]:
        create_class(data, photo.parent.name)
        label_image(data, photo, photo.parent.name)
    cancel, asked = CancelToken(), []
    real_model = pool_module.Pool.model

    def model_then_cancelled(self, *a, **k):
        out = real_model(self, *a, **k)
        cancel.cancel()  # the user labelled again meanwhile
        return out

    monkeypatch.setattr(pool_module.Pool, "model", model_then_cancelled)
    monkeypatch.setattr(pool_module.Pool, "ask", lambda *a, **k: asked.append(1))
    with pytest.raises(Cancelled):
        labeling.refresh(data, pile, "tiny", "none", tmp_path / "cache", cancel=cancel)
    assert not asked


def test_a_refresh_built_on_the_last_one_is_no_surer_than_a_fresh_one():
    """The walk: after 20 refreshes that started their fits from the last one's, File the rest
    promised 2.8 wrong photos and filed 10 (a fresh fit: 2.9 and 4). The fits are stopped
    early on purpose; started from the last answer they only grow sharper. A chain of
    refreshes gives the model a fresh fit gives."""
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 1, (4, 24))
    x, y = _blobs(centres, 60, 1.2, seed=5)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    halves = rng.integers(0, 2, len(x))
    model = None
    for n in range(24, 61, 3):  # a refresh every third label, as the Label page does
        model = labeling.fit_model(x[:n], y[:n], 4, pool=x[n:], previous=model,
                                   halves=halves[n:])
    fresh = labeling.fit_model(x[:60], y[:60], 4, pool=x[60:], halves=halves[60:])
    np.testing.assert_allclose(model.logits(x[60:]), fresh.logits(x[60:]), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(model.pool_logits, fresh.pool_logits, rtol=1e-4, atol=1e-4)
