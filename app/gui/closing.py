"""What closing the window asks, and which running jobs it stops or waits for.

Training, caching and exporting are worth a question; everything else (reading a folder,
thumbnails, predictions) is cancelled without one. A model being saved for the next start (or
the threshold written into it) and an export are waited for, never cancelled: stopping them
would lose the model.
"""

from __future__ import annotations

from collections.abc import Iterable

SAVING = "saving the model"  # the job that keeps the last trained model for the next start
REMEMBERING = "remembering the threshold"  # the slider's threshold, into that saved model

QUESTIONS = {
    "training": "Training is running — stop and quit? The best model so far is kept and "
                "opens again at the next start.",
    "export": "A model is being exported — quit once it is written?",
    "caching": "Caching is running — stop and quit? Nothing is lost: every finished batch is "
               "already saved, and the next run goes on from there.",
}
WAITED_FOR = ("export", SAVING, REMEMBERING)


def quit_question(running: Iterable[str]) -> str | None:
    """The question to ask before closing while the named jobs run; None: close at once."""
    names = set(running)
    parts = [text for name, text in QUESTIONS.items() if name in names]
    return "\n\n".join(parts) or None


def stops_on_quit(name: str) -> bool:
    """Whether a job is cancelled when the window closes (the others are waited for)."""
    return name not in WAITED_FOR
