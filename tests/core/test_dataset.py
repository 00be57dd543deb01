import shutil

import pytest
from PIL import Image

from app.core.intake.dataset import DatasetError, SplitSpec, scan_dataset
from app.core.storage.store import FeatureStore
from tests.conftest import COLOURS, make_dataset, make_image


def test_scan_finds_classes_images_and_ignores_hidden_and_non_images(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=4)
    (root / "red" / ".hidden.jpg").write_bytes(b"junk")
    (root / ".thumbs").mkdir()
    make_image(root / ".thumbs" / "x.jpg", (0, 0, 0))
    (root / "red" / "readme.txt").write_text("notes")
    make_image(root / "blue" / "deeper" / "nested.jpg", COLOURS["blue"])
    ds = scan_dataset(root)
    assert ds.classes == ["blue", "green", "red"]
    assert ds.class_counts() == {"blue": 5, "green": 4, "red": 4}
    assert ds.skipped == []


def test_unicode_class_names(tmp_path):
    make_image(tmp_path / "d" / "tournesol é" / "a.jpg", (1, 2, 3))
    make_image(tmp_path / "d" / "tournesol é" / "b.jpg", (3, 2, 1))
    make_image(tmp_path / "d" / "向日葵" / "a.png", (9, 9, 9))
    make_image(tmp_path / "d" / "向日葵" / "b.png", (19, 9, 9))
    assert scan_dataset(tmp_path / "d").classes == ["tournesol é", "向日葵"]


def test_broken_files_are_listed_with_reasons(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3)
    (root / "red" / "text.jpg").write_text("hello")
    (root / "red" / "zero.png").write_bytes(b"")
    ds = scan_dataset(root)
    reasons = {s.path.rsplit("/", 1)[1]: s.reason for s in ds.skipped}
    assert "not an image" in reasons["text.jpg"]
    assert "empty file" in reasons["zero.png"]
    assert ds.class_counts()["red"] == 3


def _layout(root, layout):
    root.mkdir()
    for c, n in layout.items():
        (root / c).mkdir()
        for i in range(n):
            make_image(root / c / f"{i}.png", (i * 20, 0, 0), seed=i)
    return root


def test_an_empty_folder_cannot_be_cached(tmp_path):
    ds = scan_dataset(_layout(tmp_path / "d", {}))
    with pytest.raises(DatasetError, match="no usable images"):
        ds.require_cacheable()


@pytest.mark.parametrize("layout,message", [
    ({"only": 5}, "only one class with images"),
    ({"a": 5, "b": 1}, "class 'b' has 1 usable image(s); training leaves it out"),
    ({"a": 5, "empty": 0}, "class 'empty' has 0 usable image(s)"),
])
def test_class_counts_warn_but_never_stop_caching(tmp_path, layout, message):
    ds = scan_dataset(_layout(tmp_path / "d", layout))
    assert not ds.errors
    assert any(f.message.startswith(message) for f in ds.warnings), ds.warnings
    ds.require_cacheable()


def test_training_leaves_out_classes_with_fewer_than_two_images(tmp_path):
    ds = scan_dataset(_layout(tmp_path / "d", {"a": 5, "b": 1, "c": 4, "empty": 0}))
    kept, warnings = ds.for_training()
    assert kept.classes == ["a", "c"] and {r.label for r in kept.images} == {"a", "c"}
    assert [w.split(" left out")[0] for w in warnings] == ["class 'b'", "class 'empty'"]
    alone = scan_dataset(_layout(tmp_path / "e", {"a": 5, "b": 1}))
    with pytest.raises(DatasetError, match="at least two classes"):
        alone.for_training()


def test_not_a_folder(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        scan_dataset(tmp_path / "missing")


def test_small_classes_warn_and_cross_class_duplicates_are_listed(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3)
    shutil.copy(root / "red" / "red_000.jpg", root / "blue" / "copy.jpg")
    ds = scan_dataset(root)
    msgs = [f.message for f in ds.warnings]
    assert any("only 3 images" in m for m in msgs)
    dup = [f for f in ds.warnings if "same image" in f.message]
    assert len(dup) == 1 and len(dup[0].paths) == 2


def test_split_is_stable_when_the_folder_grows_and_files_are_renamed(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=30)
    before = {r.digest: r.split for r in scan_dataset(root).images}
    make_dataset(tmp_path / "d", per_class=30, classes=("red",), fmt_cycle=("bmp",))
    (root / "green" / "green_000.jpg").rename(root / "green" / "renamed.jpg")
    after = {r.digest: r.split for r in scan_dataset(root).images}
    assert all(after[d] == s for d, s in before.items())
    counts = scan_dataset(root).split_counts()
    assert counts["train"] > counts["validation"] > 0 and counts["test"] > 0


def test_split_spec_parsing():
    s = SplitSpec.parse("70/20/10")
    assert (round(s.train, 2), round(s.validation, 2), round(s.test, 2)) == (0.7, 0.2, 0.1)
    with pytest.raises(ValueError):
        SplitSpec.parse("50/50")


def test_store_makes_a_warm_scan_read_no_image(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "d", per_class=3)
    with FeatureStore(tmp_path / "c") as store:
        first = scan_dataset(root, store)
        import app.core.intake.dataset as dataset_mod

        def boom(path):
            raise AssertionError(f"read {path} again")

        monkeypatch.setattr(dataset_mod, "digest_file", boom)
        second = scan_dataset(root, store)
    assert [r.digest for r in first.images] == [r.digest for r in second.images]


def test_changed_file_is_hashed_again(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3)
    with FeatureStore(tmp_path / "c") as store:
        d1 = {r.path: r.digest for r in scan_dataset(root, store).images}
        target = root / "red" / "red_000.jpg"
        Image.new("RGB", (10, 10), (1, 1, 1)).save(target)
        d2 = {r.path: r.digest for r in scan_dataset(root, store).images}
    assert d1[str(target)] != d2[str(target)]
