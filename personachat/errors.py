"""The one base class of every error meant for the user.

Anything raised as a ``PersonachatError`` is the user's to fix (a file, an option, a folder)
and its message says what was wrong, where and how to fix it: the CLI prints it as one line.
Any other exception is a bug in personachat and is shown with its traceback.
"""

from __future__ import annotations


class PersonachatError(Exception):
    """A problem with what the user gave (data, options, folders, models), told in words."""
