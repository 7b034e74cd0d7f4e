"""The library's own exception types: the mistakes a user can make, each with a message that says
what is wrong and what to do.

The ``congeal`` command turns every :class:`CongealError` into one line on stderr and exit code 2
(``--debug`` shows the traceback); any other exception is a bug in the program and keeps its
traceback. Each type also derives from the built-in exception a caller would expect (a bad value is
a ``ValueError``, a missing file a ``FileNotFoundError``), so library users can catch either.

>>> issubclass(InputError, ValueError) and issubclass(InputError, CongealError)
True
"""
from __future__ import annotations

__all__ = ["CongealError", "UsageError", "InputError", "OutputFolderError", "CheckpointError", "DataNotFoundError"]


class CongealError(Exception):
    """A problem with what the user asked for or gave, not a bug: the message says what to do."""


class UsageError(CongealError, ValueError):
    """An argument, option or environment variable has a value the program cannot use."""


class InputError(CongealError, ValueError):
    """The input images cannot be used (unreadable, non-finite pixels, too few)."""


class OutputFolderError(CongealError, OSError):
    """The output folder cannot be written without touching files the program did not write."""


class CheckpointError(CongealError, ValueError):
    """A checkpoint file is not one of this program's, is damaged, or belongs to other inputs or settings."""


class DataNotFoundError(CongealError, FileNotFoundError):
    """A data set or weights file is not where the program looked."""
