"""Features page, "Compute on": the choice and the address are remembered and reach the caching
job; without Ray the choice is disabled and says how to install it; Ray's failures are one line
in the banner; one real run caches through a local Ray from the window."""

from __future__ import annotations

import pytest

from app.core.features.engines.ray import RayUnavailable
from app.core.pipeline import retrain
from app.gui.pages import compute_on
from app.gui.pages.compute_on import INSTALL_RAY
from tests.conftest import make_dataset
from tests.gui.conftest import close_window, open_folder, use_tiny, wait_idle


def test_ray_choice_and_address_are_remembered_and_reach_the_job(
        qtbot, new_window, monkeypatch, tmp_path):
    monkeypatch.setattr(compute_on, "ray_installed", lambda: True)
    first = new_window()
    assert first.features.compute_on.engine() == "local"
    assert not first.features.compute_on.address.isEnabled()
    first.features.compute_on.ray.click()
    assert first.features.compute_on.address.isEnabled()
    first.features.compute_on.address.setText("head-node:6379")
    close_window(qtbot, first)

    second = new_window()
    assert second.features.compute_on.engine() == "ray"
    assert second.features.compute_on.address.text() == "head-node:6379"

    asked = []

    def unreachable(choice, *args, **kwargs):
        asked.append({"engine": choice.engine, "ray_address": choice.ray_address})
        raise RayUnavailable("cannot reach the Ray cluster at head-node:6379: timed out\n"
                             "Traceback (most recent call last): ...")

    monkeypatch.setattr(retrain, "cache_features", unreachable)
    open_folder(qtbot, second, make_dataset(tmp_path / "photos", per_class=3))
    worker = second.run_control.start_caching()
    with qtbot.waitSignal(worker.done, timeout=20000):
        pass
    assert asked[0]["engine"] == "ray" and asked[0]["ray_address"] == "head-node:6379"
    assert second.banner.isVisible()
    assert second.banner.text.text().count("cannot reach the Ray cluster at head-node:6379") == 1
    assert "Traceback" not in second.banner.text.text()
    assert "RayUnavailable" not in second.banner.text.text()
    assert second.features.start.isEnabled()  # idle again, ready to retry


def test_without_ray_the_choice_is_disabled_and_says_how_to_install_it(
        qtbot, new_window, monkeypatch, gui_settings):
    monkeypatch.setattr(compute_on, "ray_installed", lambda: False)
    gui_settings.setValue("features/engine", "ray")  # chosen where Ray was installed
    win = new_window()
    ray = win.features.compute_on.ray
    assert not ray.isEnabled() and INSTALL_RAY in ray.toolTip()
    assert win.features.compute_on.engine() == "local"
    assert win.features.compute_on.job_args()["engine"] == "local"
    close_window(qtbot, win)
    gui_settings.sync()
    assert gui_settings.value("features/engine") == "ray"  # kept for when Ray is back


def test_a_cluster_address_says_where_the_ray_token_is_or_where_to_put_it(
        qtbot, monkeypatch):
    from pathlib import Path

    from app.gui.pages.compute_on import ComputeOn

    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    box = ComputeOn(has_ray=True)
    qtbot.addWidget(box)
    box.show()
    box.ray.setChecked(True)
    assert not box.token.isVisibleTo(box)  # a local Ray needs no token
    qtbot.keyClicks(box.address, "head-node:6379")
    assert box.token.isVisibleTo(box)
    assert "No Ray token found" in box.token.text() and "~/.ray/auth_token" in box.token.text()
    token = Path.home() / ".ray" / "auth_token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("s3cret")
    box.address.setText("head-node:6379 ")
    assert box.token.text() == f"Ray token: from {token} (used for this cluster)"
    box.local.setChecked(True)
    assert not box.token.isVisibleTo(box)


@pytest.mark.slow
@pytest.mark.ray
def test_caching_through_a_local_ray_from_the_window(qtbot, window, tmp_path):
    pytest.importorskip("ray")
    open_folder(qtbot, window, make_dataset(tmp_path / "photos", per_class=4))
    use_tiny(window)
    window.features.compute_on.ray.click()
    bars = []
    show = window.features.show_progress

    def shown(p):
        show(p)
        if p.stage == "cache":
            bars.append((window.features.bar.value(), window.features.bar.maximum()))

    window.features.show_progress = shown
    worker = window.run_control.start_caching()
    with qtbot.waitSignal(worker.done, timeout=180000):
        pass
    wait_idle(qtbot, window)
    assert window.banner.isHidden(), window.banner.text.text()
    cache = window.session.cache
    assert cache.device.startswith("Ray (") and (cache.computed, cache.images) == (12, 12)
    assert bars and bars[-1] == (12, 12)
    assert "12</b> images ready" in window.features.counts.text()
