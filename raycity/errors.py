"""The one family of the user's mistakes.

Every error a user can fix (a bad flag, file, space, checkpoint, weights or data) derives from
`UserError`: a CLI catches this one type and prints one line, and a trial knows that a retry
cannot fix it (the same input fails the same way), so it is never retried.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us; the message names the flag or file and what was
    expected."""
