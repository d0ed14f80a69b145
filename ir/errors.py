"""The one error type irtool raises for bad input; the CLI turns it into one line and exit status 2."""

from __future__ import annotations


class IrtoolError(Exception):
    """A user-facing error: says what was wrong and where (op, node, file)."""

    def __init__(self, message: str, *, where: str | None = None):
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
