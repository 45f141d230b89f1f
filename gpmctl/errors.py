"""Errors a user can fix. The CLI prints them as one line on stderr and exits with `exit_code`.

Anything else that escapes a command is a bug: one line plus a hint to set GPMCTL_DEBUG=1, exit 1.
"""

from __future__ import annotations

# Exit codes of every gpmctl command.
EXIT_OK = 0
EXIT_FAILURE = 1  # a run failed for a reason that is not the user's input
EXIT_USAGE = 2  # bad input: arguments, recipe, data file, model folder
EXIT_PREEMPTED = 75  # stopped on SIGTERM/SIGUSR1 (or --stop-after-steps) after saving a checkpoint; resume it
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (`| head`): 128 + SIGPIPE, as a shell reports `yes | head`


class GpmctlError(Exception):
    """A problem with the user's input, reported as one line."""

    exit_code = EXIT_USAGE


class ConfigError(GpmctlError):
    """A bad recipe: unknown key, wrong type, impossible value. The message names file and key."""


class DataError(GpmctlError):
    """A bad data file. The message is `file:line: field: problem` (line and field when known)."""

    def __init__(self, path: str, problem: str, line: int | None = None, field: str | None = None):
        self.path, self.problem, self.line, self.field = str(path), problem, line, field
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


class ModelError(GpmctlError):
    """A model folder or id that cannot be loaded as asked."""


class DiskFullError(GpmctlError):
    """No space left on the device while writing an output (the previous file, if any, is untouched)."""

    exit_code = EXIT_FAILURE
