"""Several tags a photo: the tags file read and checked (never a traceback), a tagged folder
scanned, the file rewritten by rename, and the per-tag rules (temperature, threshold, AP and
the scores) on sets where the right answer is known by hand."""

import math

import numpy as np
import pytest

from app.core.intake.dataset import DatasetError, SplitSpec
from app.core.intake.tags import read_tags, scan_tagged, write_tags
from app.core.trust.tags import (
    DEFAULT_THRESHOLD,
    MIN_POSITIVES_TO_TUNE,
    average_precision,
    best_f1_threshold,
    fit_tag_temperature,
    fit_tag_trust,
    score_tags,
)
from tests.conftest import COLOURS, make_image


def _messages(findings, level=None):
    return [f.message for f in findings if level is None or f.level == level]


def test_reading_a_tags_file_reports_each_problem_and_keeps_the_good_rows(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "\ufefffile,tags\n"  # a BOM, as spreadsheet programs write
        "a.jpg,cat;chair\n"
        "b.jpg,\n"  # no tag: "none of these", a real answer
        "c.jpg,dog;dog; cat \n"  # a tag twice, spaces
        "d.jpg,x,y\n"  # three columns
        ",cat\n"  # no file
        "../e.jpg,cat\n"  # out of the folder
        "f.jpg,bad/tag;ok\n"  # a tag that cannot be a folder name
        "a.jpg,cat;chair\n"  # listed again, the same
        "c.jpg,bird\n"  # listed again, differing
        "café/été.jpg,ключ\n",  # Unicode names
        "utf-8")
    tf = read_tags(path)
    rows = {r.file: r.tags for r in tf.rows}
    # f.jpg is left out: without its bad tag it would train as a "no" for that tag
    assert rows == {"a.jpg": ("cat", "chair"), "b.jpg": (), "c.jpg": ("cat", "dog"),
                    "café/été.jpg": ("ключ",)}
    text = " | ".join(_messages(tf.findings))
    assert "2 row(s) of labels.csv are not 'file,tags'" in text
    assert "1 row(s) name a file outside the folder" in text
    assert "1 photo(s) have a tag that cannot be used" in text
    assert "f.jpg: tag 'bad/tag'" in str(tf.findings)
    assert "1 photo(s) are listed twice with different tags" in text
    assert not _messages(tf.findings, "error")


@pytest.mark.parametrize("content, message", [
    (b"file,tags\n\xff\xfe,cat\n", "is not UTF-8 text"),
    # an unterminated quote swallows the rest: one name with a newline, refused
    (b'file,tags\n"a.jpg,cat\nb.jpg,dog\n', "1 row(s) name a file outside the folder"),
])
def test_an_unreadable_tags_file_is_one_finding(tmp_path, content, message):
    path = tmp_path / "labels.csv"
    path.write_bytes(content)
    tf = read_tags(path)
    assert not tf.rows and any(message in m for m in _messages(tf.findings))


def test_a_folder_as_tags_file_and_a_missing_one(tmp_path):
    (tmp_path / "labels.csv").mkdir()
    assert "cannot read the tags file" in _messages(read_tags(tmp_path / "labels.csv")
                                                    .findings, "error")[0]
    with pytest.raises(DatasetError, match="no tags file"):
        scan_tagged(tmp_path, "nothing.csv")


