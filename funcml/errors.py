"""funcml's error types, and how command-line tools report them.

User mistakes (a bad flag, a missing folder, a wrong shape, a corrupt checkpoint) raise a
subclass of `FuncmlError`, itself a `ValueError`, with a message that says what was wrong,
what was expected and what to do. Command-line tools wrap their `main` in `cli_main`, which
prints such an error on one line without a traceback and exits with status 2.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

__all__ = [
    "TrainingInterrupted",
    "FuncmlError",
    "ShapeError",
    "DTypeError",
    "RangeError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "NonFiniteError",
    "PRNGKeyError",
    "cli_main",
]


class FuncmlError(ValueError):
    """Base class of every error funcml raises for a user mistake."""


class ShapeError(FuncmlError):
    """A tensor's rank or a named dimension is not what the contract says."""


class DTypeError(FuncmlError):
    """A tensor's dtype is not one the function accepts."""


class RangeError(FuncmlError):
    """A value lies outside the range a function accepts (e.g. a class id >= num_classes)."""


class ConfigError(FuncmlError):
    """An unknown, missing or ill-typed configuration field, or a bad flag value."""


class DataError(FuncmlError):
    """Input data is missing, unreadable or inconsistent (e.g. an image without a mask)."""


class CheckpointError(FuncmlError):
    """A checkpoint is missing, incomplete, corrupt, or does not match the expected tree."""


class NonFiniteError(FuncmlError, ArithmeticError):
    """A loss, gradient or tensor holds NaN or Inf where finite values are required."""


class PRNGKeyError(FuncmlError):
    """A PRNG key is missing or malformed (e.g. `train=True` with dropout but no key)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after saving a checkpoint; the message says where and how to resume.
    A `KeyboardInterrupt`, so `cli_main` exits 130 (the shell's code for SIGINT), never 0."""


F = TypeVar("F", bound=Callable[..., object])


def cli_main(fn: F) -> F:
    """Decorate a CLI entry point: a `FuncmlError` prints `error: ...` and exits 2; Ctrl-C
    (`KeyboardInterrupt`, `TrainingInterrupted`) prints `interrupted` and exits 130.

    Anything else (a bug) keeps its traceback, so that it is reported rather than hidden.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FuncmlError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt as e:
            print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
