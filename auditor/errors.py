"""Exception types shared across the package.

The CLI maps :class:`AuditorInputError` (and its subclasses) to exit code 2: bad input that
the user can fix (a config key, a file, an argument). Every message names the culprit, e.g.
``"[data] manifest: file not found: /x/manifest.csv"``.
"""

from __future__ import annotations


class AuditorError(Exception):
    """Base class of every error raised on purpose by cam-auditor."""


class AuditorInputError(AuditorError, ValueError):
    """Bad input from the user: config, files, arguments. CLI exit code 2."""


class ConfigError(AuditorInputError):
    """Invalid configuration; the message names the key and the file."""


class DataError(AuditorInputError):
    """A dataset or annotation file that cannot be used as a whole."""


class ModelLoadError(AuditorInputError):
    """A model or checkpoint that cannot be loaded (safely)."""


class UnsafePathError(DataError):
    """A path from an annotation file that escapes the dataset root."""


class SampleSkipped(AuditorError):  # noqa: N818 - it is a signal, not a failure of the run
    """Raised by a reader for one sample that must be skipped; ``reason`` goes to the report."""

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(f"{sample_id}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


class ResumeMismatchError(AuditorInputError):
    """``--resume`` on a run directory made with another model, data or config."""


class RunLockedError(AuditorInputError):
    """The run directory is locked by another live process (``holder`` describes it)."""

    def __init__(self, message: str, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder = dict(holder or {})


class StorageError(AuditorInputError):
    """The run directory cannot be written (disk full, read-only, not a folder). Exit code 2."""


class ModelRuntimeError(AuditorInputError):
    """The user's model raised on too many batches (its error is quoted). Exit code 2."""


class RenderError(AuditorError):
    """The report could not be rendered (missing figure, time limit, template error)."""