def test_scanning_a_tagged_folder(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        make_image(root / "images" / f"p{i}.jpg", COLOURS["red"], seed=i)
    make_image(root / "more" / "p6.png", COLOURS["green"], seed=6)
    make_image(root / "more" / "p0.jpg", COLOURS["blue"], seed=7)  # a bare "p0.jpg": ambiguous
    make_image(root / "unlisted.jpg", COLOURS["blue"], seed=8)
    (root / "labels.csv").write_text(
        "file,tags\n"
        "images/p0.jpg,red;round\n"
        "p1.jpg,red\n"  # a bare name found below the folder
        "p2.jpg,red;round\n"
        "images/p3.jpg,\n"
        "p4.jpg,red;solo\n"  # 'solo' has one photo: left out of training
        "images/p5.jpg,red\n"
        "more/p6.png,green;round\n"
        "gone.jpg,red\n"  # listed, missing
        "p0.jpg,blue\n", "utf-8")  # ambiguous
    data = scan_tagged(root)
    assert data.tag_names == ["red", "round"] and data.left_out_tags == ["green", "solo"]
    recs = data.records()
    assert len(recs) == 7
    by_name = {r.path.rsplit("/", 1)[-1]: data.tags[r.digest] for r in recs}
    assert by_name["p3.jpg"] == () and by_name["p0.jpg"] == ("red", "round")
    text = " | ".join(_messages(data.findings))
    assert "1 photo(s) listed in labels.csv are not in the folder" in text
    assert "1 listed name(s) match several files" in text
    assert "2 image file(s) are not in labels.csv" in text
    assert "tag 'solo' has 1 photo(s); training leaves it out" in text
    assert "7 photo(s) tagged: 4 with two tags or more, 1 with none" in text
    # the split is the content's, as for a class folder
    assert all(r.split == SplitSpec().assign(r.digest) for r in recs)
    y = data.targets(recs)
    assert y.shape == (7, 2) and y.sum(axis=0).tolist() == [5, 3]


def test_a_class_folder_read_with_a_tags_file_beside_says_how_to_train_its_tags(tmp_path):
    """The window and ``train`` without --multi-label read class folders: a tags file at the
    top (VOC's layout: images/ and labels.csv) would silently become one class "images"."""
    from app.core.intake.dataset import scan_dataset

    for i in range(3):
        make_image(tmp_path / "images" / f"p{i}.jpg", COLOURS["red"], seed=i)
    assert not [f for f in scan_dataset(tmp_path).findings if "--multi-label" in f.message]
    (tmp_path / "labels.csv").write_text("file,tags\np0.jpg,cat\n", "utf-8")
    hints = [f for f in scan_dataset(tmp_path).findings if "--multi-label" in f.message]
    assert len(hints) == 1 and hints[0].level == "warning"
    assert "labels.csv is a tags file" in hints[0].message


def test_the_tags_file_is_replaced_by_rename_and_read_back(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,tags\nold.jpg,x\n", "utf-8")
    rows = {"a b.jpg": ("sofa", "cat"), "b,c.jpg": (), "é/ü.png": ("ключ",)}
    write_tags(path, rows)
    assert {r.file: r.tags for r in read_tags(path).rows} == {
        k: tuple(sorted(v)) for k, v in rows.items()}
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]  # no temporary left
    with pytest.raises(ValueError, match="cannot be a folder name"):
        write_tags(path, {"a.jpg": ("a/b",)})
    assert {r.file for r in read_tags(path).rows} == set(rows)  # the old file, untouched


def test_best_f1_threshold_by_hand():
    # cuts after 1..5 photos: F1 = 0.5, 0.8, 0.667, 0.857, 0.75: the best keeps 4, the
    # threshold sits between the 4th and the 5th probability
    p, y = np.array([0.9, 0.8, 0.7, 0.3, 0.2]), np.array([1, 1, 0, 1, 0])
    assert best_f1_threshold(p, y) == pytest.approx(0.25)
    assert best_f1_threshold(p, np.zeros(5)) == DEFAULT_THRESHOLD
    # tied probabilities are never split
    assert best_f1_threshold(np.array([0.6, 0.6, 0.1]), np.array([1, 0, 0])) == \
        pytest.approx(0.35)


def test_average_precision_by_hand():
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.3]), np.array([1, 0, 1, 0])) == \
        pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.5, 0.4]), np.array([0, 0])) is None


