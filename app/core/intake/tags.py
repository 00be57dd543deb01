"""Several tags a photo: a folder of photos and a tags file beside them, read and checked.

The tags file is plain CSV any tool reads and writes (the form Create ML's annotations and
most exporters convert to in one step)::

    file,tags
    000044.jpg,cat;chair
    kitchen/0001.png,
    ...

``file`` is a path relative to the tags file's folder, or a bare name found once anywhere
below the data folder; ``tags`` are joined by ``;``. A photo listed with no tag is "none of
these", a real answer. The checks (never a traceback) report rows that cannot be read,
photos listed but missing, image files not listed (left out: they are not labelled), tags
with too few photos, and how many photos carry two tags or more. Splits stay by content
digest, as a class folder's.
The file is rewritten only by rename (:func:`write_tags`): a crash leaves the old or the new.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from app.core.base.errors import bad_name_reason, shown
from app.core.base.jobs import CancelToken, ProgressCallback, no_progress
from app.core.intake.dataset import (
    MIN_IMAGES_ERROR,
    MIN_IMAGES_WARNING,
    NOT_CLASSES,
    TAGS_FILE,
    Dataset,
    DatasetError,
    Finding,
    ImageRecord,
    SplitSpec,
    _collect,
    _link_findings,
    _read,
    _skipped_findings,
    _Walk,
    _walk,
)
from app.core.intake.imaging import IMAGE_SUFFIXES
from app.core.storage.store import FeatureStore

SEPARATOR = ";"
TAGGED = "(tagged)"  # the label of every record of a tagged dataset (its tags are apart)
MAX_TAGS_FILE_BYTES = 256 << 20  # a tags file larger than this is refused, not read


@dataclass(frozen=True)
class TagRow:
    file: str  # as written in the file
    tags: tuple[str, ...]
    line: int


@dataclass
class TagsFile:
    """What a tags file says, and what is wrong with it."""

    path: Path
    rows: list[TagRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # rows that name a file but were left out (their line): tagging never writes over them
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def unreadable(self) -> bool:
        """The file could not be read (whole or in part): nothing may be written to it."""
        return any(f.level == "error" for f in self.findings)

    def first_tags(self) -> dict[str, tuple[str, ...]]:
        """Each listed file's tags by :func:`row_key`: :attr:`rows` holds a file's first row
        only (a later row for the same file is a finding, never an answer)."""
        return {row_key(row.file): row.tags for row in self.rows}


def parse_row(cells: list[str]) -> tuple[str, tuple[str, ...]] | tuple[str, str] | None:
    """One record of a tags file: (file, its tags) when usable; (file, why not) when it names
    a file but cannot be used; None for a record that names no file (blank, or no 'file,tags'
    row). The one reading of a row, for reading the file and for editing it."""
    if not cells or not any(c.strip() for c in cells):
        return None
    name = cells[0].strip()
    if not name:
        return None
    if len(cells) > 2:
        return name, "is not 'file,tags'"
    if os.path.isabs(name) or ".." in Path(name).parts or bad_name_reason(name):
        return name, "names a file outside the folder or with an unusable name"
    tags: list[str] = []
    for tag in (cells[1] if len(cells) > 1 else "").split(SEPARATOR):
        tag = tag.strip()
        if not tag:
            continue
        reason = tag_name_reason(tag)
        if reason:
            return name, f"tag {shown(tag)!r} {reason}"
        if tag not in tags:
            tags.append(tag)
    return name, tuple(sorted(tags))


def read_tags(path: str | Path) -> TagsFile:
    """The rows of the tags file at ``path``, each file once (a file listed again: the first
    row counts, and a finding says so when the rows differ). Unreadable rows, bad tag names and
    paths leading out of the folder are findings; so is a file that cannot be read at all."""
    path = Path(path)
    out = TagsFile(path)
    try:
        if path.stat().st_size > MAX_TAGS_FILE_BYTES:
            out.findings.append(Finding("error", f"{shown(path)} is larger than "
                                                 f"{MAX_TAGS_FILE_BYTES >> 20} MB: not read"))
            return out
        if not path.is_file():
            raise IsADirectoryError(str(path))
        raw = path.read_bytes()
    except OSError as exc:
        out.findings.append(Finding("error", f"cannot read the tags file {shown(path)}: "
                                             f"{exc.strerror or exc}"))
        return out
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        out.findings.append(Finding("error", f"{shown(path)} is not UTF-8 text (byte "
                                             f"{exc.start}): save it as UTF-8 CSV"))
        return out
    return parse_tags_text(text, path)


def parse_tags_text(text: str, path: Path) -> TagsFile:
    """:func:`read_tags` of the text of the tags file ``path``."""
    out = TagsFile(path)
    bad_rows: list[str] = []
    bad_tags: list[str] = []
    outside: list[str] = []
    seen: dict[str, TagRow] = {}
    differing: list[str] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for number, row in enumerate(reader, 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if number == 1 and [c.strip().lower() for c in row[:2]] == ["file", "tags"]:
                continue  # the header
            parsed = parse_row(row)
            if parsed is None or len(row) > 2:
                bad_rows.append(f"line {number}: {shown(','.join(row))[:80]}")
                if parsed is not None:
                    out.left_out.setdefault(row_key(parsed[0]), number)
                continue
            name, tags = parsed
            if isinstance(tags, str):  # a file named, and why it cannot be used
                (bad_tags if tags.startswith("tag ") else outside).append(
                    f"line {number}: {shown(name)}" + (f": {tags}" if tags.startswith("tag ")
                                                       else ""))
                # without that tag it would train as a "no" for it: left out
                out.left_out.setdefault(row_key(name), number)
                continue
            entry = TagRow(name, tags, number)
            first = seen.setdefault(Path(name).as_posix(), entry)
            if first is not entry and first.tags != entry.tags:
                differing.append(f"{shown(name)} (lines {first.line} and {number})")
    except csv.Error as exc:
        out.findings.append(Finding("error", f"{shown(path)} is not readable CSV: {exc}"))
    out.rows = list(seen.values())
    if bad_rows:
        out.findings.append(Finding("warning", f"{len(bad_rows)} row(s) of {path.name} are not "
                                               "'file,tags' and were left out",
                                    tuple(bad_rows)))
    if outside:
        out.findings.append(Finding("warning", f"{len(outside)} row(s) name a file outside "
                                               f"the folder or with an unusable name: left "
                                               "out", tuple(outside)))
    if bad_tags:
        out.findings.append(Finding("warning", f"{len(bad_tags)} photo(s) have a tag that "
                                               "cannot be used (a tag becomes a folder name): "
                                               "left out until it is renamed",
                                    tuple(bad_tags)))
    if differing:
        out.findings.append(Finding("warning", f"{len(differing)} photo(s) are listed twice "
                                               "with different tags: the first row counts",
                                    tuple(differing)))
    return out


def tag_name_reason(tag: str) -> str | None:
    """Why ``tag`` cannot be a tag (it becomes a folder name when photos are sorted by tag):
    None when it can."""
    reason = bad_name_reason(tag)
    if reason:
        return reason
    if "/" in tag or "\\" in tag or tag in (".", "..") or tag in NOT_CLASSES:
        return "cannot be a folder name"
    if SEPARATOR in tag or "," in tag:
        return f"holds {SEPARATOR!r} or ','"
    return None


def write_tags(path: str | Path, rows: dict[str, tuple[str, ...]]) -> None:
    """Write ``rows`` ({file: tags}) as the tags file at ``path``, replacing it by rename
    (fsynced first): a crash leaves the old file or the new one, never neither."""
    path = Path(path)
    buf = io.StringIO(newline="")  # rows with an absolute path (photos outside the folder)
    # are written as they are; reading them back refuses them, naming each
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "tags"])
    for name in sorted(rows):
        for tag in rows[name]:
            reason = tag_name_reason(tag)
            if reason:
                raise ValueError(f"tag {tag!r} {reason}")
        writer.writerow([name, SEPARATOR.join(sorted(rows[name]))])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def row_key(name: str) -> str:
    """How a tags file's ``file`` cell is compared: stripped, with ``/`` separators."""
    return Path(name.strip()).as_posix()


