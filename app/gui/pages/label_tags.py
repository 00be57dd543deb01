"""The Label page in a folder of several tags a photo: each waiting photo's tag set being made,
starting from the suggested set (every tag the model gives 50% or more), toggled by the tags'
keys (1-9, 0) or by name; Enter tags the selected photos with their sets (one undoable
operation: the photos stay where they are, their rows in the tags file change). A view of
what :func:`app.core.labeling.tags.refresh_tags` computed; it computes nothing."""

from __future__ import annotations

from pathlib import Path

from app.core.base.errors import shown


class TagSets:
    """The tag sets being made on the page, by photo, over one refresh's view."""

    def __init__(self, view, keys: dict[str, str]) -> None:
        self.view = view
        self.keys = dict(keys)  # tag -> its key
        pool = view.pool
        self.index = {p: i for i, p in enumerate(pool.paths)}
        self.digests = dict(zip(pool.paths, pool.digests))
        self.tags = list(pool.tags)  # and any new tag typed on the page
        self.pending: dict[str, set[str]] = {}

    def suggested(self, path: str) -> set[str]:
        """The tags the model gives ``path`` (each at 50% or more)."""
        sug, i = self.view.suggestions, self.index.get(path)
        return set() if sug is None or i is None else set(sug.suggested(i))

    def chosen(self, path: str) -> set[str]:
        """The set Enter gives ``path``: the suggested one until a key changed it."""
        return set(self.pending.get(path, self.suggested(path)))

    def toggle(self, paths: list[str], tag: str) -> None:
        """``tag`` on for every photo of ``paths`` that lacks it, else off for all."""
        if tag not in self.tags:
            self.tags.append(tag)
        on = any(tag not in self.chosen(p) for p in paths)
        for p in paths:
            s = self.chosen(p)
            s.add(tag) if on else s.discard(tag)
            self.pending[p] = s

    def caption(self, path: str) -> str:
        """The set Enter gives (✓ each tag), then the likeliest tags not in it."""
        chosen = self.chosen(path)
        given = "✓ " + "; ".join(shown(t) for t in sorted(chosen)) if chosen else \
            "none of these"
        sug, i = self.view.suggestions, self.index.get(path)
        if sug is None or i is None:
            return f"{given} · no suggestion yet" if not self.view.pool.tags else given
        rough = "" if sug.calibrated else "~"
        others = sorted(((p, t) for t, p in zip(sug.tags, sug.probabilities[i])
                         if t not in chosen), reverse=True)[:2]
        rest = ", ".join(f"{shown(t)} {rough}{p:.0%}" for p, t in others if p >= 0.05)
        return f"{given} · {rest}" if rest else given

    def requests(self, paths: list[str]) -> list[tuple[str, tuple[str, ...], str | None]]:
        """(photo, its tags, the content shown) for each of ``paths``."""
        return [(p, tuple(sorted(self.chosen(p))), self.digests.get(p)) for p in paths]

    def counts(self) -> dict[str, int]:
        """Photos tagged with each tag so far (0 for a tag typed on the page only)."""
        pool = self.view.pool
        n = pool.targets.sum(axis=0) if len(pool.targets) else [0] * len(pool.tags)
        out = {t: int(c) for t, c in zip(pool.tags, n)}
        return {t: out.get(t, 0) for t in self.tags}

    def summary(self, data_dir: Path | None) -> str:
        """The page's line: how many wait, how many are tagged, and the keys."""
        pool = self.view.pool
        where = shown(data_dir) if data_dir else "no data folder"
        waiting = len(pool.paths)
        return (f"{waiting} photo{'s' if waiting != 1 else ''} waiting; "
                f"{len(pool.labelled_paths)} tagged with {len(pool.tags)} tag(s) in "
                f"{shown(pool.tags_file.name)} of {where} (the photos stay where they are). "
                "A tag's key turns it on or off; Enter tags the selected photos with the ✓ "
                "set; typing a letter picks a tag by name or makes one"
                + ("" if not pool.skipped else f"; {len(pool.skipped)} skipped (unreadable)"))
