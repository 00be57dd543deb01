"""The Label page controller's jobs, made from frozen inputs and run by
:class:`~app.gui.controllers.label.LabelControl`, which applies what they return: a refresh of
a folder of classes (:func:`app.core.labeling.refresh`) or of several tags a photo (the tag
model, suggestions, queue and groups: :func:`app.core.labeling.tags.refresh_tags`), and
tagging (one operation on the tags file: :func:`app.core.intake.tagging.tag_photos`); and
the page's texts made from values (what measures the photos, File the rest's question)."""

from __future__ import annotations

from pathlib import Path


def refresh_job(root: Path, inbox, backbone: str, weights: str, cache_dir,
                groups: int | None, previous, blas):
    """The job of one refresh of a folder of classes; ``previous``: the last refresh's view,
    whose work it reuses where nothing changed."""

    def job(progress, cancel):
        from app.core.base.jobs import long_lived_objects
        from app.core.labeling import refresh

        # one BLAS thread: OpenBLAS's helper threads, starved by a busy process, held each
        # of the fit's thousands of small products (a refresh of 700 photos took 60 s
        # instead of 1.2 s beside one, when the window's jobs ran niced); and
        # no full collection pass while it runs: each held every thread, the window's
        # included, 10-23 ms at 20,000 photos, several a refresh (no freeze: it runs every
        # third label, and a freeze keeps the cyclic garbage of that moment for good)
        with blas, long_lived_objects(freeze=False):
            return refresh(root, inbox, backbone, weights, cache_dir, groups=groups,
                           progress=progress, cancel=cancel, previous=previous)

    return job


def refresh_tags_job(root: Path, tags_file: Path, backbone: str, weights: str, cache_dir,
                     groups: int | None, blas):
    """The job of one refresh of a tagged folder (frozen inputs; one BLAS thread while it
    runs, as the class folder's refresh)."""

    def job(progress, cancel):
        from app.core.base.jobs import long_lived_objects
        from app.core.labeling.tags import refresh_tags

        with blas, long_lived_objects(freeze=False):
            return refresh_tags(root, tags_file, backbone, weights, cache_dir, groups=groups,
                                progress=progress, cancel=cancel)

    return job


def measured_with(backbone: str, weights: str) -> str:
    """The Label page's line on what measures the photos."""
    from app.core.features.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    where = {"imagenet": "ImageNet weights (downloaded once)", "none": "random weights",
             "": "a weights file still to choose"}.get(weights,
                                                       f"weights from {Path(weights).name}")
    return f"Measures photos with {spec.title if spec else '?'}, {where}"


def rest_question(sure: int, unsure: int, wrong: float) -> str:
    """What File the rest asks before it files."""
    from app.core.labeling import UNSURE_FOLDER
    from app.gui.pages.label import photos

    return (f"File {photos(sure)} under their suggested class (the calibration expects "
            f"about {wrong:.1f} of them to be wrong) and {photos(unsure)} in {UNSURE_FOLDER} "
            "(not a class: they stay here to label)? One operation: Undo takes it back at "
            "once.")


def tag_photos_now(root: Path, tags_file: Path, items: list) -> tuple:
    """Tag ``items`` ((photo, tags, content shown)) as one operation, on this thread (one
    rewrite of the tags file); the filing and what each photo became, to show on it."""
    from app.core.intake.tagging import TagRequest, tag_photos

    names = {p: "; ".join(t) or "none of these" for p, t, _d in items}
    title = (f"Tagged {Path(items[0][0]).name}: {names[items[0][0]]}" if len(items) == 1
             else f"Tagged {len(items)} photos")
    filing = tag_photos(root, [TagRequest(p, tuple(t), d) for p, t, d in items], tags_file,
                        title=title)
    return filing, names