def test_a_tag_temperature_undoes_a_known_scaling():
    rng = np.random.default_rng(0)
    u = rng.normal(0, 2, 20000)
    y = (rng.random(u.size) < 1 / (1 + np.exp(-u))).astype(float)
    assert fit_tag_temperature(3.0 * u, y) == pytest.approx(3.0, rel=0.05)


def test_thresholds_move_from_one_half_only_on_enough_validation_photos():
    rng = np.random.default_rng(1)
    n = 400
    y = np.zeros((n, 2))
    y[:, 0] = rng.random(n) < 0.3  # many photos with tag 0
    y[: MIN_POSITIVES_TO_TUNE - 5, 1] = 1  # too few with tag 1
    # logits that rank well but sit too low: the best F1 is well below 0.5
    z = np.where(y > 0, rng.normal(-0.5, 0.6, y.shape), rng.normal(-3.0, 0.6, y.shape))
    trust = fit_tag_trust(z, y)
    probs = trust.calibrated(z)
    assert trust.thresholds[1] == DEFAULT_THRESHOLD
    assert trust.thresholds[0] == pytest.approx(best_f1_threshold(probs[:, 0], y[:, 0]))
    assert trust.thresholds[0] < 0.45  # the best F1 sits well below one half here
    assert all(math.isfinite(t) and t > 0 for t in trust.temperatures)


def test_scores_by_hand():
    tags = ["cat", "dog", "sofa"]
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]])
    p = np.array([[0.9, 0.6, 0.1],   # cat, and dog wrongly
                  [0.8, 0.7, 0.2],   # right
                  [0.1, 0.2, 0.3],   # none, right
                  [0.2, 0.1, 0.4]])  # sofa missed
    ev = score_tags(tags, y, p, ["a", "b", "c", "d"], [0.5, 0.5, 0.5])
    # decisions: tp = 3 (cat a, cat b, dog b), fp = 1 (dog a), fn = 1 (sofa d)
    assert ev.micro_f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 1), abs=1e-4)
    assert ev.exact_match == 0.5 and ev.hamming_loss == pytest.approx(2 / 12, abs=1e-4)
    assert ev.per_tag["dog"]["precision"] == 0.5 and ev.per_tag["sofa"]["recall"] == 0.0
    assert ev.confused == {"cat": {"dog": 1}}
    assert [e["path"] for e in ev.errors] == ["a", "d"]
    assert ev.none_rate == 0.5
    assert ev.map == pytest.approx(np.mean([1.0, 1.0, 1.0]), abs=1e-4)


BASE = {"format_version": 2, "classes": ["cat", "dog"], "image_size": [64, 64]}


@pytest.mark.parametrize("changes, message", [
    ({"task": "multi-label"}, "thresholds is missing"),
    ({"task": "multi-label", "thresholds": {"cat": 0.5}}, "one value for each class"),
    ({"task": "multi-label", "thresholds": {"cat": 0.5, "dog": 0.5, "cow": 0.5}},
     "one value for each class"),
    ({"task": "multi-label", "thresholds": {"cat": 1.5, "dog": 0.5}}, "thresholds.cat"),
    ({"task": "multi-label", "thresholds": {"cat": "high", "dog": 0.5}}, "thresholds.cat"),
    ({"task": "bogus"}, "task"),
    ({"task": "multi-label", "thresholds": {"cat": 0.5, "dog": 0.5}, "format_version": 1},
     "needs format_version 2"),
    ({"task": "multi-label", "thresholds": {"cat": 0.5, "dog": 0.5},
      "calibration": {"temperatures": {"cat": -1.0, "dog": 1.0}}}, "temperatures.cat"),
])
def test_a_hostile_multi_label_metadata_is_one_clear_error(changes, message):
    from app.core.storage.model_folder import ModelDirError, validate_metadata

    with pytest.raises(ModelDirError, match=message):
        validate_metadata({**BASE, **changes})


