"""The few named exceptions that user-facing failures raise.

The CLI catches :class:`IgkdError`, prints its message on one line and exits with status 2.
"""

from __future__ import annotations

import warnings


class IgkdError(Exception):
    """Base class for every error a user can fix without reading a traceback."""


class DataError(IgkdError):
    """A dataset file is unreadable or malformed: truncated, wrong keys, shapes, dtypes or labels."""


class DatasetNotFoundError(DataError):
    """A dataset is not where it was looked for (and could not be downloaded), or is incomplete."""


class StaleStoreError(IgkdError):
    """A map store was made for another dataset, teacher or IG setting, or is incomplete."""


class ConfigError(IgkdError):
    """A config file or override names an unknown key or holds a bad value."""


class CheckpointError(IgkdError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


class NumericalError(IgkdError):
    """A value that cannot be right: a non-finite loss, an IG map with inf or NaN, an overflow."""


class CorruptFileError(IgkdError):
    """A file igkd wrote does not match the checksum it carries: truncated, bit-flipped or altered."""


class LockedError(IgkdError):
    """Another live process is writing the same run directory, study or store."""


class WriteError(IgkdError):
    """A file could not be written (no space, quota, permission, read-only file system); nothing
    half-written was kept, and running the command again continues from what was saved."""

    def __init__(self, path, reason: str, fix: str,
                 then: str = "then run the same command again: it continues from what was saved"):
        self.path, self.reason, self.fix, self.then = path, reason, fix, then
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}; nothing half-written was kept: {self.fix}, {self.then}"


class IgkdWarning(UserWarning):
    """Something a user should know that does not stop the command (the CLI prints it on one line)."""


_said: set[str] = set()  # the warnings this command has given


def forget_warnings() -> None:
    """Give every warning again (a new command in the same process: the CLI's ``main``)."""
    _said.clear()


def warn_once(message: str) -> None:
    """An :class:`IgkdWarning`, given once per command whatever the warnings filters did in between
    (Python forgets what it said whenever they change)."""
    if message not in _said:
        _said.add(message)
        warnings.warn(message, IgkdWarning, stacklevel=2)


class ExportError(IgkdError):
    """A model cannot be exported, or its export does not reproduce PyTorch's outputs."""
