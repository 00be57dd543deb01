"""Run a core job in a child process, with progress and cancel as if it ran in a thread.

TensorFlow holds Python's GIL for a long time while it builds and compiles a training step
(about 150 ms here): every other thread of the process, a GUI's event loop included, waits.
A child process has its own GIL. Progress reports come back over a queue, cancelling sets an
event the child turns into its :class:`CancelToken`, and the job's return value must pickle.
A child whose parent died exits at once: nothing would ever read what it computes.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import queue as queue_module
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from app.core.base.errors import UserError
from app.core.base.jobs import Cancelled, CancelToken, ProgressCallback, no_progress

POLL_SECONDS = 0.05
EXIT_ORPHANED = 3


class ChildFailed(RuntimeError):
    """The job raised in the child, or the child died; the message says which."""


class ChildRefused(UserError):
    """The job in the child ended with an expected error (the UserError family): the same
    one line here, so the caller reports it as it would in-process."""


def run_isolated(target: Callable[..., Any], kwargs: dict[str, Any],
                 progress: ProgressCallback = no_progress,
                 cancel: CancelToken | None = None) -> Any:
    """Call ``target`` (a module-level function) as ``target(progress=, cancel=, **kwargs)``
    in a spawned child process and return its result. The child imports it by its module
    and name, which are checked here, before any process starts."""
    target_name = _importable_name(target)
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    stop = ctx.Event()
    child = ctx.Process(target=_child_main, args=(target_name, kwargs, messages, stop),
                        name="bottleneck-studio-job", daemon=True)
    child.start()
    try:
        while True:
            if cancel is not None and cancel.cancelled:
                stop.set()
            message = _next_message(messages, child)
            if message is None:
                continue
            kind, payload = message
            if kind == "progress":
                progress(payload)
            elif kind == "result":
                return payload
            elif kind == "cancelled":
                raise Cancelled()
            else:
                name, text, trace, expected = payload
                if expected:
                    raise ChildRefused(text or name) from _RemoteTraceback(trace)
                raise ChildFailed(f"{text}" if text else name) from _RemoteTraceback(trace)
    finally:
        if child.is_alive():
            stop.set()
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
            child.join()


def _next_message(messages, child) -> tuple[str, Any] | None:
    """The child's next message, None when there is none yet; ChildFailed when the child has
    ended without one. A child that ended may still have sent its last message: it is in the
    pipe before the process exits, but a wait that timed out just before it arrived found
    the child gone (a busy machine lost a finished run's model to that)."""
    try:
        return messages.get(timeout=POLL_SECONDS)
    except queue_module.Empty:
        if child.is_alive():
            return None
    try:
        return messages.get(timeout=POLL_SECONDS)  # what it sent before it ended
    except queue_module.Empty:
        raise ChildFailed(f"the job's process ended unexpectedly (exit code "
                          f"{child.exitcode})") from None


def _importable_name(fn: Callable[..., Any]) -> str:
    """'package.module:function' for a function the child can import by name."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not name or "." in name or "<" in name:
        raise TypeError(f"run_isolated needs a module-level function, not {fn!r}")
    if getattr(importlib.import_module(module), name, None) is not fn:
        raise TypeError(f"{module}:{name} is not importable as {fn!r}")
    return f"{module}:{name}"


class _RemoteTraceback(Exception):
    def __init__(self, trace: str) -> None:
        super().__init__(f"\n--- in the child process ---\n{trace}")


def _child_main(target: str, kwargs: dict[str, Any], messages, stop) -> None:
    token = CancelToken()
    parent = multiprocessing.parent_process()

    def watch() -> None:
        # Polled, not stop.wait(): a multiprocessing Event's set() blocks forever on a waiter
        # whose process has already exited.
        while not stop.is_set():
            if parent is not None and not parent.is_alive():
                os._exit(EXIT_ORPHANED)  # nobody will read the result: no orphan trains on
            time.sleep(POLL_SECONDS)
        token.cancel()

    threading.Thread(target=watch, daemon=True).start()
    try:
        module, name = target.split(":")
        fn = getattr(importlib.import_module(module), name)
        result = fn(progress=lambda p: messages.put(("progress", p)), cancel=token, **kwargs)
        messages.put(("result", result))
    except Cancelled:
        messages.put(("cancelled", None))
    except BaseException as exc:  # reported to the parent, which raises it there
        messages.put(("error", (type(exc).__name__, str(exc), traceback.format_exc(),
                                isinstance(exc, UserError))))
