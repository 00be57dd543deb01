"""Long-lived objects are built without full passes of the cyclic collector (each holds the
GIL while it walks every object: a window's event loop waits) and are frozen afterwards."""

import gc

from app.core.base.jobs import long_lived_objects


def _full_passes_while_building(n: int, paused: bool, freeze: bool = True) -> tuple[int, int]:
    """Full passes seen while ``n`` long-lived containers are made (after a full collection,
    enough of them to trigger one); and the frozen count's growth."""
    passes = []

    def seen(phase, info):
        if phase == "start" and info["generation"] == 2:
            passes.append(1)

    gc.collect()
    frozen = gc.get_freeze_count()
    threshold = gc.get_threshold()
    gc.set_threshold(10, 1, 1)  # eager: a full pass whenever the 25% rule allows one
    gc.callbacks.append(seen)
    try:
        kept = []
        if paused:
            with long_lived_objects(freeze):
                kept.extend([i] for i in range(n))
        else:
            kept.extend([i] for i in range(n))
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*threshold)
    return len(passes), gc.get_freeze_count() - frozen


def test_no_full_pass_while_building_and_frozen_after():
    n = len(gc.get_objects())  # twice the 25% of the tracked objects that allows a full pass
    assert _full_passes_while_building(n, paused=False)[0] > 0  # the collector would walk
    passes, frozen = _full_passes_while_building(n, paused=True)
    assert passes == 0 and frozen >= n
    assert gc.get_threshold()[2] < 1000  # full passes come back


def test_nested_uses_end_with_the_last():
    before = gc.get_threshold()
    with long_lived_objects():
        with long_lived_objects():
            pass
        assert gc.get_threshold()[2] > before[2]  # still held by the outer one
    assert gc.get_threshold() == before


def test_a_pause_without_freeze_keeps_cyclic_garbage_collectable():
    """The Label page's refresh runs every third label: it pauses full passes but freezes
    nothing (a freeze keeps the cyclic garbage of that moment for good)."""
    n = len(gc.get_objects())
    passes, frozen = _full_passes_while_building(n, paused=True, freeze=False)
    assert passes == 0 and frozen <= 0  # (a frozen object may be freed meanwhile)
    before = gc.get_freeze_count()
    with long_lived_objects(freeze=False):
        with long_lived_objects():  # a folder scan meanwhile: its freeze comes at the end
            pass
        assert gc.get_freeze_count() == before
    assert gc.get_freeze_count() > before