def _records(text: str) -> list[tuple[str, list[str]]]:
    """The file's records as (their exact text, their cells); a record may span lines (a
    quoted newline). Text after a CSV error is one record of no cells (kept as it is)."""
    # the same lines the csv reader counts (\n, \r, \r\n; not splitlines' \f, \x85...)
    lines = io.StringIO(text, newline="").readlines()
    out: list[tuple[str, list[str]]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    done = 0
    try:
        for cells in reader:
            out.append(("".join(lines[done:reader.line_num]), cells))
            done = reader.line_num
    except csv.Error:
        pass
    if done < len(lines):
        out.append(("".join(lines[done:]), []))
    return out


def current_tags(path: str | Path, keys: list[str]) -> dict[str, tuple[str, ...] | None]:
    """Each key's tags as the file lists them now (its first row; None when not listed),
    read as :func:`read_tags` reads them."""
    found = read_tags(path).first_tags()
    return {k: found.get(row_key(k)) for k in keys}


def edit_tags(path: str | Path, changes: dict[str, tuple[str, ...] | None]) -> None:
    """Change the rows of ``changes`` ({file: tags, or None to take the row out}) in the tags
    file at ``path`` and nothing else: every other line stays byte for byte (a row the app
    cannot read, a comment, the user's order); a file not listed gets a row at the end. The
    file is replaced by rename (written and fsynced first, its mode kept): a crash leaves the
    old file or the new one. A missing file is made (with its header)."""
    path = Path(path)
    for tags in changes.values():
        for tag in tags or ():
            reason = tag_name_reason(tag)
            if reason:
                raise ValueError(f"tag {tag!r} {reason}")
    try:
        raw = path.read_bytes()
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        raw, mode = b"", None
    text = raw.decode("utf-8-sig")
    bom = "\ufeff" if raw.startswith(b"\xef\xbb\xbf") else ""
    todo = {row_key(k): v for k, v in changes.items()}
    out: list[str] = []
    newline = "\r\n" if "\r\n" in text else "\n"

    def row(name: str, tags: tuple[str, ...]) -> str:
        buf = io.StringIO(newline="")
        csv.writer(buf, lineterminator=newline).writerow([name, SEPARATOR.join(sorted(tags))])
        return buf.getvalue()

    for number, (record, cells) in enumerate(_records(text)):
        key = row_key(cells[0]) if cells and cells[0].strip() else None
        if (key is None or key not in todo
                or (number == 0 and [c.strip().lower() for c in cells[:2]] == ["file", "tags"])):
            out.append(record)
            continue
        parsed = parse_row(cells)
        if parsed is None or isinstance(parsed[1], str):  # a row not read: never written over
            raise ValueError(f"line {number + 1} of {path.name} lists {cells[0].strip()!r} but "
                             f"cannot be read ({parsed[1] if parsed else 'no file'}): fix "
                             "that line first; nothing was changed")
        tags = todo.pop(key)
        if tags is not None:
            ending = newline if record.endswith(("\n", "\r")) else ""
            out.append(row(cells[0].strip(), tags).rstrip("\r\n") + ending)
    if not text.strip():
        out = [f"file,tags{newline}"]
    added = [(k, v) for k, v in todo.items() if v is not None]
    if added and out and not out[-1].endswith(("\n", "\r")):
        out[-1] += newline
    out += [row(k, v) for k, v in added]
    # read back before it replaces anything: each change as meant, every other row as it was
    # (a quote the user left open would swallow a row added at the end)
    wanted = {row_key(k): v for k, v in changes.items()}
    before = parse_tags_text(text, path).first_tags()
    after = parse_tags_text("".join(out), path).first_tags()
    # a row taken out must leave the file unlisted (a later row for the same file would
    # become its answer: refused, that row is the user's)
    wrong = [k for k, v in wanted.items()
             if after.get(k) != (None if v is None else tuple(sorted(v)))]
    if wrong or ({k: v for k, v in before.items() if k not in wanted}
                 != {k: v for k, v in after.items() if k not in wanted}):
        raise ValueError(f"{path.name} would not read back as meant after the change (an "
                         "unclosed quote?): nothing was changed; fix the file first")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(bom + "".join(out))
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class TaggedDataset:
    """A folder of photos with several tags each: the photos as a :class:`Dataset` (every
    record labelled :data:`TAGGED`, digests and splits as usual), the tag names, and each
    photo's tags by digest. ``findings``: the tags file's and the folder's checks."""

    root: Path
    tags_file: Path
    tag_names: list[str]
    images: Dataset
    tags: dict[str, tuple[str, ...]]  # digest -> tags (a photo with none: ())
    findings: list[Finding] = field(default_factory=list)
    left_out_tags: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def records(self, split: str | None = None) -> list[ImageRecord]:
        """One record per content (the first path of each digest), in one split or all."""
        seen: set[str] = set()
        out = []
        for r in self.images.images:
            if r.digest in seen or (split is not None and r.split != split):
                continue
            seen.add(r.digest)
            out.append(r)
        return out

    def targets(self, records: list[ImageRecord]) -> np.ndarray:
        """The records' tags as a multi-hot float32 matrix (N, tags), in tag_names' order."""
        index = {t: i for i, t in enumerate(self.tag_names)}
        y = np.zeros((len(records), len(self.tag_names)), np.float32)
        for row, r in enumerate(records):
            for t in self.tags.get(r.digest, ()):
                if t in index:
                    y[row, index[t]] = 1.0
        return y

    def only(self, images: Dataset) -> TaggedDataset:
        """This tagged folder with ``images`` as its photos (what caching kept: a photo that
        does not decode is skipped there, with its reason)."""
        kept = {r.digest for r in images.images}
        return replace(self, images=images,
                       tags={d: t for d, t in self.tags.items() if d in kept})

    def tag_counts(self, split: str | None = None) -> dict[str, int]:
        y = self.targets(self.records(split))
        return {t: int(n) for t, n in zip(self.tag_names, y.sum(axis=0))}

    def summary(self) -> dict:
        recs = self.records()
        per_photo = Counter(len(self.tags.get(r.digest, ())) for r in recs)
        return {"photos": len(recs), "tags": self.tag_counts(),
                "tags_per_photo": {str(k): per_photo[k] for k in sorted(per_photo)},
                "split": {s: len(self.records(s)) for s in ("train", "validation", "test")},
                "left_out_tags": self.left_out_tags,
                "findings": [f.as_dict() for f in self.findings]}


def find_tags_file(root: str | Path, labels: str | Path | None = None) -> Path:
    """The tags file: ``labels`` (relative to ``root`` unless absolute), else ``root``'s
    ``labels.csv``. :class:`DatasetError` when there is none."""
    root = Path(root).expanduser()
    path = Path(labels).expanduser() if labels else root / TAGS_FILE
    if labels and not path.is_absolute() and not path.exists():
        path = root / path
    if not path.is_file():
        raise DatasetError(f"no tags file {shown(path)}: a multi-label folder needs one "
                           f"('file,tags' rows, tags joined by '{SEPARATOR}')")
    return path


def scan_tagged(root: str | Path, labels: str | Path | None = None,
                store: FeatureStore | None = None, split: SplitSpec | None = None,
                progress: ProgressCallback = no_progress, cancel: CancelToken | None = None
                ) -> TaggedDataset:
    """The photos below ``root`` that the tags file lists, read like a class folder's (same
    digests, splits and skipped reasons), with their tags and the checks. Raises
    :class:`DatasetError` only when ``root`` is no folder or there is no tags file."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    tags_path = find_tags_file(root, labels)
    tags_file = read_tags(tags_path)
    findings = list(tags_file.findings)
    base = tags_path.resolve().parent
    split = split or SplitSpec()
    walk = _Walk(root)
    files = [p for p in _walk(root, walk)]
    by_rel = {p.relative_to(base).as_posix(): p for p in files if base in p.parents}
    by_name: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        by_name[p.name].append(p)
    listed: dict[Path, tuple[str, ...]] = {}
    missing, ambiguous = [], []
    for row in tags_file.rows:
        key = Path(row.file).as_posix()
        path = by_rel.get(key)
        if path is None and "/" not in key:
            named = by_name.get(key, [])
            if len(named) > 1:
                ambiguous.append(f"line {row.line}: {shown(row.file)} ({len(named)} files)")
                continue
            path = named[0] if named else None
        if path is None:
            missing.append(f"line {row.line}: {shown(row.file)}")
            continue
        listed.setdefault(path, row.tags)
    candidates: list[tuple[str, str, int, int]] = []
    badly_named: list = []
    _collect(iter(listed), TAGGED, candidates, badly_named)
    images, skipped = _read(candidates, badly_named, store, split, progress, cancel, False)
    ds = Dataset(root, [TAGGED], images, skipped, [], split, _link_findings(walk))
    ds.findings = [*ds.scan_findings, *_skipped_findings(skipped)]
    findings += ds.findings
    if missing:
        findings.append(Finding("warning", f"{len(missing)} photo(s) listed in "
                                           f"{tags_path.name} are not in the folder",
                                tuple(missing)))
    if ambiguous:
        findings.append(Finding("warning", f"{len(ambiguous)} listed name(s) match several "
                                           "files: give their path from the tags file's "
                                           "folder", tuple(ambiguous)))
    unlisted = [str(p) for p in files if p not in listed and p != tags_path.resolve()
                and p.suffix.lower() in IMAGE_SUFFIXES]
    if unlisted:
        findings.append(Finding("info", f"{len(unlisted)} image file(s) are not in "
                                        f"{tags_path.name}: not tagged yet, left out "
                                        "(the Label page asks for their tags)",
                                tuple(unlisted)))
    tags: dict[str, tuple[str, ...]] = {}
    conflicts: list[str] = []
    for r in images:
        t = listed[Path(r.path)]
        if r.digest in tags and tags[r.digest] != t:
            conflicts.append(r.path)
            t = tuple(sorted(set(tags[r.digest]) | set(t)))
        tags[r.digest] = t
    if conflicts:
        findings.append(Finding("warning", f"{len(conflicts)} photo(s) have the same content as "
                                           "another listed with different tags: their tags "
                                           "are joined", tuple(conflicts)))
    counts = Counter(t for ts in tags.values() for t in ts)
    names = sorted(counts)
    keep = [t for t in names if counts[t] >= MIN_IMAGES_ERROR]
    left_out = [t for t in names if t not in keep]
    for t in left_out:
        findings.append(Finding("warning", f"tag {t!r} has {counts[t]} photo(s); training "
                                           f"leaves it out (it needs at least "
                                           f"{MIN_IMAGES_ERROR})"))
    for t in keep:
        if counts[t] < MIN_IMAGES_WARNING:
            findings.append(Finding("warning", f"tag {t!r} has only {counts[t]} photos; "
                                               f"{MIN_IMAGES_WARNING} or more give a usable "
                                               "model"))
    several = sum(1 for ts in tags.values() if len(ts) >= 2)
    none = sum(1 for ts in tags.values() if not ts)
    findings.append(Finding("info", f"{len(tags)} photo(s) tagged: {several} with two tags "
                                    f"or more, {none} with none (\"none of these\")"))
    if not images:
        findings.append(Finding("error", f"no usable photo listed in {shown(tags_path)} was "
                                         f"found below {shown(root)}"))
    elif len(keep) < 1:
        findings.append(Finding("error", f"no tag has {MIN_IMAGES_ERROR} photos or more: "
                                         "nothing to learn"))
    return TaggedDataset(root, tags_path, keep, ds, tags, findings, left_out)