def test_single_label_metadata_of_either_format_still_reads():
    from app.core.storage.model_folder import validate_metadata

    for version in (1, 2):
        assert validate_metadata({**BASE, "format_version": version})["classes"] == \
            ["cat", "dog"]
    ok = {**BASE, "task": "multi-label", "thresholds": {"cat": 0.3, "dog": 0.5}}
    assert validate_metadata(ok)["thresholds"]["cat"] == 0.3


@pytest.mark.parametrize("content", [b"", b"file,tags\n", b"file,tags\nnot-there.jpg,cat\n"])
def test_a_tags_file_that_lists_no_usable_photo_is_one_error(tmp_path, content):
    make_image(tmp_path / "photos" / "a.jpg", COLOURS["red"])
    (tmp_path / "photos" / "labels.csv").write_bytes(content)
    data = scan_tagged(tmp_path / "photos")
    assert [f.message for f in data.errors] == [
        f"no usable photo listed in {tmp_path / 'photos' / 'labels.csv'} was found below "
        f"{tmp_path / 'photos'}"]
    assert not data.records() and not data.tag_names


GOOD_SCORES = {"task": "multi-label", "count": 10, "map": 0.8, "micro_f1": 0.7,
               "macro_f1": 0.6, "exact_match": 0.5, "hamming_loss": 0.1, "none_rate": 0.1,
               "unknown_rate": None, "threshold_rule": "0.5",
               "per_tag": {t: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "ap": 0.7,
                               "support": 4, "threshold": 0.5} for t in ("cat", "dog")},
               "confused": {"(none)": {"dog": 1}},
               "errors": [{"path": "a.jpg", "true": ["cat", "dog"], "predicted": ["cat"]},
                          {"path": "b.jpg", "true": [], "predicted": ["dog"]}]}


@pytest.mark.parametrize("changes, message", [
    ({}, ""),
    ({"task": None}, "not the scores of a model of several tags"),
    ({"count": -1}, "is not a count"),
    ({"map": 1.5}, "map is not a fraction"),
    ({"per_tag": {"cat": GOOD_SCORES["per_tag"]["cat"]}}, "its tags are not the model's"),
    ({"per_tag": {"cat": GOOD_SCORES["per_tag"]["cat"],
                  "dog": {**GOOD_SCORES["per_tag"]["dog"], "recall": "all"}}},
     "dog: recall is not a fraction"),
    ({"per_tag": {"cat": GOOD_SCORES["per_tag"]["cat"],
                  "dog": {**GOOD_SCORES["per_tag"]["dog"], "threshold": 0.3}}},
     "its thresholds are not the model's"),
    ({"confused": {"cat": {"bird": 1}}}, "its confusions are not counts between its tags"),
    ({"confused": {"(none)": {"dog": -2}}}, "its confusions are not counts"),
    ({"errors": [{"path": "a.jpg", "true": ["cat"], "predicted": ["<b>x"]}]},
     "its error photos are not photos with tag sets of its tags"),
    ({"errors": [{"path": 3, "true": [], "predicted": []}]}, "its error photos"),
])
def test_a_multi_label_folders_kept_scores_are_read_or_refused_with_why(tmp_path, changes,
                                                                         message):
    """What the window's Evaluate page shows of a multi-label model folder: every field of a
    received evaluation.json checked, a damaged one a reason, never a traceback."""
    import json

    from app.core.pipeline.review import saved_tag_scores

    (tmp_path / "evaluation.json").write_text(json.dumps({**GOOD_SCORES, **changes}), "utf-8")
    scores, why = saved_tag_scores(tmp_path, ["cat", "dog"], [0.5, 0.5])
    if not message:
        assert why == "" and scores.count == 10 and scores.scores["map"] == 0.8
        assert list(scores.per_tag) == ["cat", "dog"] and scores.per_tag["dog"]["support"] == 4
        assert scores.error_photos("(none)", "dog") == [
            {"path": "b.jpg", "tags": True, "true": "none of the tags", "predicted": "dog"}]
        assert [e["path"] for e in scores.error_photos()] == ["a.jpg", "b.jpg"]
        assert scores.error_photos("cat", "dog") == []  # a.jpg lacks dog, given nothing extra
    else:
        assert scores is None and "is damaged" in why and message in why


