"""Rendering: settings to ``{relative path: text}`` (pure), and writing that to a folder."""

from __future__ import annotations

import enum
from pathlib import Path

from generator.config import Settings


class Status(enum.Enum):
    """What writing one file did (or would do)."""

    CREATED = "created"
    IDENTICAL = "identical"
    OVERWRITTEN = "overwritten"


def render(settings: Settings) -> dict[str, str]:
    """Render every file of the service; no secret value is ever part of the output."""
    raise NotImplementedError


def write(
    files: dict[str, str], out_dir: Path, *, check: bool = False, dry_run: bool = False
) -> list[tuple[str, Status]]:
    """Write ``files`` under ``out_dir`` (scripts get the exec bit); report each file's status."""
    raise NotImplementedError
