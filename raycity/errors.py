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
