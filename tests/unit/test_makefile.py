"""The Makefile's own help: what `make` alone prints."""

from __future__ import annotations

import os
import pty
import re
import subprocess

from tests.support import ROOT


def make_help(*, terminal: bool) -> str:
    """What `make help` prints, to a pipe or to a terminal."""
    if not terminal:
        return subprocess.run(
            ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    leader, follower = pty.openpty()
    try:
        subprocess.run(["make", "-s", "help"], cwd=ROOT, stdout=follower, check=True)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    return b"".join(chunks).decode()


def test_make_help_colours_a_terminal_only() -> None:
    piped = make_help(terminal=False)
    assert "\x1b" not in piped
    assert re.search(r"^  lint +ruff", piped, re.M)
    assert "\x1b[1mlint" in make_help(terminal=True)


def test_the_lint_target_names_every_tool_it_runs() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    target = re.search(r"^lint:.*## (.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert target is not None
    description, recipe = target.groups()
    tools = re.findall(r"\$\(BIN\)/(\w+)", recipe)
    assert tools
    for tool in tools:
        assert tool in description, f"`make lint` runs {tool}; its description omits it"
