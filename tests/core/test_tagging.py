"""Tagging photos in a tags file (several tags a photo) as undoable operations: the photos never
move, only their rows change, every other line of the file stays as the user wrote it, and an
undo takes back exactly what its own operation did."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.intake import journal
from app.core.intake.filing import operations, undo
from app.core.intake.journal import LabelError
from app.core.intake.tagging import TagRequest, tag_photos
from app.core.intake.tags import read_tags, scan_tagged
from tests.conftest import make_image
from tests.core.test_labeling import _label_cli

FOREIGN = ["# a note the user keeps,with,three cells\n", "zz.jpg,old;row;spaces \n"]


def _folder(root: Path, n: int = 4) -> Path:
    for i in range(n):
        make_image(root / "photos" / f"p{i}.png", (40 * i, 90, 160), size=(12, 10), seed=i)
    return root


def _rows(path: Path) -> dict[str, tuple[str, ...]]:
    return {r.file: r.tags for r in read_tags(path).rows}


def test_tagging_changes_only_its_rows_and_undo_sets_them_back(tmp_path):
    root = _folder(tmp_path / "data")
    labels = root / "labels.csv"
    original = "file,tags\r\n" + "".join(FOREIGN).replace("\n", "\r\n") + "photos/p0.png,cat\r\n"
    labels.write_bytes(original.encode())
    photos = [root / "photos" / f"p{i}.png" for i in range(3)]
    filing = tag_photos(root, [TagRequest(str(photos[0]), ("dog", "cat")),
                               TagRequest(str(photos[1]), ()),
                               TagRequest(str(photos[2]), ("car",))])
    assert filing.summary() == "Tagged 3 photos" and not filing.refused
    text = labels.read_bytes().decode()
    for line in FOREIGN:  # the user's lines, byte for byte (its line ends kept)
        assert line.replace("\n", "\r\n") in text
    assert _rows(labels)["photos/p0.png"] == ("cat", "dog")
    assert _rows(labels)["photos/p1.png"] == ()  # "none of these": a real answer, listed
    assert _rows(labels)["photos/p2.png"] == ("car",)
    assert all(p.is_file() for p in photos)  # nothing moved
    result = undo(root)
    assert len(result.undone) == 3 and not result.kept
    assert _rows(labels) == _rows_of(original, tmp_path)
    assert labels.read_bytes().decode() == original  # rows written as they were read


def _rows_of(text: str, tmp_path: Path) -> dict:
    p = tmp_path / "expected.csv"
    p.write_text(text)
    return _rows(p)


def test_an_undo_takes_back_its_own_tags_not_a_later_operations(tmp_path):
    root = _folder(tmp_path / "data")
    labels = root / "labels.csv"
    p0, p1 = (str(root / "photos" / f"p{i}.png") for i in range(2))
    first = tag_photos(root, [TagRequest(p0, ("cat",)), TagRequest(p1, ("dog",))])
    tag_photos(root, [TagRequest(p1, ("dog", "person"))])
    result = undo(root, operation=first.operation)  # not the latest
    assert [m.target for m in result.undone] == ["photos/p0.png"]
    assert [m.target for m, _ in result.kept] == ["photos/p1.png"]
    assert "dog; person since" in result.kept[0][1]
    assert _rows(labels) == {"photos/p1.png": ("dog", "person")}
    undo(root)  # the later one: p1 back to what it had before it
    assert _rows(labels) == {"photos/p1.png": ("dog",)}
    assert operations(root) == []  # the first one's kept row is closed, never a wall


def test_refusals_name_their_reason_and_never_stop_the_others(tmp_path):
    root = _folder(tmp_path / "data")
    outside = make_image(tmp_path / "elsewhere" / "x.png", (1, 2, 3), size=(8, 8))
    p0, p1 = (str(root / "photos" / f"p{i}.png") for i in range(2))
    filing = tag_photos(root, [TagRequest(str(outside), ("cat",)),
                               TagRequest(p0, ("a;b",)),
                               TagRequest(p1, ("cat",), digest="0" * 32),
                               TagRequest(str(root / "photos" / "gone.png"), ("cat",)),
                               TagRequest(str(root / "photos" / "p2.png"), ("cat",)),
                               TagRequest(str(root / "photos" / "p2.png"), ("dog",))])
    why = dict(filing.refused)
    assert "not below the tags file's folder" in why[str(outside)]
    assert "holds ';'" in why[p0]
    assert "changed since it was listed" in why[p1]
    assert "not a photo file" in why[str(root / "photos" / "gone.png")]
    assert "asked twice" in why[str(root / "photos" / "p2.png")]
    assert _rows(root / "labels.csv") == {"photos/p2.png": ("cat",)}
    again = tag_photos(root, [TagRequest(str(root / "photos" / "p2.png"), ("cat",))])
    assert again.operation == "" and again.already  # nothing changed: no operation
    with pytest.raises(LabelError, match="not in the data folder"):
        tag_photos(root, [TagRequest(p0, ("cat",))], labels=tmp_path / "other.csv")


def test_a_row_listed_by_its_bare_name_is_the_row_changed(tmp_path):
    root = _folder(tmp_path / "data")
    labels = root / "labels.csv"
    labels.write_text("file,tags\np3.png,cat\n")
    tag_photos(root, [TagRequest(str(root / "photos" / "p3.png"), ("cat", "dog"))])
    assert labels.read_text() == "file,tags\np3.png,cat;dog\n"
    data = scan_tagged(root)
    assert sorted(data.tags.values()) == [("cat", "dog")]


def test_a_writer_killed_after_journaling_is_closed_by_the_next_one(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data")
    labels = root / "labels.csv"
    labels.write_text("file,tags\nphotos/p0.png,cat\n")
    p0 = str(root / "photos" / "p0.png")

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # dies between the journal line and the file's rename

    import app.core.intake.tagging as tagging

    real = tagging.edit_tags
    monkeypatch.setattr(tagging, "edit_tags", killed)
    with pytest.raises(KeyboardInterrupt):
        tag_photos(root, [TagRequest(p0, ("dog",))])
    assert (root / journal.LOCK).read_text().startswith("file ")  # work left in progress
    monkeypatch.setattr(tagging, "edit_tags", real)
    journal.forget(root.resolve())
    assert operations(root) and _rows(labels) == {"photos/p0.png": ("cat",)}
    tag_photos(root, [TagRequest(str(root / "photos" / "p1.png"), ("car",))])  # next writer
    ops = operations(root)
    assert [o.title for o in ops] == ["Tagged 1 photo"] and ops[0].moves[0].after == ("car",)
    undo(root)
    assert _rows(labels) == {"photos/p0.png": ("cat",)}  # the killed one never undone


_STEP = st.one_of(
    st.tuples(st.just("tag"), st.lists(st.tuples(st.integers(0, 3),
                                                  st.sets(st.sampled_from("abc"), max_size=3)),
                                       min_size=1, max_size=4)),
    st.tuples(st.just("undo"), st.integers(0, 5)))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=1, max_size=8))
def test_any_tags_and_undos_keep_the_users_lines_and_undoing_all_restores(tmp_path_factory,
                                                                          steps):
    """Any run of tagging operations and undos (of any operation still in effect): the lines
    the app did not write stay byte for byte; an undo changes no row its operation did not
    tag, and leaves a row it cannot take back (changed since) as it is; when no row had to be
    kept, undoing what is left, latest first, gives back the rows the file started with."""
    root = _folder(tmp_path_factory.mktemp("tags"))
    labels = root / "labels.csv"
    labels.write_text("file,tags\n" + "".join(FOREIGN) + "photos/p0.png,b\n")
    start = _rows(labels)
    photos = [str(root / "photos" / f"p{i}.png") for i in range(4)]
    kept = 0
    for kind, arg in steps:
        before = _rows(labels)
        if kind == "tag":
            requests, seen = [], set()
            for i, tags in arg:
                if i not in seen:
                    seen.add(i)
                    requests.append(TagRequest(photos[i], tuple(tags)))
            filing = tag_photos(root, requests)
            touched = {m.target for m in filing.done}
        else:
            ops = operations(root)
            if not ops:
                continue
            op = ops[arg % len(ops)]
            result = undo(root, operation=op.id)
            touched = {m.target for m in result.undone}  # a row kept is left as it is
            kept += len(result.kept)
        after = _rows(labels)
        assert {k: v for k, v in after.items() if k not in touched} == \
            {k: v for k, v in before.items() if k not in touched}
        text = labels.read_text()
        assert all(line in text for line in FOREIGN)
    while operations(root):
        kept += len(undo(root).kept)
    if not kept:  # a row changed by a later operation and kept by an undo stays as it is
        assert _rows(labels) == start


def test_label_multi_label_on_the_command_line_tags_asks_and_undoes(tmp_path):
    import json

    from tests.conftest import COLOURS

    data = tmp_path / "data"
    for i in range(6):  # reds carry "warm", blues "cold", greens both
        for c in COLOURS:
            make_image(data / "shots" / f"{c}{i}.png", COLOURS[c], size=(16, 12), seed=i)
    common = ["--multi-label", "--backbone", "tiny", "--weights", "none", "--cache-dir",
              tmp_path / "cache", "--json"]
    code, out, err = _label_cli(data, *common, "--next", 4)
    doc = json.loads(out)
    assert code == 0 and doc["labelled"] == 0 and doc["waiting"] == 18 and doc["tags"] == []
    assert len(doc["queue"]) == 4 and "suggested" not in doc["queue"][0]
    shot = data / "shots"
    assigns = [f"{shot / f'red{i}.png'}=warm" for i in range(3)] + \
        [f"{shot / f'blue{i}.png'}=cold" for i in range(3)] + \
        [f"{shot / f'green{i}.png'}=warm;cold" for i in range(2)] + [f"{shot / 'green2.png'}="]
    code, out, err = _label_cli(data, *common, *[a for x in assigns for a in ("--assign", x)])
    doc = json.loads(out)
    assert code == 0 and len(doc["done"]) == 9 and doc["labelled"] == 9
    assert doc["waiting"] == 9 and doc["tags"] == ["cold", "warm"]
    assert (data / "labels.csv").read_text().splitlines()[0] == "file,tags"
    assert _rows(data / "labels.csv")["shots/green0.png"] == ("cold", "warm")
    assert _rows(data / "labels.csv")["shots/green2.png"] == ()
    suggested = {Path(q["path"]).name: q for q in doc["queue"]}
    assert suggested and all(set(q["probabilities"]) == {"cold", "warm"}
                             for q in suggested.values())
    code, out, err = _label_cli(data, *common, "--undo")
    assert code == 0 and json.loads(out)["labelled"] == 0
    assert _rows(data / "labels.csv") == {}
    assert all(p.is_file() for p in shot.iterdir())  # no photo ever moved
    code, out, err = _label_cli(data, *common, "--accept-above", "0.9")
    assert code == 2 and "not with --multi-label" in err


def test_the_tag_model_learns_each_tag_apart_and_the_queue_asks_the_unsure():
    import numpy as np

    from app.core.labeling.tags import ask_tags, fit_tag_model, suggest_tags

    rng = np.random.default_rng(0)
    d = 16
    axes = np.eye(d)[:2] * 3
    y = rng.random((60, 2)) < 0.4  # two independent tags, each a direction of its own
    x = y @ axes + rng.normal(0, 0.5, (60, d)) + 0.5
    pool_y = rng.random((200, 2)) < 0.4
    pool = pool_y @ axes + rng.normal(0, 0.5, (200, d)) + 0.5
    model = fit_tag_model(x, y.astype(np.float32), ["a", "b"], pool)
    assert model.calibrated
    sug = suggest_tags(model, pool)
    assert (sug.given == pool_y).mean() > 0.9  # each tag found on its own
    both = (pool_y.sum(axis=1) == 2)
    assert sug.given[both].all(axis=1).mean() > 0.8  # a photo with both gets both
    queue = ask_tags(pool, x, model, 20, seed=3)
    asked = [a.index for a in queue.asks if a.reason == "uncertain"]
    # the uncertain asks come from the least sure tag sets (5 candidates an ask, spread out)
    assert asked and sug.sureness[asked].max() <= np.quantile(sug.sureness, 0.4)


def test_a_sort_by_tags_copies_each_photo_into_every_tag_folder_once_and_undoes(tmp_path):
    from app.core.delivery.predict import Prediction
    from app.core.intake.sorting import filed_in, sort_into, tag_sort_plan

    photos = [make_image(tmp_path / "in" / f"p{i}.png", (30 * i, 80, 200), size=(10, 10),
                         seed=i) for i in range(4)]
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    mine = out / "a" / "mine.png"
    mine.write_bytes(photos[3].read_bytes())  # the user's own copy of p3, under "a"

    def preds():
        tag = [{"label": "a", "probability": 0.9}, {"label": "b", "probability": 0.7}]
        return [Prediction(str(photos[0]), tag[:1], tags=tag),
                Prediction(str(photos[1]), tag[:1], tags=[]),
                Prediction(str(photos[2]), tag[:1], unknown=True, tags=tag[:1]),
                Prediction(str(photos[3]), tag[:1], tags=tag[:1])]

    plan = tag_sort_plan(preds(), out, filed_in(out, per_folder=True))
    assert plan.counts() == {"_unknown": 1, "a": 1, "b": 1}
    assert plan.folders["a"] == plan.folders["b"] == [str(photos[0])]
    assert plan.untagged == [str(photos[1])] and plan.already == [(str(photos[3]), "a/mine.png")]
    assert "3 copies of 2 photo(s)" in plan.preview(out)
    filing = sort_into(out, plan)
    assert len(filing.done) == 3 and not filing.refused
    assert (out / "a" / "p0.png").read_bytes() == (out / "b" / "p0.png").read_bytes() \
        == photos[0].read_bytes()
    again = tag_sort_plan(preds(), out, filed_in(out, per_folder=True))
    assert again.to_file == 0 and len(again.already) == 4  # sorted once, never twice
    with pytest.raises(ValueError, match="copies"):
        sort_into(out, plan, move=True)
    undo(out)
    assert not (out / "a" / "p0.png").exists() and not (out / "b" / "p0.png").exists()
    assert mine.is_file() and all(p.is_file() for p in photos)  # only its own copies went


def test_pruning_the_windows_runs_removes_only_old_run_folders_of_its_own():
    from app.core.pipeline.tagged import RUN_PREFIX, prune_runs, runs_dir

    runs = runs_dir()
    made = []
    for i in range(5):
        p = runs / f"{RUN_PREFIX}2026120{i}-000000-abcdef"
        p.mkdir(parents=True)
        (p / "metadata.json").write_text("{}")
        made.append(p)
    foreign = runs / "my-notes"
    foreign.mkdir()
    no_model = runs / f"{RUN_PREFIX}20250101-000000-000000"  # named like ours, not a model
    no_model.mkdir()
    removed = prune_runs(keep={str(made[0])}, newest=3)
    assert sorted(removed) == [made[1]]
    assert all(p.is_dir() for p in (made[0], *made[2:], foreign, no_model))


def test_a_row_the_file_cannot_read_is_never_written_over_nor_a_name_shared(tmp_path):
    """The review's three: a row left out as unreadable (a tag 'animal/cat') still names the
    photo: tagging it is refused (fix that line first) and the row stays; a form feed inside
    a note shifts no row (the csv reader's lines); a bare name matching two photos names
    neither, so tagging one adds its own row and leaves the user's row alone."""
    root = _folder(tmp_path / "data")
    labels = root / "labels.csv"
    text = "file,tags\nphotos/p0.png,animal/cat;outdoor\n# note\f here,\nphotos/p1.png,x\n"
    labels.write_text(text)
    p0, p1 = (str(root / "photos" / f"p{i}.png") for i in range(2))
    filing = tag_photos(root, [TagRequest(p0, ("dog",)), TagRequest(p1, ("y",))])
    assert "line 2 of labels.csv lists photos/p0.png but cannot be read" in filing.refused[0][1]
    assert labels.read_text() == text.replace("photos/p1.png,x", "photos/p1.png,y")
    undo(root)
    assert labels.read_text() == text
    make_image(root / "other" / "p2.png", (9, 9, 9), size=(12, 10), seed=9)
    labels.write_text("file,tags\np2.png,cat\n")
    tag_photos(root, [TagRequest(str(root / "photos" / "p2.png"), ("dog",))])
    assert labels.read_text() == "file,tags\np2.png,cat\nphotos/p2.png,dog\n"
    (root / "broken.csv").write_text('file,tags\n"a.png,cat\n')  # a quote never closed
    refused = tag_photos(root, [TagRequest(p1, ("z",))], labels="broken.csv").refused
    assert "would not read back as meant" in refused[0][1]
    assert (root / "broken.csv").read_text() == 'file,tags\n"a.png,cat\n'
