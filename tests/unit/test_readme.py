"""What a newcomer on a bare Debian reads first in the README, and can type as written."""

from __future__ import annotations

import re

from tests.support import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def shell_lines() -> list[str]:
    """The command lines of the README's ``sh`` blocks, comments cut off, in order."""
    blocks = re.findall(r"^```sh\n(.*?)^```", README, re.M | re.S)
    lines = [ln.split("  #")[0].strip() for block in blocks for ln in block.splitlines()]
    return [ln for ln in lines if ln]


def test_the_first_commands_install_git_and_make_before_using_them() -> None:
    lines = shell_lines()
    first_clone = next(i for i, ln in enumerate(lines) if ln.startswith("git clone"))
    first_make = next(i for i, ln in enumerate(lines) if ln.startswith("make "))
    install = next(i for i, ln in enumerate(lines) if "apt-get install -y git make" in ln)
    assert install < first_clone < first_make
    assert "apt-get update" in lines[install]


def test_plain_gym_backup_commands_come_with_how_to_get_it_on_path() -> None:
    assert any(ln.startswith("gym-backup ") for ln in shell_lines())
    assert ". .venv/bin/activate" in README
    assert "pipx install ." in README


def test_it_says_what_it_protects_against_and_what_not() -> None:
    section = README.split("## What it protects against, and what not\n", 1)[1].split("\n## ")[0]
    words = " ".join(section.replace("**", "").split())
    assert "nightly logical backups" in words
    assert "The recovery point is up to one schedule interval old" in words
    assert "There is no point-in-time recovery" in words
