"""Dataset intake: a folder with one sub-folder per class, scanned, hashed, split and checked.

Files are recognised by content, not by name. Each image's split is decided by its content
digest, so an image keeps its split when the folder grows or files are renamed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import shlex
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from app.core.base.errors import SettingsError, UserError, bad_name_reason, shown, undecodable
from app.core.base.jobs import CancelToken, ProgressCallback, RateMeter, no_progress
from app.core.intake.imaging import IMAGE_SUFFIXES, PREPROCESS_VERSION, sniff_format
from app.core.storage.store import FeatureStore

SPLITS = ("train", "validation", "test")
MIN_IMAGES_ERROR = 2
MIN_IMAGES_WARNING = 20
IN_FLIGHT = 256  # files being hashed at once


class DatasetError(UserError):
    """The folder cannot be used as a dataset; the message says why in one line."""


class ImageRecord(NamedTuple):
    """One usable image, a tuple of strings. (The cyclic garbage collector keeps tracking
    tuple subclasses, unlike plain tuples: the window builds a folder's records under
    ``jobs.long_lived_objects`` so that its full passes never walk them.)"""

    path: str  # absolute
    label: str
    digest: str
    split: str
    format: str


UNKNOWN_FOLDER = "_unknown"  # a sort by a model's answers: photos unlike every class
UNSURE_FOLDER = "_not_sure"  # and those it is not sure of ("file the rest")
# folders a sort writes beside the classes, which are not classes: their photos are still to be
# labelled (the Label page lists them as unsorted)
TAGS_FILE = "labels.csv"  # a multi-label folder's tags file (intake.tags)
NOT_CLASSES = (UNKNOWN_FOLDER, UNSURE_FOLDER)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def as_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Finding:
    """One line of the validation report."""

    level: str  # "error" | "warning" | "info"
    message: str
    paths: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"level": self.level, "message": self.message, "paths": list(self.paths)}


@dataclass(frozen=True)
class SplitSpec:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        parts = (self.train, self.validation, self.test)
        if (not all(isinstance(p, (int, float)) and math.isfinite(p) for p in parts)
                or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6
                or self.train <= 0):
            raise SettingsError("split fractions must be finite, >= 0, train > 0 and sum to "
                                f"1, got {parts}")

    @classmethod
    def parse(cls, text: str) -> SplitSpec:
        """'80/10/10' or '0.8,0.1,0.1'."""
        try:
            parts = [float(p) for p in text.replace(",", "/").split("/")]
        except ValueError:
            raise SettingsError(f"a split is three numbers train/validation/test, got "
                                f"{text!r}") from None
        if len(parts) != 3:
            raise SettingsError("a split has three parts: train/validation/test")
        total = sum(parts)
        if not all(math.isfinite(p) for p in parts) or not total > 0:  # the rest: __post_init__
            raise SettingsError(f"a split's parts must be finite numbers with a total above 0, "
                                f"got {text!r}")
        return cls(*(p / total for p in parts))

    def assign(self, digest: str) -> str:
        u = int(digest[:8], 16) / 0x100000000
        if u < self.train:
            return "train"
        if u < self.train + self.validation:
            return "validation"
        return "test"


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    images: list[ImageRecord]
    skipped: list[Skipped] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    split_spec: SplitSpec = field(default_factory=SplitSpec)
    scan_findings: list[Finding] = field(default_factory=list)  # folders and links refused
    loose: int = 0  # image files lying in the folder itself, beside the class folders

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.label for r in self.images)
        return {c: counts.get(c, 0) for c in self.classes}

    def split_counts(self) -> dict[str, int]:
        counts = Counter(r.split for r in self.images)
        return {s: counts.get(s, 0) for s in SPLITS}

    def subset(self, split: str) -> list[ImageRecord]:
        return [r for r in self.images if r.split == split]

    def require_cacheable(self) -> None:
        """Caching needs images, nothing more: class counts never stop it."""
        if self.errors:
            raise DatasetError(self.errors[0].message)

    def for_training(self) -> tuple[Dataset, list[str]]:
        """This dataset less the classes with fewer than 2 usable images, and one warning per
        class left out; :class:`DatasetError` when fewer than 2 classes remain."""
        self.require_cacheable()
        counts = self.class_counts()
        keep = [c for c in self.classes if counts[c] >= MIN_IMAGES_ERROR]
        warnings = [f"class {c!r} left out of training: {counts[c]} usable image(s), "
                    f"at least {MIN_IMAGES_ERROR} needed" for c in self.classes if c not in keep]
        if len(keep) < 2:
            have = f"only {keep[0]!r}" if keep else "none"
            raise DatasetError(f"a classifier needs at least two classes with {MIN_IMAGES_ERROR} "
                               f"or more usable images each ({have} in {self.root})")
        if len(keep) == len(self.classes):
            return self, []
        kept = set(keep)
        ds = Dataset(self.root, keep, [r for r in self.images if r.label in kept], self.skipped,
                     [], self.split_spec, self.scan_findings, self.loose)
        return _checked(ds), warnings

    def without(self, bad: dict[str, str]) -> Dataset:
        """This dataset less the images whose digest is in ``bad``, which become skipped."""
        keep = [r for r in self.images if r.digest not in bad]
        skipped = self.skipped + [Skipped(r.path, bad[r.digest]) for r in self.images
                                  if r.digest in bad]
        return _checked(Dataset(self.root, self.classes, keep, skipped, [], self.split_spec,
                                self.scan_findings, self.loose))


# Links are followed (a class folder on another disk is a common habit) but never into these:
# a link to /etc must not hash the whole system into the cache.
SYSTEM_FOLDERS = tuple(Path(p) for p in (
    "/etc", "/proc", "/sys", "/dev", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
    "/boot", "/var", "/run", "/root", "/snap", os.environ.get("SystemRoot", "/nonexistent")))


@dataclass
class _Walk:
    """What a walk met besides images: link loops, links into system folders, and files
    read through a link from outside the data folder."""

    root: Path
    loops: list[str] = field(default_factory=list)
    system: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    seen: set[tuple[int, int]] = field(default_factory=set)


def _is_system(path: Path) -> bool:
    return path == Path("/") or any(path == s or s in path.parents for s in SYSTEM_FOLDERS)


def _walk(folder: Path, walk: _Walk, outside: bool = False) -> Iterator[Path]:
    """Every regular file below ``folder``, hidden files and folders left out, sorted.
    Folder links are followed once each (a loop is reported, not walked again), never into
    a system folder; ``outside``: ``folder`` was reached through a link out of the root."""
    try:
        st = folder.stat()
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    if (st.st_dev, st.st_ino) in walk.seen:
        walk.loops.append(str(folder))
        return
    walk.seen.add((st.st_dev, st.st_ino))
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
            is_file = not is_dir and entry.is_file(follow_symlinks=True)
        except OSError:
            continue
        if not (is_dir or is_file):
            continue
        path = Path(entry.path)
        if entry.is_symlink():
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):  # a dangling link or a loop of links
                walk.loops.append(str(path))
                continue
            if _is_system(real):
                walk.system.append(str(path))
                continue
            if is_dir and (real == walk.root or real in walk.root.parents
                           or real.parent == walk.root):
                walk.loops.append(str(path))  # the data folder again, or another class
                continue
            here = walk.root in real.parents
        else:
            here = not outside
        if is_dir:
            yield from _walk(path, walk, not here)
        else:
            if not here:
                walk.outside.append(str(path))
            yield path


def digest_file(path: Path) -> tuple[str, str | None]:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        head = f.read(64)
        h.update(head)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest(), sniff_format(head)


def scan_dataset(
    root: str | Path,
    store: FeatureStore | None = None,
    split: SplitSpec | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    retry_skipped: bool = False,
) -> Dataset:
    """Scan ``root`` into a :class:`Dataset` with its validation report.

    With a ``store``, files unchanged since the last scan (same size and mtime) are not read
    again, and images known not to decode are skipped with their recorded reason (unless
    ``retry_skipped``).
    Raises :class:`DatasetError` only when ``root`` is not a folder; every other problem is a
    finding in the report.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    split = split or SplitSpec()
    walk = _Walk(root)
    refused: list[Finding] = []
    class_dirs = []
    loose = 0  # image files lying in the folder itself, beside the class folders
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if p.name.startswith("."):
            continue
        if not p.is_dir():
            loose += p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            if p.name == TAGS_FILE and p.is_file():
                refused.append(Finding(
                    "warning", f"{TAGS_FILE} is a tags file (several tags a photo): read "
                               "here as class folders, one class a photo; to train on its "
                               f"tags: python -m app train {shlex.quote(shown(root))} "
                               "--multi-label (the window trains one class a photo so far)"))
            continue
        if p.name in NOT_CLASSES:
            refused.append(Finding("info", f"folder {p.name!r} holds photos still to be "
                                           "labelled (the model was not sure): not a class"))
            continue
        reason = bad_name_reason(p.name)
        if reason is None and p.is_symlink() and _is_system(p.resolve()):
            reason = "it is a link into a system folder"
        if reason:
            refused.append(Finding("warning", f"class folder {shown(p.name)!r} left out: "
                                              f"{reason}; rename it to use it"))
        else:
            class_dirs.append(p)
    # (path, class, size, mtime_ns): tuples of plain values, which the cyclic garbage collector
    # stops tracking; Path and stat objects for 100k files made its full passes (which hold
    # every thread, the window's included) take hundreds of milliseconds
    candidates: list[tuple[str, str, int, int]] = []
    badly_named: list[Skipped] = []
    for class_dir in class_dirs:
        linked_out = walk.root not in class_dir.resolve().parents
        _collect(_walk(class_dir, walk, linked_out), class_dir.name, candidates, badly_named)
    images, skipped = _read(candidates, badly_named, store, split, progress, cancel,
                            retry_skipped)
    return _checked(Dataset(root, [p.name for p in class_dirs], images, skipped, [], split,
                            refused + _link_findings(walk), loose))


