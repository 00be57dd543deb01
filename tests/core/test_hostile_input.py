"""Hostile and damaged input that is not a journal, a model folder or the cache: links and odd
names in a data folder, arguments out of range, a loss that turns NaN, and what a killed
export leaves behind. Each ends in a clear message or a correct answer, never a traceback."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from app import cli
from app.core.base.errors import SettingsError, shown
from app.core.delivery.export import _SCRATCH, MODEL_FILES, clean_leftovers
from app.core.intake.dataset import SplitSpec, scan_dataset
from app.core.training.fit import TrainingDiverged, TrainSettings, train_head
from tests.conftest import COLOURS, make_dataset, make_image
from tests.core.test_training import _synthetic


def _messages(ds):
    return [f.message for f in ds.findings]


def test_a_link_loop_is_reported_not_walked_forever(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    os.symlink(".", data / "red" / "loop")
    os.symlink(data, data / "green" / "up")
    ds = scan_dataset(data)
    assert ds.class_counts() == {"blue": 2, "green": 2, "red": 2}
    assert any("loop" in m for m in _messages(ds))


def test_a_link_into_a_system_folder_is_never_followed(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    os.symlink("/etc", data / "red" / "etc")
    os.symlink("/etc", data / "etc")
    from app.core.storage.store import FeatureStore

    with FeatureStore(tmp_path / "cache") as store:
        ds = scan_dataset(data, store)
        hashed = store.file_index()
    assert "etc" not in ds.classes and len(hashed) == 6  # nothing of /etc was read
    assert any("system folder" in m for m in _messages(ds))


def test_images_through_a_link_from_outside_are_used_and_reported(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    other = tmp_path / "other-disk"
    for i in range(2):
        make_image(other / "cats" / f"c{i}.jpg", (9, 9, 9), seed=i)
    os.symlink(other / "cats", data / "cats")
    os.symlink(other / "cats" / "c0.jpg", data / "red" / "linked.jpg")
    ds = scan_dataset(data)
    assert ds.class_counts()["cats"] == 2 and ds.class_counts()["red"] == 3
    finding = next(f for f in ds.findings if "from outside the data folder" in f.message)
    assert len(finding.paths) == 3


def test_class_names_with_control_characters_are_left_out_by_name(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    for name in ("evil\nclass", "esc\x1b[31mred", " padded"):
        make_image(data / name / "a.jpg", COLOURS["red"])
    ds = scan_dataset(data)
    assert ds.classes == ["blue", "green", "red"]
    left = [m for m in _messages(ds) if "left out" in m]
    assert len(left) == 3 and all("\n" not in m and "\x1b" not in m for m in left)
    assert any("\\n" in m for m in left) and any("\\x1b" in m for m in left)


def test_a_file_name_that_is_not_utf8_is_skipped_by_name_the_rest_cached(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    raw = os.path.join(os.fsencode(data / "red"), b"caf\xe9.jpg")
    with open(raw, "wb") as fh:
        fh.write((data / "red" / "red_000.jpg").read_bytes())
    from app.core.storage.store import FeatureStore

    with FeatureStore(tmp_path / "cache") as store:
        ds = scan_dataset(data, store)
    assert ds.class_counts()["red"] == 2
    skipped = [s for s in ds.skipped if "UTF-8" in s.reason]
    assert len(skipped) == 1 and "\\udce9" in skipped[0].path


def test_shown_escapes_what_would_reach_a_terminal_raw():
    assert shown("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\nc"
    assert shown("café 🌻") == "café 🌻"


@pytest.mark.parametrize("text", ["nan/1/1", "0/0/0", "inf/1/1", "1/-1/1", "a/b/c", "1/1"])
def test_bad_split_fractions_are_one_clear_error(text):
    with pytest.raises(SettingsError):
        SplitSpec.parse(text)
    assert SplitSpec.parse("80/10/10").train == pytest.approx(0.8)


@pytest.mark.parametrize("bad", [{"aux_weight": float("nan")}, {"aux_weight": float("inf")},
                                 {"early_stopping": -1}, {"learning_rate": float("nan")},
                                 {"dropout": float("nan")}, {"hidden_units": -3}])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(SettingsError):
        TrainSettings(**bad)


def _cli(*args):
    err = io.StringIO()
    old = sys.stderr
    sys.stderr = err
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own refusal: usage and one error line, exit 2
        code = exc.code
    finally:
        sys.stderr = old
    return code, err.getvalue()


@pytest.mark.parametrize("args, words", [
    (["--split", "nan/1/1"], "split"),
    (["--split", "0/0/0"], "split"),
    (["--batch-size", "0"], "batch size"),
    (["--batch-size", "20000"], "batch size"),
])
def test_cache_arguments_out_of_range_end_in_one_error_line(tmp_path, args, words):
    data = make_dataset(tmp_path / "d", per_class=1)
    code, err = _cli("cache", data, "--backbone", "tiny", "--weights", "none",
                     "--cache-dir", tmp_path / "c", *args)
    assert code == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()  # refused before any work


@pytest.mark.parametrize("args, words", [
    (["--aux-weight", "nan"], "aux weight"),
    (["--aux-weight", "inf"], "aux weight"),
    (["--early-stopping", "-1"], "early stopping"),
    (["--format", "bogus"], "format"),
    (["--batch-size", "0"], "batch size"),
])
def test_train_arguments_out_of_range_are_refused_before_any_work(tmp_path, args, words):
    data = make_dataset(tmp_path / "d", per_class=1)
    code, err = _cli("train", data, "--backbone", "tiny", "--weights", "none",
                     "--cache-dir", tmp_path / "c", "--out", tmp_path / "m", *args)
    assert code == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "m").exists()


def test_an_out_folder_under_a_file_is_refused_before_training(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=1)
    (tmp_path / "afile").write_text("x")
    code, err = _cli("train", data, "--backbone", "tiny", "--weights", "none",
                     "--cache-dir", tmp_path / "c", "--out", tmp_path / "afile" / "m")
    assert code == 2 and "is a file" in err and not (tmp_path / "c").exists()


def test_json_output_never_holds_a_bare_nan():
    out = io.StringIO()
    old = sys.stdout
    sys.stdout = out
    try:
        cli._print_json({"a": float("nan"), "b": [1.0, float("inf")], "p": "caf\udce9"})
    finally:
        sys.stdout = old
    doc = json.loads(out.getvalue())  # strict: json.loads accepts NaN, so check the text too
    assert "NaN" not in out.getvalue() and "Infinity" not in out.getvalue()
    assert doc == {"a": None, "b": [1.0, None], "p": "caf\udce9"}


@pytest.mark.slow  # trains a Keras head
def test_a_nan_loss_stops_training_with_a_clear_error():
    labels = np.arange(60) % 3
    train = _synthetic(60, labels, 0)
    train.features["main"][7, 3] = np.float16("nan")  # one bit-rotten value
    with pytest.raises(TrainingDiverged, match="not a number"):
        train_head(train, _synthetic(30, labels[:30], 1), ["a", "b", "c"],
                   TrainSettings(epochs=3, batch_size=8, early_stopping=0))


def test_leftovers_of_a_dead_export_are_removed_and_nothing_else(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid = dead.pid
    gone = tmp_path / f".model.export-{pid}-0123abcd"
    gone.mkdir()
    (gone / "model.keras").write_bytes(b"half")
    stale_meta = tmp_path / f".model.metadata-{pid}-0123abcd.json"
    stale_meta.write_text("{}")
    live = tmp_path / f".model.export-{os.getpid()}-0123abcd"  # a live writer's
    live.mkdir()
    foreign = tmp_path / f".model.export-{pid}-89abcdef"  # our name, not our content
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("mine")
    users = tmp_path / ".model.export-notes"
    users.mkdir()
    removed = clean_leftovers(tmp_path)
    assert sorted(removed) == sorted([gone, stale_meta])
    assert live.exists() and foreign.exists() and users.exists()
    assert _SCRATCH.match(gone.name) and "model.keras" in MODEL_FILES


def test_loose_photos_without_class_folders_are_offered_for_labelling(tmp_path):
    for i in range(3):
        make_image(tmp_path / "d" / f"photo{i}.jpg", COLOURS["red"], seed=i)
    ds = scan_dataset(tmp_path / "d")
    assert len(ds.errors) == 1 and "3 unsorted photo(s)" in ds.errors[0].message
    assert "Label page" in ds.errors[0].message
