"""The one family of expected errors: bad input, a refused action, a damaged file, a full disk.

Every error a person can act on derives from :class:`UserError`; its message is one line that
says what is wrong and, where there is one, what to do. The command line prints it as
``error: ...`` (exit 2) and the window as a banner; anything else is a bug and keeps its
traceback (in the log).
"""

from __future__ import annotations

import errno
import unicodedata


class UserError(Exception):
    """An expected failure with a one-line message for a person."""


def shown(text: object) -> str:
    """``text`` safe to print on a terminal or in a one-line message: control characters
    (newlines, escape sequences) and undecodable bytes of a file name are written as escapes
    (``\\n``, ``\\x1b``, ``\\udcff``) instead of reaching the terminal raw."""
    s = str(text)
    if all(ch.isprintable() or ch == " " for ch in s) and not undecodable(s):
        return s
    out = []
    for ch in s:
        if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def undecodable(s: str) -> bool:
    """Whether ``s`` (a file name from the file system) holds bytes that are not UTF-8
    (Python carries them as lone surrogates, which SQLite and terminals refuse)."""
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in s)


def bad_name_reason(name: str) -> str | None:
    """Why ``name`` (a class folder or file name) cannot be used as a label, or None: names with
    control characters or bytes that are not UTF-8 would break ``labels.txt`` (one class a line)
    and every place that shows the name."""
    if undecodable(name):
        return "its name is not valid UTF-8"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        return "its name holds a control character (a newline, tab or escape)"
    if name != name.strip():
        return "its name starts or ends with white space"
    return None


def os_error_message(exc: OSError, what: str) -> str:
    """One line for an OSError while doing ``what``, naming a full disk or a read-only
    folder when that is the cause."""
    if exc.errno == errno.ENOSPC:
        return f"{what}: the disk is full"
    if exc.errno == errno.EROFS:
        return f"{what}: the folder is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{what}: permission denied"
    return f"{what}: {exc.strerror or exc}"


class SettingsError(UserError, ValueError):
    """A setting or argument out of its range (a ValueError too, for older callers)."""
