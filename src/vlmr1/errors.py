"""The boundary between the user's input and our bugs.

``UserError`` is raised where an input is wrong: a data file or row, a setting, a model or
checkpoint folder, a reward file. Its message names the place (``file:line: field ...`` or the
setting) and what would be right. ``vlmr1``'s command line prints it in one or two lines and
exits 1, with no traceback; every other exception is a bug of ours and keeps its traceback
(as does a user error under ``vlmr1 --traceback``).

The subclasses say which input is wrong; each also derives from the built-in error callers
caught before this boundary existed (ValueError, RuntimeError), so ``except ValueError`` keeps
working.
"""

from __future__ import annotations


class UserError(Exception):
    """The input is wrong; the message says where and what would be right."""


class ConfigError(UserError, ValueError):
    """A setting (YAML file or ``section.field=value`` override) is invalid or does not apply."""


class DataError(UserError, ValueError):
    """A data file or row is invalid; the message starts with ``file:line:`` where known.

    ``reason`` is a short, row-independent label ("image not found", "invalid JSON") under which
    ``data.on_error=skip`` counts skipped rows."""

    def __init__(self, message: str, reason: str = "invalid row"):
        super().__init__(message)
        self.reason = reason


class ModelFolderError(UserError, OSError):
    """A model or checkpoint folder is incomplete or corrupt; the message names the file."""


class ArgumentError(UserError, ValueError):
    """A command-line argument of ``vlmr1 eval|data|compare|export|report`` is invalid."""
