"""The Label page in a folder of several tags a photo: each waiting photo's tag set being made,
starting from the suggested set (every tag the model gives 50% or more), toggled by the tags'
keys (1-9, 0) or by name; Enter tags the selected photos with their sets (one undoable
operation: the photos stay where they are, their rows in the tags file change). A view of
what :func:`app.core.labeling.tags.refresh_tags` computed; it computes nothing."""

from __future__ import annotations

from pathlib import Path

from app.core.base.errors import shown

WHY = {  # the queue's reasons, short on the photo, explained on hover
    "typical of a group without labels": (
        "typical", "the most typical photo of a group of alike photos that has no label yet"),
    "uncertain": ("unsure", "the model hesitates between two classes for this photo"),
    "random": ("random", "picked at random, so that what the model is sure of and wrong "
                         "about shows up"),
    "asked before": ("asked before", "asked before the last refresh, still waiting for you"),
}


class TagSets:
    """The tag sets being made on the page, by photo, over one refresh's view."""

    def __init__(self, view, keys: dict[str, str], last: TagSets | None = None) -> None:
        self.view = view
        self.keys = dict(keys)  # tag -> its key
        pool = view.pool
        self.index = {p: i for i, p in enumerate(pool.paths)}
        self.digests = dict(zip(pool.paths, pool.digests))
        self.tags = list(pool.tags)  # and any new tag typed on the page
        # what the last refresh's sets held for photos still waiting, and the tags typed (of
        # the same tags file: another folder's typed tags are not this one's)
        last = last if last is not None and last.view.pool.tags_file == pool.tags_file \
            else None
        self.pending: dict[str, set[str]] = {p: s for p, s in (last.pending if last else
                                                                {}).items() if p in self.index}
        self.tags += [t for t in (last.tags if last else []) if t not in self.tags]
        self.why: dict[str, str] = {}  # photo -> why the queue asks for it

    def asked(self, waiting: list[str]) -> dict[str, str]:
        """The queue: the photos still ``waiting`` in it first, in their places, then the
        refresh's asks; photo -> why it is asked."""
        pool, view = self.view.pool, self.view
        new = {pool.paths[a.index]: a.reason for a in view.queue.asks}
        kept = [p for p in waiting if p in self.index]
        self.why = {**{p: new.get(p, "asked before") for p in kept},
                    **{p: r for p, r in new.items() if p not in kept}}
        self.why = dict(list(self.why.items())[:max(len(new), len(kept))])
        return self.why

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
        text = f"{given} · {rest}" if rest else given
        return f"{text} · {WHY[self.why[path]][0]}" if path in self.why else text

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
