"""The packaged program works offline out of the box: on a first launch the window proposes the
backbone whose local ImageNet weights came with the installer, with that file; a backbone the
user chose before is never replaced by it."""

from __future__ import annotations

import pytest

import app.core.features.weights as weights


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    folder = tmp_path / "resources" / "weights" / "mobilenet_v2"
    folder.mkdir(parents=True)
    path = folder / "mobilenet_v2_imagenet_no_top.weights.h5"
    path.write_bytes(b"weights")  # the window only proposes it; the self-test loads real ones
    monkeypatch.setattr(weights, "resources_dir", lambda: tmp_path / "resources")
    return path


def test_a_first_launch_proposes_the_backbone_whose_weights_came_with_it(new_window, bundled):
    win = new_window()
    assert win.features.backbone_name() == "mobilenet_v2"
    assert win.session.choice.backbone == "mobilenet_v2"
    assert win.session.choice.weights == str(bundled)
    assert "MobileNet v2" in win.label.backbone.text()  # the Label page names it


def test_a_backbone_chosen_before_stays(new_window, gui_settings, bundled):
    gui_settings.setValue("features/backbone", "xception")
    gui_settings.setValue("features/weights", "imagenet")
    win = new_window()
    assert win.session.choice.backbone == "xception"
    assert win.session.choice.weights == "imagenet"


def test_without_bundled_weights_the_default_stays(new_window, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "resources_dir", lambda: tmp_path / "nothing")
    win = new_window()
    assert win.session.choice.backbone == "inception_v3"
    assert win.session.choice.weights == "imagenet"


def test_the_resources_folder_is_the_one_the_app_ships():
    """From source, the app's own resources/ beside app/ (it was app/resources, which does not
    exist: a bundled file would never have been found outside a frozen build)."""
    assert (weights.resources_dir() / "icon.svg").is_file()


def test_a_bundled_file_an_update_renamed_is_proposed_again(new_window, gui_settings, bundled):
    gui_settings.setValue("features/backbone", "mobilenet_v2")
    gui_settings.setValue("features/weights", "file")
    gui_settings.setValue("features/weights_file", str(bundled.with_name("old.weights.h5")))
    win = new_window()
    assert win.session.choice.weights == str(bundled)
