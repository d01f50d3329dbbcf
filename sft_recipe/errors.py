"""User-facing errors.

Anything the user can fix (a bad recipe, a broken data file, a missing path) is raised as
`UserError`; the CLI prints its message as one line and exits non-zero, with no traceback.
Everything else is a bug in sft-recipe and keeps its traceback.
"""

import difflib


class UserError(Exception):
    """A problem in the user's recipe, data or paths, reported as a single line."""


class RecipeError(UserError):
    """An invalid recipe: unknown key, wrong type, impossible value."""


class DataError(UserError):
    """Invalid data: malformed file, missing column, bad field, nothing left to train on."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the CLI exits with `exit_code`
    (128 + the signal number, the shell convention)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages run to paragraphs)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def did_you_mean(name: object, known) -> str:
    """` (did you mean 'x'?)` for the known name closest to a misspelt `name`, else ""."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def reject_unknown_keys(values, known: list[str], where: str) -> None:
    """A nested recipe mapping (`lora:`, a `datasets:` entry) may only use `known` keys: a typo is an
    error with a suggestion, never a silently ignored setting."""
    for key in values:
        if key not in known:
            raise RecipeError(f"recipe key '{where}': unknown key '{key}'{did_you_mean(key, known)}; "
                              f"known: {', '.join(known)}")


class PeerLost(Exception):
    """Another process of a distributed run died or stopped answering; this one stops too. The CLI
    prints the message (which machine, and how to resume) as one line and exits with `exit_code`."""

    exit_code = 3
