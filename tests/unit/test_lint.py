"""Lint as tests: ruff (lint and format) and mypy --strict over the whole project."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "generator", "devtools", "tests", "bench"],
        ["ruff", "format", "--check", "generator", "devtools", "tests", "bench"],
        ["mypy", "--strict"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_python_code_is_lint_clean(command: list[str]) -> None:
    exe = shutil.which(command[0], path=str(BIN)) or shutil.which(command[0])
    if exe is None:
        pytest.skip(f"{command[0]} is not installed (make install puts it in .venv)")
    result = subprocess.run(
        [exe, *command[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
