"""The errors the generator reports to its user.

Every failure a user can fix is a :class:`UserError`; ``cli.py`` turns it into a message on
stderr and an exit code, in one place.
"""


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
