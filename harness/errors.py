"""Exceptions the CLI turns into one-line messages and exit codes instead of tracebacks."""

from __future__ import annotations


class HarnessError(Exception):
    """An error the user can act on; the CLI prints it on one line and exits with ``exit_code``."""

    exit_code = 1


class UsageError(HarnessError):
    """Bad input from the user: a malformed suite, an unknown component, an unreadable file."""

    exit_code = 2


class ValidationError(UsageError):
    """A file failed validation; ``problems`` holds one message per problem found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}: " + "; ".join(problems))


class OutputError(HarnessError):
    """A file the harness must write cannot be written (a missing or read-only folder, a full
    disk, a name that is a folder or too long); what was written before is kept."""

    exit_code = 2


class BusyError(HarnessError):
    """Another run holds the lock of the leaderboard this run would write."""

    exit_code = 2


class PluginError(HarnessError):
    """A plugin registered a component badly (twice, or an attack without a norm); raised into the
    plugin's registration hook, it disables that plugin."""

    exit_code = 2


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message with the line breaks folded."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
