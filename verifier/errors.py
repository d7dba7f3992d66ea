"""User-facing errors and the CLI's exit codes (documented in README.md)."""

from __future__ import annotations

EXIT_OK = 0  # a verdict was printed: sat, unsat, timeout or unknown
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_BAD_INPUT = 3  # missing/unreadable/malformed model or spec, config, shape mismatch
EXIT_UNSUPPORTED = 4  # the model uses an operator or construct we do not support
EXIT_INTERNAL = 5  # a bug of ours: 'error' is printed, never a wrong verdict


class VerifierError(Exception):
    """Base of the errors that the CLI reports as one line."""

    exit_code = EXIT_BAD_INPUT


class InputFileError(VerifierError):
    """A file is missing, unreadable or not what its name says."""


class ModelError(VerifierError):
    """The ONNX model is malformed or inconsistent."""


class UnsupportedModelError(VerifierError):
    """The ONNX model uses operators or attributes we do not handle (all are named)."""

    exit_code = EXIT_UNSUPPORTED


class ShapeMismatchError(VerifierError):
    """Spec and model disagree on the number of inputs or outputs."""


class ConfigError(VerifierError):
    """A configuration file or option is malformed or names an unknown key."""
