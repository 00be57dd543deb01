"""A data folder from someone else never moves a file outside it, and a move is never lost:
the journal is signed by the user's own secret, every path in it is checked, and a crash or a
full disk leaves a move either done and undoable or not done."""

import json
import os
import resource
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.intake import journal
from app.core.intake.filing import journal_state, move_image, moves, undo_move
from app.core.intake.journal import JOURNAL, LOCK, LabelError
from app.core.intake.labels import excluded, set_excluded
from tests.conftest import killed_after_journal, make_dataset, make_image


def _write_lines(data, *lines):
    with open(data / JOURNAL, "a", encoding="utf-8") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def test_a_shipped_journal_never_moves_a_file_from_outside(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    secret = tmp_path / "home" / ".ssh" / "id_ed25519"
    secret.parent.mkdir(parents=True)
    secret.write_text("PRIVATE KEY")
    _write_lines(data,
                 {"op": "move", "source": "red/holiday.jpg", "target": str(secret)},
                 {"op": "move", "source": "red/planted.jpg", "target": "../../x/y.jpg"},
                 {"op": "move", "source": "red/a.jpg", "target": "green/a.jpg",
                  "id": "1", "mac": "0" * 64})
    state = journal_state(data)
    assert state.moves == [] and len(state.foreign) == 3
    with pytest.raises(LabelError, match="nothing to undo"):
        undo_move(data)
    assert secret.read_text() == "PRIVATE KEY" and not (data / "red" / "holiday.jpg").exists()


def test_a_journal_copied_from_another_folder_or_edited_is_foreign(tmp_path):
    a = make_dataset(tmp_path / "a", per_class=2)
    b = make_dataset(tmp_path / "b", per_class=2)
    move_image(a, a / "red" / "red_000.jpg", "green")
    assert len(moves(a)) == 1
    (b / JOURNAL).write_bytes((a / JOURNAL).read_bytes())  # same user, another folder
    (b / "green" / "red_000.jpg").write_bytes(b"b's own photo")
    assert moves(b) == [] and len(journal_state(b).foreign) == 1
    with pytest.raises(LabelError, match="nothing to undo"):
        undo_move(b)
    assert (b / "green" / "red_000.jpg").read_bytes() == b"b's own photo"
    # the same line with its target edited no longer verifies
    entry = json.loads((a / JOURNAL).read_text().splitlines()[0])
    entry["target"] = "blue/red_000.jpg"
    (a / JOURNAL).write_text(json.dumps(entry) + "\n")
    assert moves(a) == []


def test_a_line_signed_with_another_users_secret_is_foreign(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", per_class=2)
    monkeypatch.setenv("BOTTLENECK_STUDIO_CONFIG", str(tmp_path / "someone-else"))
    move_image(data, data / "red" / "red_000.jpg", "green")
    assert len(moves(data)) == 1
    monkeypatch.setenv("BOTTLENECK_STUDIO_CONFIG", str(tmp_path / "me"))
    assert moves(data) == [] and len(journal_state(data).foreign) == 1


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    _write_lines(data, "[1,2]", '"move"', '{"op":"move"}', '{"op":"move","source":5}',
                 "not json", "null", '{"op": 3}')
    move = move_image(data, data / "red" / "red_000.jpg", "green")
    state = journal_state(data)
    assert state.moves == [move] and state.malformed == 5 and len(state.foreign) == 2
    assert undo_move(data) == move and (data / "red" / "red_000.jpg").exists()


def test_a_torn_last_line_never_swallows_the_next_move(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    first = move_image(data, data / "red" / "red_000.jpg", "green")
    with open(data / JOURNAL, "a", encoding="utf-8") as fh:
        fh.write('{"op": "move", "source": "red/red_0')  # a crash mid-line
    second = move_image(data, data / "blue" / "blue_000.jpg", "red")
    assert moves(data) == [first, second]
    assert undo_move(data) == second and (data / "blue" / "blue_000.jpg").exists()


def test_a_full_disk_refuses_the_move_cleanly_and_leaves_nothing_half_done(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    first = move_image(data, data / "red" / "red_000.jpg", "green")
    size = (data / JOURNAL).stat().st_size
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, old_limit[1]))  # no byte more
    try:
        with pytest.raises(LabelError, match="nothing was changed"):
            move_image(data, data / "blue" / "blue_000.jpg", "red")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert (data / "blue" / "blue_000.jpg").exists() and not (data / "red" / "blue_000.jpg"
                                                               ).exists()
    assert moves(data) == [first]
    assert undo_move(data) == first


def test_a_crash_between_journal_and_rename_undoes_the_move_before_it(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    first = move_image(data, data / "red" / "red_000.jpg", "green")
    # what a kill -9 after the journal line and before the rename leaves
    killed_after_journal(data, journal.Move("blue/blue_000.jpg", "red/blue_000.jpg"))
    assert len(moves(data)) == 2
    assert undo_move(data) == first
    assert (data / "red" / "red_000.jpg").exists() and (data / "blue" / "blue_000.jpg").exists()
    assert moves(data) == []


def test_undo_after_the_class_folder_was_removed_is_a_clean_refusal(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=1)
    first = move_image(data, data / "blue" / "blue_000.jpg", "green")
    move_image(data, data / "red" / "red_000.jpg", "green")
    (data / "red").rmdir()
    with pytest.raises(LabelError, match="no longer exists"):
        undo_move(data)
    # reported and closed, the photo left where it is: the move before it can be undone
    assert (data / "green" / "red_000.jpg").exists() and moves(data) == [first]
    assert undo_move(data) == first and (data / "blue" / "blue_000.jpg").exists()


def test_moves_never_write_through_a_linked_class_folder(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    elsewhere = tmp_path / "other-disk" / "cats"
    make_image(elsewhere / "cat.jpg", (9, 9, 9))
    os.symlink(elsewhere, data / "cats")
    with pytest.raises(LabelError, match="link out of the data folder"):
        move_image(data, data / "red" / "red_000.jpg", "cats")
    with pytest.raises(LabelError):
        move_image(data, data / "cats" / "cat.jpg", "red")
    assert (data / "red" / "red_000.jpg").exists() and (elsewhere / "cat.jpg").exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["cat.jpg"] and moves(data) == []


def test_a_damaged_exclusion_list_is_never_taken_for_empty(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=1)
    cache = tmp_path / "cache"
    cache.mkdir()
    for text in ("[]", '"abc"', "{", '{"x": [1]}', '{"x": {"d": 5}}'):
        (cache / "excluded.json").write_text(text)
        with pytest.raises(LabelError, match="damaged"):
            excluded(cache, data)
        with pytest.raises(LabelError, match="damaged"):
            set_excluded(cache, data, "abc", "red/red_000.jpg")
        assert (cache / "excluded.json").read_text() == text
    (cache / "excluded.json").unlink()
    set_excluded(cache, data, "abc", "red/red_000.jpg")
    assert excluded(cache, data) == {"abc": "red/red_000.jpg"}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=12)
_PATHS = st.sampled_from(["red/red_000.jpg", "green/red_000.jpg", "/etc/passwd", "../x.jpg",
                          "red/../../x.jpg", ".hidden/a.jpg", "red", "red/sub/a.jpg", "",
                          "OUTSIDE"])
_ENTRY = st.fixed_dictionaries(
    {"op": st.sampled_from(["move", "copy", "undo", "abort", "other"])},
    optional={"source": _PATHS | _JSON, "target": _PATHS | _JSON, "id": st.text(max_size=4),
              "ref": st.text(max_size=4), "mac": st.text(max_size=64), "time": _JSON})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_ENTRY.map(json.dumps) | _JSON.map(json.dumps)
                      | st.text(max_size=30), max_size=8))
def test_fuzz_any_journal_gives_a_clean_answer_and_touches_nothing_outside(tmp_path, lines):
    root = tmp_path / "fuzz"
    outside = tmp_path / "outside.txt"
    if not root.exists():
        make_dataset(root, per_class=1)
        outside.write_text("not yours")
    (root / JOURNAL).write_text(
        "\n".join(line.replace("OUTSIDE", str(outside)) for line in lines) + "\n")
    before = sorted(p.relative_to(root) for p in root.rglob("*")
                    if p.name not in (JOURNAL, LOCK))
    state = journal_state(root)
    assert state.moves == []  # nothing in it was signed by this user
    with pytest.raises(LabelError):
        undo_move(root)
    assert outside.read_text() == "not yours"
    assert sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.name not in (JOURNAL, LOCK)) == before


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_JSON)
def test_fuzz_any_exclusion_list_is_read_or_refused_never_a_crash(tmp_path, doc):
    cache = tmp_path / "fuzz-cache"
    cache.mkdir(exist_ok=True)
    text = json.dumps(doc)
    (cache / "excluded.json").write_text(text)
    try:
        got = excluded(cache, tmp_path)
    except LabelError:
        with pytest.raises(LabelError):
            set_excluded(cache, tmp_path, "d", "p")
        assert (cache / "excluded.json").read_text() == text
    else:
        assert isinstance(got, dict)
        set_excluded(cache, tmp_path, "d", "p")
        assert excluded(cache, tmp_path)["d"] == "p"


def test_even_a_signed_line_must_name_class_and_file_inside_the_folder(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=1)
    root = data.resolve()
    (data / ".git").mkdir()
    with pytest.raises(LabelError, match="not an image path"):
        move_image(data, data / "red" / "red_000.jpg", ".git")
    for bad in ("/etc/passwd", "../x/y.jpg", "red/../../y.jpg", ".git/y.jpg", "red/sub/y.jpg"):
        journal.append(root, "move", journal.Move("red/red_000.jpg", bad))
    state = journal_state(data)
    assert state.moves == [] and len(state.foreign) == 5