def _collect(paths: Iterator[Path], label: str, candidates: list, badly_named: list) -> None:
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        text = str(path)
        if undecodable(text):
            badly_named.append(Skipped(shown(text), "its name is not valid UTF-8 (the "
                                                     "cache cannot record it): rename it"))
            continue
        candidates.append((text, label, st.st_size, st.st_mtime_ns))


def _read(candidates: list[tuple[str, str, int, int]], skipped: list[Skipped],
          store: FeatureStore | None, split: SplitSpec, progress: ProgressCallback,
          cancel: CancelToken | None, retry_skipped: bool
          ) -> tuple[list[ImageRecord], list[Skipped]]:
    """The candidates' digests (read again only when size or mtime changed) as records, and
    the files skipped with their reasons."""
    known = store.file_index() if store else {}

    to_hash: list[int] = []
    results: list[tuple[str, str | None] | None] = []
    for i, (path, _, size, mtime_ns) in enumerate(candidates):
        entry = known.get(path)
        if entry and entry[0] == size and entry[1] == mtime_ns:
            results.append(entry[2:])
        else:
            results.append(None)
            to_hash.append(i)

    skipped = list(skipped)
    if to_hash:
        meter = RateMeter(len(to_hash))
        new_rows = []
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures: dict[int, Future] = {}
            ahead = iter(to_hash)
            for n, i in enumerate(to_hash, 1):
                if cancel is not None and cancel.cancelled:
                    for f in futures.values():
                        f.cancel()
                    cancel.raise_if_cancelled()
                # a bounded window of files in flight, not one future per file
                for j in itertools.islice(ahead, IN_FLIGHT - len(futures)):
                    futures[j] = pool.submit(digest_file, Path(candidates[j][0]))
                path, _, size, mtime_ns = candidates[i]
                try:
                    digest, fmt = futures.pop(i).result()
                except OSError as exc:
                    skipped.append(Skipped(path, f"cannot read file: {exc.strerror or exc}"))
                    continue
                results[i] = (digest, fmt)
                new_rows.append((path, size, mtime_ns, digest, fmt))
                if n % 64 == 0 or n == len(to_hash):
                    progress(meter.report("scan", n, f"reading {os.path.basename(path)}"))
        if store:
            store.remember_files(new_rows)

    bad = store.bad_reasons(PREPROCESS_VERSION) if store and not retry_skipped else {}
    images: list[ImageRecord] = []
    for (path, label, size, _), res in zip(candidates, results):
        if res is None:
            continue
        digest, fmt = res
        if size == 0:
            skipped.append(Skipped(path, "empty file (0 bytes)"))
        elif fmt is None:
            if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES:
                skipped.append(Skipped(path, "not an image: its content is no JPEG, PNG, "
                                             "BMP, GIF, WebP or TIFF"))
            # other non-images (notes, thumbnails databases) are silently ignored
        elif digest in bad:
            skipped.append(Skipped(path, bad[digest]))
        else:
            images.append(ImageRecord(path, label, digest, split.assign(digest), fmt))

    _release(candidates, results, to_hash, new_rows if to_hash else [], known)
    return images, skipped


