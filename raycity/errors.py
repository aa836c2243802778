"""The one family of the user's mistakes.

Every error a user can fix (a bad flag, file, space, checkpoint, weights or data) derives from
`UserError`: a CLI catches this one type and prints one line, and a trial knows that a retry
cannot fix it (the same input fails the same way), so it is never retried.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us; the message names the flag or file and what was
    expected."""


def brief(err: BaseException, limit: int = 160) -> str:
    """Another library's error in one short line, for inside a message of ours (torch's
    weights-only refusal alone is a page of advice that does not apply here)."""
    text = str(err).strip()
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        return "not a tensor file that loads with weights_only=True"
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def short_error(text: object) -> str:
    """The line of a traceback that says what went wrong, without the module path
    ("DataError: …", not "raycity.data.layout.DataError: …"). An error raised in a DataLoader
    worker comes back as the same class with the worker's whole traceback as its message; this
    is its last line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":")[0]
        if "Error" in head or "Exception" in head:
            return line[len(head) - len(head.rsplit(".", 1)[-1]):] if " " not in head else line
    return lines[-1] if lines else "unknown error"
