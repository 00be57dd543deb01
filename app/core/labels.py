"""Fixing labels where the mistakes are: move an image to another class folder (a real rename
in the user's folder, journaled and undoable), exclude an image from training (a list beside
the feature cache; the file stays where it is), and the training images the model finds
hardest (highest loss), where mislabelled photos usually are.

The cache is keyed by content, so after a move or an exclusion retraining computes no
features again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.errors import UserError
from app.core.feeds import SplitData

JOURNAL = ".bottleneck-studio-moves.jsonl"  # in the data folder (hidden: never a class)
EXCLUDED = "excluded.json"  # in the cache folder: {data folder: {digest: path}}


class LabelError(UserError):
    """A move or undo that was refused; nothing was changed. The message says why."""


@dataclass(frozen=True)
class Move:
    source: str  # relative to the data folder, "class/file.jpg"
    target: str

    def as_dict(self) -> dict:
        return {"source": self.source, "target": self.target}


def _inside(root: Path, path: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise LabelError(f"{path} is not in the data folder {root}") from None
    if len(rel.parts) < 2 or any(p.startswith(".") for p in rel.parts):
        raise LabelError(f"{path} is not an image in a class folder of {root}")
    return rel.as_posix()


def _rename(root: Path, source: str, target: str) -> None:
    """Rename without ever replacing a file: hard link then unlink (atomic refusal)."""
    src, dst = root / source, root / target
    if not src.is_file():
        raise LabelError(f"{src} no longer exists; nothing was changed")
    if dst.exists():
        raise LabelError(f"{dst} already exists; nothing was changed (rename one of them)")
    try:
        os.link(src, dst)
    except FileExistsError:
        raise LabelError(f"{dst} already exists; nothing was changed") from None
    except OSError:  # no hard links here (some file systems): check, then rename
        if dst.exists():
            raise LabelError(f"{dst} already exists; nothing was changed") from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _journal(root: Path, op: str, move: Move) -> None:
    entry = {"op": op, **move.as_dict(),
             "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    with open(root / JOURNAL, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def moves(data_dir: str | Path) -> list[Move]:
    """The moves in effect, oldest first (undone ones left out)."""
    path = Path(data_dir).expanduser().resolve() / JOURNAL
    stack: list[Move] = []
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line after a crash: the move it describes did not finish
        if entry.get("op") == "move":
            stack.append(Move(entry["source"], entry["target"]))
        elif entry.get("op") == "undo" and stack:
            stack.pop()
    return stack


def move_image(data_dir: str | Path, image: str | Path, new_class: str) -> Move:
    """Move ``image`` into the class folder ``new_class`` of ``data_dir`` (which must exist),
    keeping its file name; refused, changing nothing, when a file of that name is there."""
    root = Path(data_dir).expanduser().resolve()
    source = _inside(root, Path(image).expanduser().resolve())
    folder = root / new_class
    if (not new_class or "/" in new_class or new_class.startswith(".")
            or not folder.is_dir() or folder.parent != root):
        raise LabelError(f"{new_class!r} is not a class folder of {root}")
    move = Move(source, f"{new_class}/{Path(source).name}")
    if move.source == move.target:
        raise LabelError(f"{image} is already in {new_class!r}")
    _rename(root, move.source, move.target)
    _journal(root, "move", move)
    return move


def undo_move(data_dir: str | Path) -> Move:
    """Undo the latest move still in effect; returns it. Refused when nothing is left to undo
    or the original name has been taken since."""
    root = Path(data_dir).expanduser().resolve()
    done = moves(root)
    if not done:
        raise LabelError("no move to undo")
    last = done[-1]
    _rename(root, last.target, last.source)
    _journal(root, "undo", last)
    return last


def _excluded_file(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / EXCLUDED


def excluded(cache_dir: str | Path, data_dir: str | Path) -> dict[str, str]:
    """Digest -> path of the images of ``data_dir`` excluded from training."""
    try:
        data = json.loads(_excluded_file(cache_dir).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(data.get(str(Path(data_dir).expanduser().resolve()), {}))


def set_excluded(cache_dir: str | Path, data_dir: str | Path, digest: str, path: str,
                 exclude: bool = True) -> None:
    """Exclude an image (by content, so a renamed or moved file stays excluded) from
    training on ``data_dir``, or include it again."""
    file = _excluded_file(cache_dir)
    try:
        data = json.loads(file.read_text("utf-8"))
    except (OSError, ValueError):
        data = {}
    key = str(Path(data_dir).expanduser().resolve())
    entry = data.setdefault(key, {})
    if exclude:
        entry[digest] = str(path)
    else:
        entry.pop(digest, None)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), "utf-8")
    os.replace(tmp, file)


def hardest(classes: list[str], data: SplitData, probs: np.ndarray, n: int = 20) -> list[dict]:
    """The ``n`` images of ``data`` with the highest loss (-log probability of their label):
    ``{"path", "label", "predicted", "confidence", "loss"}``, hardest first."""
    if not len(data):
        return []
    p_true = probs[np.arange(len(data)), data.labels]
    loss = -np.log(np.maximum(p_true, 1e-12))
    order = np.argsort(-loss, kind="stable")[:n]
    return [{"path": data.paths[i], "label": classes[data.labels[i]],
             "predicted": classes[int(probs[i].argmax())],
             "confidence": round(float(probs[i].max()), 4), "loss": round(float(loss[i]), 4)}
            for i in order]