INBOX = "(unsorted)"  # the label of a photo still to be labelled


def scan_inbox(folder: str | Path | list, store: FeatureStore | None = None,
               progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
               loose_only: bool = False) -> Dataset:
    """Unsorted photos to label, read and checked like a dataset's (same digests, the same
    skipped reasons), labelled :data:`INBOX`: a folder (walked), or a list of photos and
    folders (dropped on the window). ``loose_only``: only the files directly in ``folder``
    (the loose photos of a data folder, beside its class folders)."""
    items = [Path(p).expanduser().absolute() for p in folder] if isinstance(folder, list) \
        else [Path(folder).expanduser().resolve()]
    for item in items:
        if not item.exists():
            raise DatasetError(f"{shown(item)} does not exist")
    root = items[0] if len(items) == 1 and items[0].is_dir() else Path(os.path.commonpath(
        [str(p if p.is_dir() else p.parent) for p in items])) if items else Path.cwd()
    walk = _Walk(root)
    candidates: list[tuple[str, str, int, int]] = []
    badly_named: list[Skipped] = []
    files: list[Path] = []
    for item in items:
        if item.is_file():
            files.append(item)
        elif loose_only:
            files += sorted(p for p in item.iterdir() if not p.name.startswith(".")
                            and p.is_file())
        else:
            files += list(_walk(item, walk))
    _collect(iter(dict.fromkeys(files)), INBOX, candidates, badly_named)
    images, skipped = _read(candidates, badly_named, store, SplitSpec(1.0, 0.0, 0.0),
                            progress, cancel, False)
    ds = Dataset(root, [INBOX], images, skipped, [], SplitSpec(1.0, 0.0, 0.0),
                 _link_findings(walk))
    ds.findings = [*ds.scan_findings, *_skipped_findings(skipped)]
    return ds


