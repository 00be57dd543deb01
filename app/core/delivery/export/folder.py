"""The model folder on disk: what makes a folder ours (its ``metadata.json`` and only the files
an export writes), replacing one by rename so a crash leaves the old model or the new one,
leftovers of a killed export, the history files, and copying a model folder."""

from __future__ import annotations

import csv
import ctypes
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.base.errors import shown
from app.core.base.jobs import dead_leftovers
from app.core.delivery.export.report import ExportError, ExportReport
from app.core.storage.model_folder import EVALUATION_FILE
from app.core.training.metrics import history_keys
from app.core.trust.unknown import threshold_origin

if TYPE_CHECKING:
    pass



MODEL_FORMAT_VERSION = 1
MULTI_LABEL_FORMAT_VERSION = 2  # apps that read format 1 alone refuse it, as they must
WRITTEN_BY = "Bottleneck Studio"
# What an export writes; a folder holding anything else is not replaced.
MODEL_FILES = frozenset({"model.keras", "labels.txt", "metadata.json", "history.csv",
                         "history.json", "saved_model", "model.tflite", "model.onnx",
                         "unknown.npz", EVALUATION_FILE,
                         "predict.py"})
STANDALONE_SCRIPT = Path(__file__).resolve().parents[1] / "standalone_predict.py"


def is_model_folder(path: str | Path) -> bool:
    """True for a folder that an export of this app wrote and that holds nothing else."""
    folder = Path(path)
    try:
        meta = json.loads((folder / "metadata.json").read_text("utf-8"))
        names = {p.name for p in folder.iterdir()}
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or "format_version" not in meta:
        return False
    ours = meta.get("written_by") == WRITTEN_BY or {"app_version", "backbone", "classes"} <= set(
        meta)
    return ours and names <= MODEL_FILES


def set_unknown_threshold(folder: str | Path, threshold: float) -> bool:
    """Write ``threshold`` (moved by the user) into a model folder of ours, so the folder
    answers "unknown" with it from now on; the fitted one stays as ``fitted_threshold``. The
    new metadata.json replaces the old by rename. False (nothing touched) when ``folder`` is
    not a model folder of this app or has no unknown test."""
    meta = _our_metadata(folder)
    unknown = meta.get("unknown") if meta is not None else None
    if not isinstance(unknown, dict) or not unknown.get("method"):
        return False
    _move_threshold(unknown, threshold)
    _replace_json(Path(folder), "metadata.json", meta)
    return True


def _our_metadata(folder: str | Path) -> dict | None:
    """A model folder of this app's metadata.json, or None when it is not one."""
    folder = Path(folder)
    if not is_model_folder(folder):
        return None
    return json.loads((folder / "metadata.json").read_text("utf-8"))


def _replace_json(folder: Path, name: str, doc: dict) -> None:
    """Write ``doc`` as ``folder/name`` by rename, from a scratch file beside the folder,
    not in it (a crash must not leave a stray file inside a model folder)."""
    tmp = _scratch(folder, Path(name).stem, ".json")
    try:
        tmp.write_text(json.dumps(doc, indent=2 if name == "metadata.json" else None,
                                  ensure_ascii=False, allow_nan=False), "utf-8")
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)


