"""The evaluation a model folder keeps (evaluation.json) comes back as it was written, and a
damaged or hostile one is refused with a reason, never raised or half-used; copying an opened
model folder takes only what an export writes and refuses a folder that is not ours."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from app.core.delivery.export import ExportError, copy_model, is_model_folder
from app.core.pipeline.review import Review, review_document, saved_review
from app.core.trust.evaluation import score

CLASSES = ["cat", "dog", "owl"]


def _document() -> dict:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 30)
    probs = rng.dirichlet(np.ones(3), 30)
    paths = [f"/photos/{CLASSES[t]}/{i}.jpg" for i, t in enumerate(true)]
    ev = score(CLASSES, true, probs, paths, uncalibrated=probs, temperature=1.3)
    test = [{"path": p, "digest": f"d{i}", "true": CLASSES[t],
             "predicted": CLASSES[int(probs[i].argmax())],
             "confidence": float(probs[i].max())} for i, (p, t) in enumerate(zip(paths, true))]
    hardest = [{"path": paths[0], "label": "cat", "predicted": "dog", "confidence": 0.9,
                "loss": 2.3, "digest": "d0"}]
    review = Review(CLASSES, test, hardest, np.linspace(0.1, 0.9, 12), "knn", 0.3)
    return review_document(ev, review, "/photos")


def _write(folder, doc) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "evaluation.json").write_text(json.dumps(doc))


def test_the_kept_evaluation_comes_back_as_written(tmp_path):
    doc = _document()
    _write(tmp_path, doc)
    saved, why = saved_review(tmp_path, CLASSES)
    assert why == "" and saved is not None
    assert saved.evaluation.as_dict() == doc["evaluation"]
    assert saved.review.test == doc["review"]["test"]
    assert saved.review.hardest[0]["true"] == "cat" and saved.review.hardest[0]["loss"] == 2.3
    assert list(saved.review.validation_scores) == doc["review"]["validation_scores"]
    assert (saved.review.method, saved.review.default_threshold) == ("knn", 0.3)
    assert saved.dataset == "/photos" and saved.made


def _damaged(doc, how):
    doc = json.loads(json.dumps(doc))
    how(doc)
    return doc


@pytest.mark.parametrize("how", [
    lambda d: d["evaluation"].update(labels=["cat", "dog"]),  # another model's classes
    lambda d: d["evaluation"]["confusion"].pop(),  # not n x n
    lambda d: d["evaluation"]["confusion"][0].__setitem__(0, -4),
    lambda d: d["evaluation"].update(main_accuracy=7.5),
    lambda d: d["evaluation"].update(main_accuracy=float("nan")),  # json reads NaN
    lambda d: d["review"]["test"][0].update(path=42),
    lambda d: d["review"]["test"][0].update(predicted="<script>"),
    lambda d: d["review"]["validation_scores"].__setitem__(0, "high"),
    lambda d: d["review"].update(method="exec"),
    lambda d: d["evaluation"]["reliability"]["after"][0].update(count="many"),
    lambda d: d.update(evaluation_version=99),
    lambda d: d.update(evaluation=[]),
], ids=["classes", "shape", "negative", "accuracy", "nan", "path", "label", "scores",
        "method", "bins", "version", "type"])
def test_a_damaged_evaluation_is_refused_with_a_reason(tmp_path, how):
    _write(tmp_path, _damaged(_document(), how))
    saved, why = saved_review(tmp_path, CLASSES)
    assert saved is None and "evaluation.json" in why


def test_no_evaluation_not_json_and_not_a_file(tmp_path):
    saved, why = saved_review(tmp_path, CLASSES)
    assert saved is None and "holds no evaluation" in why
    (tmp_path / "evaluation.json").write_text("{not json")
    saved, why = saved_review(tmp_path, CLASSES)
    assert saved is None and "damaged" in why
    (tmp_path / "evaluation.json").unlink()
    os.mkfifo(tmp_path / "evaluation.json")  # would block a plain read forever
    saved, why = saved_review(tmp_path, CLASSES)
    assert saved is None and why


def _model_folder(folder, threshold=0.5):
    folder.mkdir()
    meta = {"format_version": 1, "written_by": "Bottleneck Studio", "classes": CLASSES,
            "unknown": {"method": "knn", "threshold": threshold}, "parity": {"checked": True}}
    (folder / "metadata.json").write_text(json.dumps(meta))
    (folder / "model.keras").write_bytes(b"weights")
    (folder / "evaluation.json").write_text(json.dumps(_document()))
    return folder


def test_copying_an_opened_model_takes_only_what_an_export_writes(tmp_path):
    src = _model_folder(tmp_path / "received")
    (src / "notes.txt").write_text("not ours")
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (src / "labels.txt").symlink_to(secret)  # a link must not be followed into the copy
    out = tmp_path / "mine"
    report = copy_model(src, out, threshold=0.75)
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "metadata.json",
                                                     "model.keras"]
    assert is_model_folder(out) and report.formats == ("keras",) and report.parity_note == ""
    unknown = json.loads((out / "metadata.json").read_text())["unknown"]
    assert unknown["threshold"] == 0.75 and unknown["fitted_threshold"] == 0.5
    assert unknown["threshold_set_by"] == "the user (Evaluate page)"
    assert json.loads((src / "metadata.json").read_text())["unknown"]["threshold"] == 0.5

    again = copy_model(src, out, threshold=0.6)  # replaces our own copy
    assert again.folder == out
    assert json.loads((out / "metadata.json").read_text())["unknown"]["threshold"] == 0.6


def test_copying_refuses_a_folder_that_is_not_ours(tmp_path):
    src = _model_folder(tmp_path / "received")
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.txt").write_text("four years")
    with pytest.raises(ExportError, match="not a model folder written by this app"):
        copy_model(src, documents, threshold=0.7)
    assert [p.name for p in documents.iterdir()] == ["thesis.txt"]
