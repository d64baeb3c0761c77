"""The one error policy of the `llmemf` command.

A ``UserError`` is a mistake the user can fix (a missing file, a bad value, a dataset that does not
match a run): the CLI prints its message as one line on stderr, naming the input and what to do,
and exits 2. Every other exception is a bug: a traceback and exit 1.
"""

from __future__ import annotations


class UserError(Exception):
    """A user-fixable error; its message names the input and the fix, on one line."""

    def one_line(self) -> str:
        return " ".join(str(self).split())
