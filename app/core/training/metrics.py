"""A training run's numbers: the metric names of every output, one epoch's record, and the
one way an epoch is put in words (the window's status line and the command line's alike)."""

from __future__ import annotations

from app.core.training.head import OUTPUTS

# a single-label run scores its outputs by accuracy; a multi-label one (several tags a photo)
# by "map": Keras' area under the precision-recall curve of each tag, averaged over the tags
# (``AUC(curve="PR", multi_label=True)``, 200 thresholds: an estimate of the mean average
# precision the evaluation computes exactly)
SCORES = ("accuracy", "map")
SCORE_NAMES = {"accuracy": "accuracy", "map": "mAP"}
METRIC_KEYS = tuple(f"{o}_{m}" for o in OUTPUTS for m in ("loss", *SCORES))
# what an epoch's record holds: a single-label run's keys (as before multi-label existed: a
# history.csv read by position keeps its columns), or a multi-label run's
def _record_keys(score: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{o}_{m}" for prefix in ("", "val_") for o in OUTPUTS
                 for m in ("loss", score))


HISTORY_KEYS = _record_keys("accuracy")
MULTI_LABEL_HISTORY_KEYS = _record_keys("map")


def normalise(logs: dict) -> dict:
    """Keras names a single output's metrics without its prefix: give them 'main_' back."""
    if "main_loss" in logs or "loss" not in logs or "aux1_loss" in logs:
        return logs
    out = dict(logs)
    for prefix in ("", "val_"):
        for m in ("loss", *SCORES):
            if f"{prefix}{m}" in logs:
                out[f"{prefix}main_{m}"] = logs[f"{prefix}{m}"]
    return out


def epoch_record(epoch: int, logs: dict) -> dict:
    """One finished epoch: every output's loss and score, train and validation."""
    logs = normalise(logs)
    rec: dict = {"epoch": epoch}
    for k in history_keys(logs):
        v = logs.get(k)
        rec[k] = None if v is None else float(v)
    rec["loss"] = float(logs["loss"]) if "loss" in logs else None
    rec["val_loss"] = float(logs["val_loss"]) if "val_loss" in logs else None
    return rec


def history_keys(record: dict) -> tuple[str, ...]:
    """The keys of a record (or of Keras' logs) of this run's task."""
    multi = any(k.endswith("_map") or k in ("map", "val_map") for k in record)
    return MULTI_LABEL_HISTORY_KEYS if multi else HISTORY_KEYS


def epoch_text(rec: dict, epochs: int) -> str:
    """One epoch's numbers, each named: loss and accuracy, train and validation."""
    parts = []
    for output in OUTPUTS:
        loss = rec.get(f"{output}_loss")
        if loss is None:
            continue
        m = next((m for m in SCORES if rec.get(f"{output}_{m}") is not None), "accuracy")
        name, acc = SCORE_NAMES[m], rec.get(f"{output}_{m}")
        text = f"{output}: loss {loss:.3f}, {name} {_pct(acc)}"
        vloss, vacc = rec.get(f"val_{output}_loss"), rec.get(f"val_{output}_{m}")
        if vloss is not None:
            text += f" (validation: loss {vloss:.3f}, {name} {_pct(vacc)})"
        parts.append(text)
    return f"Epoch {rec['epoch']} of {epochs} — " + "; ".join(parts)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
