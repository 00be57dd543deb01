"""Nothing lost: every user action that writes files is one operation of the journal, and an
undo takes back exactly one operation, never what another wrote; the journal keeps its
promises against a failing disk, a kill -9, a hostile sender and a second window."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import stat
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.delivery.predict import Prediction
from app.core.intake import journal
from app.core.intake.dataset import digest_file
from app.core.intake.filing import (
    Request,
    create_class,
    file_photos,
    label_many,
    moves,
    operations,
    undo,
)
from app.core.intake.journal import JOURNAL, LOCK, JournalKeyError, LabelError
from app.core.intake.sorting import filed_in, sort_into, sort_plan
from tests.conftest import COLOURS, make_dataset, make_image


def _pile(tmp_path, n=6, name="inbox"):
    return [make_image(tmp_path / name / f"p{i}.jpg", COLOURS["red"], seed=100 + i)
            for i in range(n)]


def _answers(photos, label="red"):
    return [Prediction(str(p), [{"label": label, "probability": 0.9}], unknown=False)
            for p in photos]


def _files(root):
    """Every photo under ``root`` (class folders and loose), the app's own files left out."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name not in (JOURNAL, LOCK))


def test_undoing_a_sort_into_the_data_folder_keeps_every_label(tmp_path):
    """The walk's data loss: label 3 photos of an inbox, sort the inbox into the data folder
    by a model's answers, undo the sort: the 3 labels stay, and the sort never filed a labelled
    photo a second time."""
    data = tmp_path / "data"
    for c in ("red", "green"):
        create_class(data if data.exists() else (data.mkdir() or data), c)
    inbox = _pile(tmp_path)
    labelled = label_many(data, inbox[:3], "green")
    assert len(labelled.done) == 3
    plan = sort_plan(_answers(inbox), data, filed_in(data))
    assert [p for p, _w in plan.already] == [str(p) for p in inbox[:3]]
    assert plan.counts() == {"red": 3}  # the labelled ones are never copied into "red"
    assert "3 already filed" in plan.preview(data)
    sorted_ = sort_into(data, plan)
    assert len(sorted_.done) == 3 and len(operations(data)) == 2
    result = undo(data, kind="sort")
    assert [m.id for m in result.undone] == [m.id for m in reversed(sorted_.done)]
    assert sorted(p.name for p in (data / "green").iterdir()) == ["p0.jpg", "p1.jpg",
                                                                   "p2.jpg"]
    assert list((data / "red").iterdir()) == []
    assert [o.id for o in operations(data)] == [labelled.operation]


