"""Every external command the generator runs, through the ``sh`` library.

Secrets travel only in the environment (``_env``), never as arguments: ``sh`` prints the full
command line in its errors.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

import sh

from generator.errors import UserError


def run_script(script: Path, args: Sequence[str], env: Mapping[str, str]) -> int:
    """Run a rendered script in the foreground with ``env`` added to ours; return its exit code.

    The script's output goes straight to our stdout and stderr.
    """
    try:
        bash = sh.Command("bash")
    except sh.CommandNotFound:
        raise UserError("bash is not installed; install it (apt-get install bash).") from None
    try:
        bash(str(script), *args, _fg=True, _env={**os.environ, **env})
    except sh.SignalException as exc:
        return 128 + abs(exc.exit_code)
    except sh.ErrorReturnCode as exc:
        return exc.exit_code
    return 0


def signal_name(code: int) -> str | None:
    """The signal behind a shell exit code above 128, if any."""
    if code > 128:
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            return None
    return None