def _skipped_findings(skipped: list[Skipped]) -> list[Finding]:
    return [Finding("warning", f"{len(skipped)} file(s) skipped as unreadable",
                    tuple(s.path for s in skipped))] if skipped else []


def _link_findings(walk: _Walk) -> list[Finding]:
    """The folder's checks for links: loops and system folders not walked, and files that
    are read through a link from outside the data folder (used, but worth knowing)."""
    out = []
    if walk.loops:
        out.append(Finding("warning", f"{len(walk.loops)} link(s) form a loop or lead "
                                      "nowhere and were not followed",
                           tuple(shown(p) for p in walk.loops)))
    if walk.system:
        out.append(Finding("warning", f"{len(walk.system)} link(s) lead into a system "
                                      "folder and were not followed",
                           tuple(shown(p) for p in walk.system)))
    if walk.outside:
        out.append(Finding("warning", f"{len(walk.outside)} image(s) are read through "
                                      "links from outside the data folder (moves never "
                                      "write there)",
                           tuple(shown(p) for p in walk.outside)))
    return out


def _release(*big: list | dict) -> None:
    """Empty big temporary lists and dicts a slice at a time. Freed at the function's return,
    100k entries each go in one C call that holds the GIL ~50 ms (every other thread, a
    window's event loop included, waits); slices let other threads in between."""
    for items in big:
        while items:
            if isinstance(items, dict):
                for key in list(itertools.islice(items, 4096)):
                    del items[key]
            else:
                del items[-4096:]


def _checked(ds: Dataset) -> Dataset:
    """Fill in the validation report of ``ds``."""
    findings: list[Finding] = []
    counts = ds.class_counts()
    nonempty = [c for c, n in counts.items() if n > 0]
    if not ds.images and ds.loose:
        findings.append(Finding("error", f"{ds.loose} unsorted photo(s) lie in {ds.root}, and "
                                         "no class folder has images yet: label them on the "
                                         "Label page (or: python -m app label FOLDER)"))
    elif not ds.images:
        findings.append(Finding("error", f"no usable images found in {ds.root} "
                                         "(expected one sub-folder of images per class; to "
                                         "start from unsorted photos, use the Label page)"))
    elif len(nonempty) < 2:
        findings.append(Finding("warning", f"only one class with images ({nonempty[0]!r}); "
                                           "a classifier needs at least two class folders"))
    for c, n in counts.items():
        if n < MIN_IMAGES_ERROR and ds.images:
            findings.append(Finding("warning", f"class {c!r} has {n} usable image(s); "
                                               f"training leaves it out (it needs at least "
                                               f"{MIN_IMAGES_ERROR})"))
        elif n < MIN_IMAGES_WARNING and ds.images:
            findings.append(Finding("warning", f"class {c!r} has only {n} images; "
                                               f"{MIN_IMAGES_WARNING} or more give a usable model"))
    if nonempty:
        most, least = max(counts[c] for c in nonempty), min(counts[c] for c in nonempty)
        if least and most / least >= 3:
            findings.append(Finding("warning", f"classes are unbalanced ({least} to {most} "
                                               "images); class weights will compensate"))
    first: dict[str, ImageRecord] = {}  # a list only for the rare digest seen twice
    by_digest: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in ds.images:
        seen = first.setdefault(r.digest, r)
        if seen is not r:
            by_digest[r.digest].append(r)
    for digest, later in by_digest.items():
        recs = [first[digest], *later]
        labels = sorted({r.label for r in recs})
        if len(labels) > 1:
            findings.append(Finding(
                "warning",
                f"the same image is in classes {', '.join(map(repr, labels))}",
                tuple(r.path for r in recs),
            ))
    findings += _skipped_findings(ds.skipped)
    ds.findings = [*ds.scan_findings, *findings]
    return ds
