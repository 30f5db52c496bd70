"""Every external command the generator runs, through the ``sh`` library.

Secrets travel only in the environment (``_env``), never as arguments: ``sh`` prints the full
command line in its errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def run_script(script: Path, args: Sequence[str], env: Mapping[str, str]) -> int:
    """Run a rendered script in the foreground with ``env`` added to ours; return its exit code."""
    raise NotImplementedError
