"""Errors a user can cause and fix.

Every LanternError carries a one-line message that says what was wrong and what to do.
The command line prints it without a traceback and exits non-zero; the Python API lets it
propagate so callers can catch it.
"""


class LanternError(Exception):
    """A problem with the user's input, files or environment (not a bug in lantern)."""

    exit_code = 1


class ModelFileError(LanternError):
    """The model file is missing, truncated, not GGUF, or not something lantern can run."""


class UnsupportedModelError(ModelFileError):
    """The file is valid GGUF but uses an architecture or tensor type lantern does not run."""


class ContextOverflowError(LanternError):
    """The prompt (plus what was asked to generate) does not fit in the model's context."""


class TemplateError(LanternError):
    """A chat template that cannot be rendered, or that broke a limit on time, size or arithmetic."""


class NonFiniteError(LanternError):
    """The model's math produced NaN or infinity: generation stops rather than sample from it."""


class MemoryLimitError(LanternError):
    """A sequence's KV cache would outgrow the memory available: ended before the system's
    out-of-memory killer could act."""
