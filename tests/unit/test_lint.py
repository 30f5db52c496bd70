"""Lint as tests: ruff (lint and format) and mypy --strict over the whole project."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import ROOT, tool


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
    result = subprocess.run(
        [tool(command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