def test_kept_answers_measure_the_scores_again_at_other_thresholds(tmp_path):
    """A tag's threshold moved on the Evaluate page: the kept test answers give each tag's
    precision, recall and F1 and the set scores at the new thresholds (as scoring them anew
    does); the ranking scores stay as kept."""
    import json

    from app.core.pipeline.review import saved_tag_scores
    from app.core.trust.tags import score_tags

    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.45], [0.55, 0.1]])
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    paths = [f"p{i}.jpg" for i in range(4)]
    ev = score_tags(["cat", "dog"], targets, probs, paths, [0.5, 0.5])
    doc = {"task": "multi-label", **ev.as_dict(answers=True)}
    (tmp_path / "evaluation.json").write_text(json.dumps(doc), "utf-8")
    kept, why = saved_tag_scores(tmp_path, ["cat", "dog"], [0.5, 0.5])
    assert why == "" and kept.answers is not None
    moved = kept.at({"cat": 0.58, "dog": 0.4})
    fresh = score_tags(["cat", "dog"], targets, probs, paths, [0.58, 0.4])
    assert moved.per_tag["cat"]["recall"] == fresh.per_tag["cat"]["recall"] == 0.5
    assert moved.per_tag["dog"]["precision"] == fresh.per_tag["dog"]["precision"] == 1.0
    assert moved.scores["micro_f1"] == fresh.micro_f1 != kept.scores["micro_f1"]
    assert moved.scores["map"] == kept.scores["map"] and moved.thresholds == {"cat": 0.58,
                                                                             "dog": 0.4}
    assert [e["path"] for e in moved.errors] == [e["path"] for e in fresh.errors]
    doc["answers"]["targets"][0] = [1, 2]  # not 0/1: the whole kept evaluation is refused
    (tmp_path / "evaluation.json").write_text(json.dumps(doc), "utf-8")
    assert saved_tag_scores(tmp_path, ["cat", "dog"], [0.5, 0.5])[0] is None


def test_a_file_listed_twice_answers_with_its_first_row_everywhere(tmp_path):
    """The tags file's first row for a file is its answer (the second is a finding): what the
    Label page shows, what tagging compares before writing and what an edit changes."""
    from app.core.intake.tags import current_tags, edit_tags

    path = tmp_path / "labels.csv"
    path.write_text("file,tags\na.jpg,cat\nb.jpg,dog\n./a.jpg,dog;person\n")
    found = read_tags(path)
    assert found.first_tags() == {"a.jpg": ("cat",), "b.jpg": ("dog",)}
    assert any("listed twice with different tags" in f.message for f in found.findings)
    assert current_tags(path, ["a.jpg", "c.jpg"]) == {"a.jpg": ("cat",), "c.jpg": None}
    edit_tags(path, {"a.jpg": ("bird",)})
    assert path.read_text() == "file,tags\na.jpg,bird\nb.jpg,dog\n./a.jpg,dog;person\n"
    assert current_tags(path, ["a.jpg"]) == {"a.jpg": ("bird",)}


def test_taking_out_a_file_listed_twice_is_refused_not_half_done(tmp_path):
    """Taking out the first row would make the later row (the user's) the file's answer."""
    from app.core.intake.tags import edit_tags

    path = tmp_path / "labels.csv"
    text = "file,tags\na.jpg,cat\nb.jpg,dog\n./a.jpg,dog;person\n"
    path.write_text(text)
    with pytest.raises(ValueError, match="would not read back as meant"):
        edit_tags(path, {"a.jpg": None})
    assert path.read_text() == text
    edit_tags(path, {"b.jpg": None})
    assert path.read_text() == "file,tags\na.jpg,cat\n./a.jpg,dog;person\n"