def test_the_cli_undo_of_a_sort_takes_back_the_sort_only(tmp_path, monkeypatch, capsys):
    from app import cli
    from app.core.delivery import predict as predict_module

    data = tmp_path / "data"
    data.mkdir()
    create_class(data, "green")
    inbox = _pile(tmp_path)
    label_many(data, inbox[:3], "green")

    class Fixed:
        @classmethod
        def from_dir(cls, _folder, *_cache):
            return cls()

        def predict(self, paths, **_kwargs):
            return _answers(predict_module.expand_paths(paths))

    monkeypatch.setattr(predict_module, "Predictor", Fixed)
    assert cli.main(["predict", "MODEL", str(tmp_path / "inbox"), "--sort-into", str(data),
                     "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["done"] == 3 and len(doc["already_filed"]) == 3
    later = make_image(tmp_path / "later.jpg", COLOURS["green"], seed=9)
    label_many(data, [later], "green")  # labelling goes on after the sort
    assert cli.main(["predict", "MODEL", "x", "--sort-into", str(data), "--undo"]) == 0
    assert sorted(p.name for p in (data / "green").iterdir()) == ["later.jpg", "p0.jpg",
                                                                   "p1.jpg", "p2.jpg"]
    assert list((data / "red").iterdir()) == []


def test_an_undo_takes_back_its_own_operation_and_nothing_else(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    inbox = _pile(tmp_path)
    first = label_many(data, inbox[:2], "red")
    second = label_many(data, inbox[2:5], "blue")
    third = label_many(data, inbox[5:], "green")
    result = undo(data, operation=second.operation)  # picked from the list, not the latest
    assert sorted(m.target for m in result.undone) == ["blue/p2.jpg", "blue/p3.jpg",
                                                       "blue/p4.jpg"]
    assert [o.id for o in operations(data)] == [first.operation, third.operation]
    assert (data / "red" / "p0.jpg").exists() and (data / "green" / "p5.jpg").exists()
    with pytest.raises(LabelError, match="no longer in effect"):
        undo(data, operation=second.operation)


def test_an_operation_that_can_no_longer_be_undone_is_reported_not_a_wall(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    loose = [make_image(data / f"loose{i}.jpg", COLOURS["red"], seed=i) for i in range(3)]
    first = file_photos(data, [Request(str(loose[0]), "red")])
    second = file_photos(data, [Request(str(p), "blue") for p in loose[1:]])
    (data / "blue" / "loose1.jpg").unlink()  # deleted by hand
    result = undo(data)
    assert result.operation.id == second.operation
    assert [m.target for m in result.undone] == ["blue/loose2.jpg"]
    assert [m.target for m, _w in result.kept] == ["blue/loose1.jpg"]
    assert "no longer there" in result.kept[0][1] and (data / "loose2.jpg").exists()
    assert undo(data).operation.id == first.operation and (data / "loose0.jpg").exists()


def test_undo_reads_the_journal_once_however_big_the_operation(tmp_path, monkeypatch):
    """Undo used to read and verify the whole journal again for every photo (600 photos:
    171 s); it must cost about what the operation cost."""
    data = tmp_path / "data"
    data.mkdir()
    create_class(data, "red")
    inbox = _pile(tmp_path, n=40)
    for i in range(0, 40, 2):  # 20 operations before the big one
        label_many(data, inbox[i:i + 1], "red")
    sort_into(data, sort_plan(_answers(inbox[1::2] + inbox[20:]), data))
    journal.forget(data.resolve())
    parsed = []
    real = journal._take
    monkeypatch.setattr(journal, "_take", lambda *a: parsed.append(1) or real(*a))
    result = undo(data)
    assert len(result.undone) == 30 - 10  # the sort's copies (10 of the 30 were labelled)
    lines = len((data / JOURNAL).read_text().splitlines())
    assert len(parsed) <= lines  # each line parsed once, not once per photo


def test_no_size_limit_decides_which_operation_is_the_latest(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    older = file_photos(data, [Request(str(data / "red" / "red_000.jpg"), "green")])
    with open(data / JOURNAL, "ab") as fh:  # a received folder padded with junk
        fh.write(b'{"op": "move", "junk": "' + b"x" * (65 << 20) + b'"}\n')
        for i in range(2000):
            fh.write(json.dumps({"op": "move", "id": str(i), "mac": "0" * 64}).encode()
                     + b"\n")
    latest = file_photos(data, [Request(str(data / "blue" / "blue_000.jpg"), "red")])
    journal.forget(data.resolve())
    state = journal.read(data.resolve())
    assert [o.id for o in state.operations] == [older.operation, latest.operation]
    assert state.malformed == 1 and state.foreign_count == 2000 and len(state.foreign) == 100
    assert undo(data).operation.id == latest.operation
    assert (data / "blue" / "blue_000.jpg").exists()


def test_a_kill_between_hard_link_and_unlink_is_finished_by_the_next_writer(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    root = data.resolve()
    first = file_photos(data, [Request(str(data / "blue" / "blue_000.jpg"), "green")])
    assert first.done
    # the journal line, the lock naming the operation, the hard link: then kill -9
    op = journal.new_id()
    item = journal.Move("red/red_000.jpg", "green/red_000.jpg", journal.new_id(), "move",
                        digest_file(data / "red" / "red_000.jpg")[0], op)
    journal.write_items(root, op, "label", "killed", [item])
    (root / LOCK).write_text(f"file {op}")
    os.link(data / "red" / "red_000.jpg", data / "green" / "red_000.jpg")
    with journal.locked(root):  # any next writer recovers first
        pass
    assert not (data / "red" / "red_000.jpg").exists()  # finished: in one place only
    assert (data / "green" / "red_000.jpg").exists()
    assert [o.id for o in operations(data)] == [first.operation, op]
    assert undo(data).operation.id == op and (data / "red" / "red_000.jpg").exists()
    assert undo(data).operation.id == first.operation


def test_a_kill_half_way_through_an_undo_is_finished(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    root = data.resolve()
    loose = [make_image(data / f"l{i}.jpg", COLOURS["red"], seed=i) for i in range(3)]
    filing = file_photos(data, [Request(str(p), "red") for p in loose])
    # an undo killed after putting one photo back and linking the second
    os.link(data / "red" / "l2.jpg", data / "l2.jpg")
    os.unlink(data / "red" / "l2.jpg")
    os.link(data / "red" / "l1.jpg", data / "l1.jpg")
    (root / LOCK).write_text(f"undo {filing.operation}")
    with journal.locked(root):
        pass
    assert (data / "l1.jpg").exists() and not (data / "red" / "l1.jpg").exists()
    assert [m.target for m in moves(data)] == ["red/l0.jpg"]
    assert undo(data).undone[0].target == "red/l0.jpg" and (data / "l0.jpg").exists()


@pytest.mark.parametrize("damage", ["empty", "short", "not hex", "fifo", "readable by others",
                                    "a folder"])
def test_a_damaged_key_is_refused_in_one_line_and_never_replaced(tmp_path, monkeypatch,
                                                                 damage):
    monkeypatch.setenv("BOTTLENECK_STUDIO_CONFIG", str(tmp_path / "config"))
    data = make_dataset(tmp_path / "d", per_class=1)
    key = tmp_path / "config" / journal.KEY_FILE
    key.parent.mkdir()
    if damage == "fifo":
        os.mkfifo(key, 0o600)
    elif damage == "a folder":
        key.mkdir()
    else:
        text = {"empty": "", "short": "ab" * 8, "not hex": "zz" * 32,
                "readable by others": "ab" * 32}[damage]
        key.write_text(text)
        os.chmod(key, 0o644 if damage == "readable by others" else 0o600)
    before = (stat.S_IFMT(os.lstat(key).st_mode), key.read_text() if key.is_file() else None)
    done = []
    # a FIFO must be refused, not opened for a read that never returns
    worker = threading.Thread(target=lambda: done.append(_refusal(data)), daemon=True)
    worker.start()
    worker.join(10)
    assert done, "reading the key hung"
    message = done[0]
    assert str(key) in message and "\n" not in message
    assert (stat.S_IFMT(os.lstat(key).st_mode), key.read_text() if key.is_file() else None) \
        == before
    assert (data / "red" / "red_000.jpg").exists() and not (data / "green" / "red_000.jpg"
                                                            ).exists()


def _refusal(data) -> str:
    with pytest.raises(JournalKeyError) as info:
        file_photos(data, [Request(str(data / "red" / "red_000.jpg"), "green")])
    return str(info.value)


def test_a_new_key_is_32_random_bytes_for_the_user_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("BOTTLENECK_STUDIO_CONFIG", str(tmp_path / "config"))
    data = make_dataset(tmp_path / "d", per_class=1)
    file_photos(data, [Request(str(data / "red" / "red_000.jpg"), "green")])
    key = tmp_path / "config" / journal.KEY_FILE
    assert len(bytes.fromhex(key.read_text())) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_forged_line_with_an_empty_key_is_never_obeyed(tmp_path, monkeypatch):
    """An empty key file was used as the key, so anyone could sign lines: a forged copy line
    made Undo delete an original photo."""
    monkeypatch.setenv("BOTTLENECK_STUDIO_CONFIG", str(tmp_path / "config"))
    data = make_dataset(tmp_path / "d", per_class=1)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / journal.KEY_FILE).write_text("")
    original = data / "red" / "red_000.jpg"
    entry = {"v": 2, "op": "file", "id": "x", "operation": "op", "kind": "label", "title": "",
             "time": "", "items": [{"id": "i", "op": "copy", "source": "/elsewhere.jpg",
                                    "target": "red/red_000.jpg",
                                    "digest": digest_file(original)[0]}]}
    entry["mac"] = journal._mac(data.resolve(), entry, b"")
    (data / JOURNAL).write_text(json.dumps(entry) + "\n")
    with pytest.raises(JournalKeyError):
        undo(data)
    assert original.exists()


def test_a_refused_photo_never_ends_a_bulk_filing(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    create_class(data, "red")
    inbox = _pile(tmp_path, n=5)
    (data / "red" / "p1.jpg").write_bytes(b"a photo of the same name")  # a name clash
    inbox[3].unlink()  # gone meanwhile
    filing = file_photos(data, [Request(str(p), "red") for p in inbox], "accept")
    assert sorted(m.target for m in filing.done) == ["red/p0.jpg", "red/p2.jpg", "red/p4.jpg"]
    assert [p for p, _w in filing.refused] == [str(inbox[1]), str(inbox[3])]
    assert "already exists" in filing.refused[0][1] and "no longer exists" in filing.refused[1][1]
    assert filing.summary() == "Copied 3 photos; 2 photos refused"


def test_a_full_disk_half_way_ends_the_filing_honestly(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    create_class(data, "red")
    inbox = _pile(tmp_path, n=3)
    label_many(data, inbox[:1], "red")
    size = (data / JOURNAL).stat().st_size
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, old_limit[1]))  # not a byte more
    try:
        filing = file_photos(data, [Request(str(p), "red") for p in inbox[1:]])
        undone = undo(data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert filing.done == [] and len(filing.refused) == 2
    assert "could not be written" in filing.refused[0][1]
    # the undo put the photo back but could not record it: it says so, never "nothing
    # was changed"; the next writer records it
    assert len(undone.undone) == 1 and "put back" in undone.note and not undone.finished
    assert not (data / "red" / "p0.jpg").exists()
    with journal.locked(data.resolve()):
        pass
    assert operations(data) == []


def test_a_photo_changed_since_it_was_listed_is_not_filed(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    create_class(data, "red")
    photo = _pile(tmp_path, n=1)[0]
    shown_digest = digest_file(photo)[0]
    make_image(photo, COLOURS["green"], seed=7)  # replaced by another photo meanwhile
    filing = file_photos(data, [Request(str(photo), "red", shown_digest)])
    assert filing.done == [] and "changed since it was listed" in filing.refused[0][1]


def test_content_filed_once_is_never_filed_under_a_second_class(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for c in ("red", "green"):
        create_class(data, c)
    photo = _pile(tmp_path, n=1)[0]
    twin = tmp_path / "elsewhere" / "twin.jpg"
    twin.parent.mkdir()
    twin.write_bytes(photo.read_bytes())
    label_many(data, [photo], "red")
    filing = file_photos(data, [Request(str(photo), "green"), Request(str(twin), "green")])
    assert filing.done == [] and all("filed already" in w for _p, w in filing.refused)


def _file_all(args):
    data, photos, cls, go = args
    go.wait(30)
    filing = file_photos(data, [Request(p, cls) for p in photos])
    return len(filing.done)


def test_two_windows_filing_the_same_pile_put_no_photo_in_two_classes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for c in ("red", "green"):
        create_class(data, c)
    photos = [str(p) for p in _pile(tmp_path, n=40)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        go = manager.Event()
        with ctx.Pool(2) as pool:
            result = pool.map_async(_file_all, [(data, photos, "red", go),
                                                (data, photos[::-1], "green", go)])
            go.set()
            counts = result.get(120)
    assert sum(counts) == 40
    names = [p.name for c in ("red", "green") for p in (data / c).iterdir()]
    assert sorted(names) == sorted(os.path.basename(p) for p in photos)  # each once


def test_an_inbox_inside_the_data_folder_is_refused_not_made_a_class(tmp_path):
    from app.core.labeling import check_inbox

    data = make_dataset(tmp_path / "d", per_class=1)
    (data / "unsorted").mkdir()
    with pytest.raises(LabelError, match="every folder is a class"):
        check_inbox(data, [str(data / "unsorted")])
    check_inbox(data, [str(tmp_path / "elsewhere")])  # outside: fine
    check_inbox(data, None)  # the loose photos: fine


def test_a_killed_copy_leaves_no_litter_after_the_next_writer(tmp_path):
    import subprocess
    import sys

    data = make_dataset(tmp_path / "d", per_class=1)
    root = data.resolve()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    op = journal.new_id()
    item = journal.Move(str(tmp_path / "x.jpg"), "blue/x.jpg", journal.new_id(), "copy",
                        "0" * 32, op)
    journal.write_items(root, op, "label", "killed", [item])
    (root / LOCK).write_text(f"file {op}")
    litter = data / "blue" / f".x.jpg.{dead.pid}-0123abcd.copy"
    litter.write_bytes(b"half")
    file_photos(data, [Request(str(data / "red" / "red_000.jpg"), "green")])  # another class
    assert not litter.exists() and moves(data)[0].target == "green/red_000.jpg"


# -- the property: any interleaving keeps the photos -----------------------------------------
_STEP = st.one_of(
    st.tuples(st.just("file"), st.lists(st.integers(0, 7), min_size=1, max_size=4),
              st.sampled_from(["red", "green"])),
    st.tuples(st.just("sort"), st.lists(st.integers(0, 7), min_size=1, max_size=8),
              st.sampled_from(["red", "green"])),
    st.tuples(st.just("undo"), st.integers(0, 3), st.just("")),
    st.tuples(st.just("crash"), st.integers(0, 7), st.sampled_from(["red", "green"])),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=1, max_size=10))
def test_any_interleaving_keeps_every_photo_once_and_undo_restores(tmp_path_factory, steps):
    base = tmp_path_factory.mktemp("prop")
    data = base / "data"
    data.mkdir()
    for c in ("red", "green"):
        create_class(data, c)
    loose = [make_image(data / f"l{i}.jpg", COLOURS["blue"], seed=i) for i in range(4)]
    outside = [make_image(base / "inbox" / f"o{i}.jpg", COLOURS["red"], seed=50 + i)
               for i in range(4)]
    photos = loose + outside
    contents = {digest_file(p)[0] for p in photos}
    snapshots: dict[str, list[str]] = {}
    for kind, arg, cls in steps:
        before = _files(data)
        if kind == "file":
            filing = file_photos(data, [Request(str(photos[i]), cls) for i in arg])
            if filing.operation:
                snapshots[filing.operation] = before
        elif kind == "sort":
            plan = sort_plan(_answers([photos[i] for i in dict.fromkeys(arg)], cls), data,
                             filed_in(data))
            filing = sort_into(data, plan)
            if filing.operation:
                snapshots[filing.operation] = before
        elif kind == "undo":
            ops = operations(data)
            if ops:
                op = ops[-1 - min(arg, len(ops) - 1)]
                latest = op.id == ops[-1].id
                try:
                    result = undo(data, operation=op.id)
                except LabelError as exc:  # a crashed operation, closed by the recovery
                    assert op.id not in snapshots and "no longer in effect" in str(exc)
                    continue
                if latest and not result.kept and op.id in snapshots:
                    assert _files(data) == snapshots[op.id]  # as before it
                if not latest:  # the states before the later ones no longer hold
                    snapshots.clear()
        else:  # a kill -9 after journaling, before the file changes
            from tests.conftest import killed_after_journal

            p = photos[arg]
            if p.exists():
                inside = p.parent == data
                killed_after_journal(data, journal.Move(
                    p.name if inside else str(p), f"{cls}/{p.name}", op="move" if inside
                    else "copy", digest=digest_file(p)[0]))
        # the photos: none lost, none in two classes
        filed = [data / c / n for c in ("red", "green") for n in os.listdir(data / c)
                 if not n.startswith(".")]
        assert len({f.name for f in filed}) == len(filed)
        assert {digest_file(f)[0] for f in filed} <= contents
        present = {digest_file(p)[0] for p in [*filed, *data.glob("l*.jpg"), *outside]
                   if p.exists()}
        assert present == contents


def test_a_photo_waiting_in_not_sure_is_labelled_from_there_and_undo_puts_it_back(tmp_path):
    """The walk: after File the rest, no photo left in _not_sure could be labelled ("filed
    already as _not_sure/p153.jpg"), neither on the Label page (the _not_sure copy) nor by a
    sort of the pile (the original). Filing it takes it out of _not_sure, as one operation."""
    data = tmp_path / "data"
    data.mkdir()
    for c in ("red", "green", "_not_sure"):
        (data / c).mkdir()
    inbox = _pile(tmp_path, n=3)
    rest = file_photos(data, [Request(str(p), "_not_sure") for p in inbox], "rest", "rest")
    assert len(rest.done) == 3 and _files(data) == [f"_not_sure/p{i}.jpg" for i in range(3)]
    assert rest.summary() == "Copied 3 photos (3 of them into _not_sure)"
    # the Label page files the copy in _not_sure; a sort files the pile's original
    first = file_photos(data, [Request(str(data / "_not_sure" / "p0.jpg"), "red")])
    second = file_photos(data, [Request(str(inbox[1]), "green")], "sort", "sort")
    assert not first.refused and not second.refused
    assert _files(data) == ["_not_sure/p2.jpg", "green/p1.jpg", "red/p0.jpg"]
    assert all(p.exists() for p in inbox)  # the originals outside are never touched
    # a photo in a class is still refused a second class
    third = file_photos(data, [Request(str(inbox[0]), "green")])
    assert third.refused and "filed already as red/p0.jpg" in third.refused[0][1]
    undo(data, second.operation)
    assert _files(data) == ["_not_sure/p1.jpg", "_not_sure/p2.jpg", "red/p0.jpg"]
    undo(data, first.operation)
    assert _files(data) == [f"_not_sure/p{i}.jpg" for i in range(3)]
    # File the rest undone: the _not_sure it filled goes with its copies (the walk saw an
    # empty one stay); the class folders stay, empty or not
    undo(data, rest.operation)
    assert _files(data) == [] and not (data / "_not_sure").exists()
    assert (data / "red").is_dir() and (data / "green").is_dir()
    # a _not_sure that holds a file of someone else's after the undo stays, with it
    (data / "_not_sure").mkdir()  # as File the rest makes it
    again = file_photos(data, [Request(str(p), "_not_sure") for p in inbox], "rest", "rest")
    assert len(again.done) == 3
    (data / "_not_sure" / "notes.txt").write_text("mine")
    undo(data, again.operation)
    assert _files(data) == ["_not_sure/notes.txt"]


def test_a_sort_previews_and_files_the_photos_waiting_in_not_sure(tmp_path):
    """The walk: the preview promised 154 copies and the sort then refused all 154 (they
    waited in _not_sure). The preview says how many move out of _not_sure, the sort files
    them, one that stays unsure stays where it is, and the undo puts them back."""
    data = tmp_path / "data"
    data.mkdir()
    for c in ("red", "green", "_not_sure"):
        (data / c).mkdir()
    inbox = _pile(tmp_path, n=3)
    file_photos(data, [Request(str(p), "_not_sure") for p in inbox], "rest", "rest")
    # the pile's p0, and p1 as the Predict page lists it when dropped from _not_sure
    answers = _answers([inbox[0], data / "_not_sure" / "p1.jpg", data / "_not_sure" / "p2.jpg"])
    answers[2].top[0]["probability"] = 0.2  # stays unsure
    plan = sort_plan(answers, data, filed_in(data), unsure_below=0.5)
    assert plan.counts() == {"red": 2} and plan.waiting == 2
    assert plan.already == [(str(data / "_not_sure" / "p2.jpg"), "_not_sure/p2.jpg")]
    assert "2 photo(s) would be copied into" in plan.preview(data)
    assert "(2 of them moved out of _not_sure or _unknown there)" in plan.preview(data)
    filing = sort_into(data, plan)
    assert not filing.refused and _files(data) == ["_not_sure/p2.jpg", "red/p0.jpg",
                                                   "red/p1.jpg"]
    undo(data, filing.operation)
    assert _files(data) == [f"_not_sure/p{i}.jpg" for i in range(3)]


def _rest_folder(tmp_path, n=2):
    """A data folder with red, green and _not_sure, and ``n`` pile photos filed in _not_sure
    (File the rest)."""
    data = tmp_path / "data"
    data.mkdir()
    for c in ("red", "green", "_not_sure"):
        (data / c).mkdir()
    inbox = _pile(tmp_path, n=n)
    file_photos(data, [Request(str(p), "_not_sure") for p in inbox], "rest", "rest")
    return data, inbox


def test_a_fix_on_a_class_photo_moves_that_photo_not_its_waiting_twin(tmp_path):
    """Review: the same content in red (put there by hand) and in _not_sure (File the rest):
    a fix moving the red one to green moved the _not_sure copy instead, leaving the photo in
    red and green."""
    data, inbox = _rest_folder(tmp_path, n=1)
    twin = data / "red" / "hand.jpg"
    twin.write_bytes(inbox[0].read_bytes())
    filing = file_photos(data, [Request(str(twin), "green")], "fix", "fix")
    assert not filing.refused
    assert _files(data) == ["_not_sure/p0.jpg", "green/hand.jpg"]


def test_a_waiting_copy_changed_by_hand_is_never_filed_as_the_photo(tmp_path):
    data, inbox = _rest_folder(tmp_path, n=1)
    make_image(data / "_not_sure" / "p0.jpg", COLOURS["green"], seed=999)  # other content
    filing = file_photos(data, [Request(str(inbox[0]), "red")])
    assert not filing.done and "no longer that photo" in filing.refused[0][1]
    assert _files(data) == ["_not_sure/p0.jpg"]


def test_a_photo_put_in_not_sure_by_hand_is_sorted_out_of_it_not_copied(tmp_path):
    data = tmp_path / "data"
    for c in ("red", "green", "_not_sure"):
        (data / c).mkdir(parents=True)
    photo = make_image(data / "_not_sure" / "q.jpg", COLOURS["red"], seed=5)
    plan = sort_plan(_answers([photo]), data, filed_in(data))
    assert plan.counts() == {"red": 1} and plan.waiting == 1
    filing = sort_into(data, plan)
    assert not filing.refused and _files(data) == ["red/q.jpg"]  # moved: in one place
    undo(data, filing.operation)
    assert _files(data) == ["_not_sure/q.jpg"]


def test_an_outside_photo_waiting_where_its_answer_goes_stays(tmp_path):
    data, inbox = _rest_folder(tmp_path, n=1)
    answer = Prediction(str(inbox[0]), [{"label": "red", "probability": 0.2}], unknown=False)
    plan = sort_plan([answer], data, filed_in(data), unsure_below=0.5)
    assert plan.to_file == 0 and plan.already == [(str(inbox[0]), "_not_sure/p0.jpg")]


def test_the_name_clash_is_checked_on_the_name_filed(tmp_path):
    """Review: outside a.jpg whose content waits as _not_sure/p0.jpg was refused because an
    unrelated red/a.jpg exists, though red/p0.jpg, the file it makes, was free."""
    data, inbox = _rest_folder(tmp_path, n=1)
    outside = tmp_path / "elsewhere" / "a.jpg"
    outside.parent.mkdir()
    outside.write_bytes(inbox[0].read_bytes())
    make_image(data / "red" / "a.jpg", COLOURS["blue"], seed=3)
    filing = file_photos(data, [Request(str(outside), "red")])
    assert not filing.refused and _files(data) == ["red/a.jpg", "red/p0.jpg"]
