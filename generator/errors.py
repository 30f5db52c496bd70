"""The errors the generator reports to its user, and the exit codes of every script.

Every failure a user can fix is a :class:`UserError`; ``cli.py`` turns it into a message on
stderr and an exit code, in one place. :data:`EXIT_CODES` is the one table of the scripts' exit
codes: the templates render it (``EXIT_<NAME>`` and the usage text), the CLI reads its meanings,
and a test keeps the README's table equal to it.
"""

from typing import NamedTuple


class ExitCode(NamedTuple):
    """One exit code of the scripts (and of the CLI when it passes a script's code on): its
    name in the scripts (EXIT_<name>), its number, its meaning, and the short form of the
    scripts' usage text."""

    name: str
    code: int
    meaning: str
    short: str


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode("OK", 0, "ok", "ok"),
    ExitCode("FAILED", 1, "failed", "failed"),
    ExitCode("USAGE", 2, "usage (bad command or option)", "usage"),
    ExitCode("LOCKED", 3, "lock busy: another run holds the lock", "lock busy"),
    ExitCode("VERIFY", 4, "verification failed", "verification failed"),
    ExitCode("WRONG_KEY", 5, "wrong encryption key", "wrong encryption key"),
    ExitCode(
        "REFUSED",
        6,
        "refused: a precondition was not met (settings, missing tool, not enough space)",
        "refused (a precondition not met)",
    ),
    ExitCode(
        "ATTENTION",
        7,
        "status: something needs attention (a backup failed or is too old, the disk is full...)",
        "status needs attention",
    ),
)
EXIT_MEANINGS: dict[int, str] = {e.code: e.meaning for e in EXIT_CODES}
EXIT_ATTENTION = next(e.code for e in EXIT_CODES if e.name == "ATTENTION")


class UserError(Exception):
    """A problem the user can fix: the message says what is wrong and how to fix it."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError):
    """One or more settings are invalid; ``problems`` holds one ``NAME: problem`` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid settings ({len(problems)} problem(s)):\n{lines}")


class ScriptFailedError(UserError):
    """A rendered script ran and failed; its exit code becomes ours."""