def set_tag_thresholds(folder: str | Path, thresholds: dict[str, float], rule: str,
                       evaluation: dict) -> bool:
    """Give each tag of a multi-label model folder of ours the threshold the user moved it
    to (the ones fitted stay as ``fitted_thresholds``) and keep ``evaluation`` (its test
    scores at those thresholds) with it: evaluation.json first, then metadata.json, each
    replaced by rename (a crash between leaves thresholds that differ, which the folder's
    reader refuses with why, never scores of other thresholds). False, nothing touched, when
    ``folder`` is not a model folder of this app or not one of these tags."""
    meta = _our_metadata(folder)
    old = meta.get("thresholds") if meta is not None else None
    if meta is None or meta.get("task") != "multi-label" or not isinstance(old, dict) \
            or sorted(old) != sorted(thresholds):
        return False
    meta.setdefault("fitted_thresholds", dict(old))
    meta["thresholds"] = {t: float(thresholds[t]) for t in old}
    meta["threshold_rule"] = rule
    try:  # what the evaluation kept beside its scores (photos not scored, checks) stays
        kept = json.loads((Path(folder) / EVALUATION_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        kept = {}
    evaluation = {**(kept if isinstance(kept, dict) else {}), **evaluation}
    for name, doc in ((EVALUATION_FILE, evaluation), ("metadata.json", meta)):
        _replace_json(Path(folder), name, doc)
    return True


def _move_threshold(unknown: dict, threshold: float) -> None:
    """metadata.json's ``unknown`` entry answering below ``threshold`` from now on; the
    fitted one stays as ``fitted_threshold``."""
    unknown.setdefault("fitted_threshold", unknown.get("threshold"))  # older model folders
    unknown["threshold"] = float(threshold)
    unknown["threshold_set_by"] = threshold_origin(threshold, unknown["fitted_threshold"])


def _staging_for(out_dir: Path) -> Path:
    """A new hidden folder beside ``out_dir`` to write a model folder into, once
    ``out_dir`` is known to be free or ours (refused untouched otherwise)."""
    check_destination(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out_dir.parent}: {exc.strerror or exc}") from exc
    clean_leftovers(out_dir.parent)
    staging = _scratch(out_dir, "export")
    try:
        staging.mkdir(mode=0o777)  # the umask applies: a normal folder, not drwx------
    except OSError as exc:
        raise ExportError(f"cannot write beside {out_dir}: {exc.strerror or exc}") from exc
    return staging


def copy_model(source: str | Path, out_dir: str | Path,
               threshold: float | None = None) -> ExportReport:
    """Export a model folder that was opened, not trained here: its files (those an export
    writes, nothing else) copied to ``out_dir``, answering "unknown" below ``threshold`` when
    given. ``out_dir`` is refused as :func:`export_model` refuses it, and replaced the same
    way (by rename). The model is not rebuilt: its parity is what the folder says."""
    src, out_dir = Path(source).expanduser().absolute(), Path(out_dir).expanduser().absolute()
    meta_path = src / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{shown(src)} is not a model folder that can be copied ({exc})"
                          ) from exc
    if out_dir == src:
        if threshold is not None:
            set_unknown_threshold(src, threshold)
        return ExportReport(out_dir, None, "", _forms_in(src))
    staging = _staging_for(out_dir)
    try:
        for entry in sorted(src.iterdir()):
            if entry.name not in MODEL_FILES or entry.is_symlink():
                continue  # only what an export writes, and never through a link
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name, symlinks=True)
            elif entry.is_file():
                shutil.copyfile(entry, staging / entry.name)
        unknown = meta.get("unknown") if isinstance(meta, dict) else None
        if threshold is not None and isinstance(unknown, dict) and unknown.get("method"):
            _move_threshold(unknown, threshold)
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False),
                                               "utf-8")
        check_destination(out_dir)
        _swap_in(staging, out_dir)
    except ExportError:
        raise
    except OSError as exc:
        raise ExportError(f"copying the model to {out_dir} failed: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    parity = meta.get("parity") if isinstance(meta, dict) else None
    note = "" if isinstance(parity, dict) and parity.get("checked") else \
        "its parity was not checked when it was exported"
    return ExportReport(out_dir, None, note, _forms_in(out_dir))


def _forms_in(folder: Path) -> tuple[str, ...]:
    names = {"model.keras": "keras", "saved_model": "savedmodel", "model.tflite": "tflite",
             "model.onnx": "onnx"}
    return tuple(form for name, form in names.items() if (folder / name).exists())


_SCRATCH = re.compile(r"^\.(?P<name>.+)\.(?P<kind>export|replaced|metadata)-(?P<pid>\d+)-"
                      r"[0-9a-f]{8}(?P<ext>\.json)?$")


def _scratch(folder: Path, kind: str, ext: str = "") -> Path:
    """A hidden name beside ``folder`` for work in progress, naming this process so that a
    later run can tell a dead writer's leftovers from a live one's."""
    return folder.parent / f".{folder.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}"


def clean_leftovers(parent: str | Path) -> list[Path]:
    """Remove what a killed export left in ``parent``: hidden scratch folders and files of
    this app's own naming whose writing process is dead, and that hold nothing but the files
    an export writes. Anything else, a live export's included, is left alone. Returns what
    was removed."""
    removed = []
    for entry, m in dead_leftovers(parent, _SCRATCH):
        path = Path(entry.path)
        try:
            if m["kind"] == "metadata":
                if path.is_file() and m["ext"]:
                    path.unlink()
                    removed.append(path)
            elif path.is_dir() and not m["ext"] and {p.name for p in path.iterdir()} <= \
                    MODEL_FILES:
                shutil.rmtree(path)
                removed.append(path)
        except OSError:
            continue
    return removed


def check_destination(out_dir: Path) -> None:
    """Refuse, touching nothing, any destination that is not new, empty or one of our models."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir} exists and is not a folder; choose a new folder name")
    for parent in out_dir.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ExportError(f"{parent} is a file, so {out_dir} cannot be created; "
                                  "choose another folder")
            break
    if not out_dir.exists() or not any(out_dir.iterdir()) or is_model_folder(out_dir):
        return
    raise ExportError(f"{out_dir} is not empty and is not a model folder written by this app; "
                      "nothing was touched: choose a new or empty folder")



def read_history(folder: str | Path) -> list[dict]:
    """A model folder's training curves (``history.json``), checked: a list of records of
    numbers with a whole ``epoch``; [] when there are none or they cannot be trusted."""
    from app.core.storage.model_folder import ModelDirError, read_json, regular_file

    path = Path(folder) / "history.json"
    if not path.exists():
        return []
    try:
        doc = read_json(regular_file(Path(folder), "history.json", "history.json"),
                        4 * 2**20)
    except ModelDirError:
        return []
    if not isinstance(doc, list):
        return []
    out = []
    for rec in doc:
        if not (isinstance(rec, dict) and isinstance(rec.get("epoch"), int)
                and all(isinstance(k, str) and (v is None or isinstance(v, (int, float)))
                        for k, v in rec.items())):
            return []
        out.append(rec)
    return out


def write_history(folder: Path, history: list[dict]) -> None:
    (folder / "history.json").write_text(json.dumps(history, indent=1))
    keys = ["epoch", *history_keys(history[0] if history else {}), "loss", "val_loss",
            "best_epoch"]
    with open(folder / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)



_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Put ``staging`` at ``out_dir``; an old model folder there ends up at ``staging``.

    With an atomic exchange no moment exists without a model at ``out_dir``; elsewhere the
    old folder is renamed aside first, so a crash between the two renames leaves it beside
    the destination (``.NAME.replaced-*``), never deleted.
    """
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        staging.rename(out_dir)
        return
    if _exchange(staging, out_dir):
        return
    aside = _scratch(out_dir, "replaced")
    out_dir.rename(aside)
    try:
        staging.rename(out_dir)
    except OSError:
        aside.rename(out_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


